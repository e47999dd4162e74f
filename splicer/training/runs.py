"""Run folders: ``runs/<spec name>/<stage>-<timestamp>`` (or a folder given with ``--out``).

A run folder is the unit users pass around (``--teacher RUN``, ``splicer eval RUN``,
``--resume``); every file in it has a fixed name so that tools find it without options.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from splicer.errors import SplicerError

RUNS_ROOT = Path("runs")


@dataclass(frozen=True)
class RunDir:
    """The files of one training run."""

    path: Path

    @property
    def spec(self) -> Path:
        return self.path / "spec.yaml"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def last(self) -> Path:
        return self.path / "last.pt"

    @property
    def best(self) -> Path:
        return self.path / "best.pt"

    @property
    def curves(self) -> Path:
        return self.path / "curves.png"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def similarity(self) -> Path:
        """A distilled student's KL and CKA to its teacher, with the checkpoints they were measured on."""
        return self.path / "similarity.json"

    @property
    def mlflow(self) -> Path:
        """The MLflow run this run logs to (``train.loggers: [mlflow]``), which a resume continues."""
        return self.path / "mlflow.json"

    def phase(self, name: str) -> RunDir:
        """The sub-run of a method's phase that trains before the main run (``phases/<name>``)."""
        return RunDir(self.path / "phases" / name)

    def checkpoints(self) -> list[Path]:
        """Every last.pt of this run: its own and its phases', oldest first."""
        found = [self.last, *(self.path / "phases").glob("*/last.pt")]
        return sorted((p for p in found if p.is_file()), key=lambda p: p.stat().st_mtime)

    def phases_wall_seconds(self) -> float:
        """Wall seconds of this run's finished phases: part of what the method costs."""
        summaries = (self.path / "phases").glob("*/summary.json")
        return sum(json.loads(path.read_text())["wall_seconds"] for path in summaries)

    @property
    def soft_labels(self) -> Path:
        """The teacher's logits computed once on stored views (``distill.soft_labels``), with its manifest."""
        return self.path / "soft_labels"

    def saved(self) -> list[Path]:
        """What a resume continues from, oldest first: the checkpoints and a soft-label store's manifest."""
        manifest = self.soft_labels / "manifest.json"
        found = [*self.checkpoints(), *([manifest] if manifest.is_file() else [])]
        return sorted(found, key=lambda p: p.stat().st_mtime)

    @property
    def started(self) -> bool:
        """Whether this run has written anything a resume continues: a checkpoint (of a phase or the main
        run) or soft labels being computed."""
        return bool(self.saved())


def open_run(spec_name: str, stage: str, out: Path | None, resume: bool) -> RunDir:
    """The folder a run writes to: ``out``, the latest ``<stage>-*`` run when resuming, or a new one.

    Refuses to start over a run that already has a checkpoint (pass ``--resume``) and to
    resume one that has none, so that no training is lost or silently restarted.
    """
    if out is not None:
        run = RunDir(Path(out))
        check_folder_holds(run.path, "run", f"a {stage} run")
    elif resume:
        run = _latest(spec_name, stage)
    else:
        run = RunDir(fresh_folder(RUNS_ROOT / spec_name, stage))
    if resume and not run.started:
        raise SplicerError(f"--resume: {run.path} has no last.pt to resume from; drop --resume to start a new run")
    if not resume and run.started:
        held = "last.pt" if run.checkpoints() else "soft labels being computed"
        raise SplicerError(
            f"{run.path} already holds a run ({held}); pass --resume to continue it, or choose another --out"
        )
    return run


RUN_FILES = ("last.pt", "summary.json", "metrics.jsonl", "spec.yaml", "phases", "anchors", "soft_labels", "error.txt")
"""What a training run folder holds (``error.txt``: a failed run of an experiment, retried by ``--resume``)."""


def folder_contents(path: Path) -> tuple[str, str] | None:
    """What a folder holds, as (kind, description): a training run, an experiment, a sweep, a
    build, other files; None when it is missing or empty. Commands look before they write."""
    if not path.is_dir() or not any(path.iterdir()):
        return None
    if (path / "sweep.json").is_file():
        return "sweep", "a sweep (sweep.json)"
    if any((path / name).exists() for name in RUN_FILES):
        shown = ", ".join(n for n in RUN_FILES if (path / n).exists())
        return "run", f"a {_run_kind(path)} run ({shown})"
    if (path / "report.json").is_file() or any(p.is_dir() for p in path.glob("seed[0-9]*")):
        return "experiment", "an experiment of `splicer run` (seed folders, report.json)"
    if (path / "spec.resolved.yaml").is_file():
        return "build", f"the build of spec {built_spec_name(path)!r} (spec.resolved.yaml)"
    names = sorted(p.name for p in path.iterdir())
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return "other", f"other files ({shown})"


def check_folder_holds(path: Path, kind: str, wanted: str) -> None:
    """Refuse to write ``wanted`` (e.g. "an sftn run") into a folder that holds something of another kind."""
    found = folder_contents(path)
    if found is None or found[0] == kind:
        return
    raise SplicerError(
        f"--out {path}: this folder holds {found[1]}, not {wanted}; nothing was written. "
        "Choose another --out (a new or empty folder)"
    )


def _run_kind(path: Path) -> str:
    summary = path / "summary.json"
    if summary.is_file():
        try:
            data = json.loads(summary.read_text())
            method = data.get("meta", {}).get("method") if isinstance(data.get("meta"), dict) else None
            return f"{data['kind']}{f' ({method})' if method else ''}"
        except (ValueError, KeyError, TypeError):
            pass
    return "training"


def built_spec_name(path: Path) -> str:
    """The name of the spec whose build ``path`` holds (from its spec.resolved.yaml), or "?"."""
    import yaml

    try:
        return str(yaml.safe_load((path / "spec.resolved.yaml").read_text()).get("name", "?"))
    except (yaml.YAMLError, OSError, AttributeError, UnicodeDecodeError):
        return "?"


def fresh_folder(parent: Path, stage: str) -> Path:
    """``parent/<stage>-<timestamp>``, made unique."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = parent / f"{stage}-{stamp}"
    suffix = 1
    while path.exists():  # two runs started within the same second
        suffix += 1
        path = parent / f"{stage}-{stamp}-{suffix}"
    return path


def _latest(spec_name: str, stage: str) -> RunDir:
    parent = RUNS_ROOT / spec_name
    candidates = [p for p in parent.glob(f"{stage}-*") if RunDir(p).started] if parent.is_dir() else []
    if not candidates:
        raise SplicerError(
            f"--resume: no {stage} run with a last.pt under {parent}; pass --out RUN to name the run to resume"
        )
    return RunDir(max(candidates, key=lambda p: RunDir(p).saved()[-1].stat().st_mtime))
