"""``splicer run``: the paper's comparison for one teacher/student pair (tables 1-2, with
table 8's similarity and figure 5's curves).

Per seed it trains the standard teacher, the SFTN teacher and the student alone, then
distils a student from each teacher with each method. The report puts teacher accuracy
(standard vs SFTN), the student without KD, and the student per method from either
teacher side by side with their difference, as mean ± std over the seeds.

Every run gets its own folder under the experiment folder; with ``resume``, finished runs
are reused and interrupted ones resumed, so an experiment can be stopped and continued.
A distillation run that fails is reported in its method's row (its traceback in the run
folder's ``error.txt``) and the other methods go on; ``all`` stands for every registered method.
"""

from __future__ import annotations

import json
import statistics
import sys
import traceback
from pathlib import Path
from typing import Any

from splicer.data import DataBundle, build_data
from splicer.errors import SplicerError
from splicer.spec import Spec
from splicer.training.checkpoint import load_checkpoint, network_from_checkpoint
from splicer.training.anchors import train_anchored_teacher
from splicer.training.distributed import Distributed
from splicer.training.engine import Runtime
from splicer.training.evaluate import similarity
from splicer.training.logging import read_metrics
from splicer.training.methods import METHODS
from splicer.training.methods.base import method_options
from splicer.training.runs import RUNS_ROOT, RunDir, fresh_folder
from splicer.training.stage1 import train_teacher
from splicer.training.stage2 import distill, train_student

TEACHERS = ("standard", "sftn")
PAPER_ORDER = ("kd", "fitnets", "at", "sp", "vid", "rkd", "pkt", "ab", "ft", "crd", "sskd", "oh", "dkd")
"""The rows of the paper's tables 1 and 2, then DKD; other registered methods follow by name."""
METHOD_TITLES = {"fitnets": "FitNets"}
ERROR_FILE = "error.txt"


def method_title(method: str) -> str:
    """The method's name as the paper's tables print it (KD, FitNets, AT, SP, ...)."""
    return METHOD_TITLES.get(method, method.upper())


def expand_methods(methods: list[str]) -> list[str]:
    """``methods`` with ``all`` replaced by every registered method (table order), without repeats."""
    registered = [m for m in PAPER_ORDER if m in METHODS] + sorted(set(METHODS) - set(PAPER_ORDER))
    expanded = [name for method in methods for name in (registered if method == "all" else [method])]
    return list(dict.fromkeys(expanded))


def check_method_names(names: list[str], where: str) -> None:
    """Refuse a name that is neither a distillation method, a baseline nor ``all``, before anything trains;
    ``where`` is what the user wrote it in (``--methods``, ``distill.methods``)."""
    from splicer.errors import did_you_mean
    from splicer.training.online import BASELINES

    valid = ["all", *sorted(METHODS), *BASELINES]
    for name in names:
        if name not in valid:
            raise SplicerError(
                f"{where}: unknown method {name!r}{did_you_mean(name, valid) or '.'} Valid: {', '.join(valid)} "
                "(distillation methods, then the baselines)"
            )
    if not names:
        raise SplicerError(f"{where}: no method given; e.g. kd,at or all")


def run_experiment(
    spec: Spec,
    methods: list[str],
    seeds: list[int],
    out: Path | None = None,
    resume: bool = False,
    quiet: bool = False,
    anchors: int = 0,
) -> dict[str, Any]:
    """Train everything the comparison needs and write report.md, report.json and curves.png; returns the report.

    With ``anchors``, the standard teacher also saves that many anchor checkpoints (for RCO).
    """
    methods = expand_methods(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        check_method_names(unknown, "methods")  # a misspelt name: its message with suggestions
        raise SplicerError(f"run_experiment: {', '.join(unknown)} are baselines; train them with train_baseline")
    if not methods or not seeds:
        raise SplicerError("splicer run needs at least one method and one seed")
    for method in methods:  # a typo in distill.options fails now, not after the teachers have trained
        method_options(method, spec.distill)
    dist = Distributed.from_env()
    runtime = Runtime.for_spec(spec, dist)
    root = dist.from_main(_experiment_folder(spec.name, out, resume))
    if dist.is_main:
        root.mkdir(parents=True, exist_ok=True)
    # The eval split does not depend on the seed: one stream scores every pair.
    data = build_data(
        spec.data, spec.input_size, spec.num_classes, spec.train.batch_size, runtime.device, spec.train.seed
    )
    results = {}
    for seed in seeds:
        seeded = spec.model_copy(update={"train": spec.train.model_copy(update={"seed": seed})})
        results[seed] = _seed_runs(seeded, root / f"seed{seed}", methods, resume, quiet, runtime, data, anchors)
    report = build_report(spec, methods, seeds, results)
    report["folder"] = str(root)
    if not dist.is_main:
        return report
    write_report(report, root)
    _plot(
        results[seeds[0]],
        methods,
        root / "curves.png",
        f"{spec.name}: students from the standard vs the SFTN teacher (seed {seeds[0]})",
    )
    return report


def _experiment_folder(name: str, out: Path | None, resume: bool) -> Path:
    if out is not None:
        root = Path(out)
    elif resume:
        found = sorted((RUNS_ROOT / name).glob("experiment-*"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise SplicerError(f"--resume: no experiment under {RUNS_ROOT / name}; pass --out to name one")
        root = found[-1]
    else:
        root = fresh_folder(RUNS_ROOT / name, "experiment")
    if not resume and root.exists() and any(root.iterdir()):
        raise SplicerError(f"{root} is not empty; pass --resume to continue that experiment, or choose another --out")
    return root


def _seed_runs(
    spec: Spec,
    folder: Path,
    methods: list[str],
    resume: bool,
    quiet: bool,
    runtime: Runtime,
    data: DataBundle,
    anchors: int = 0,
) -> dict[str, Any]:
    """The summaries of every run of one seed, teachers first; each distilled student with its similarity.

    A distillation that fails gives ``{"run": folder, "error": message}`` instead of a summary.
    """
    runs: dict[str, Any] = {}
    for kind in TEACHERS:
        path = folder / kind
        if kind == "standard" and anchors:
            runs[kind] = _finished(path, spec, resume) or train_anchored_teacher(
                spec, path, anchors, _resumable(path, resume), quiet
            )
            continue
        runs[kind] = _finished(path, spec, resume) or train_teacher(
            spec, kind == "standard", path, _resumable(path, resume), quiet
        )
    path = folder / "student"
    runs["student"] = _finished(path, spec, resume) or train_student(spec, path, _resumable(path, resume), quiet)
    for method in methods:
        for kind in TEACHERS:
            teacher, path = folder / kind, folder / f"{method}-from-{kind}"
            try:
                summary = _finished(path, spec, resume) or distill(
                    spec, teacher, method, path, _resumable(path, resume), quiet
                )
                summary["similarity"] = _similarity(runtime, data, teacher / "last.pt", path / "last.pt")
                (path / ERROR_FILE).unlink(missing_ok=True)  # an earlier attempt's, now resolved
            except Exception as exc:  # noqa: BLE001  one method's failure must not stop the others
                summary = _record_failure(path, method, kind, exc)
            runs[f"{method}-from-{kind}"] = summary
    return runs


def _record_failure(path: Path, method: str, kind: str, exc: Exception) -> dict[str, Any]:
    """Keep the traceback in the run folder and say so; the report shows the one-line message."""
    message = str(exc) if isinstance(exc, SplicerError) else f"{type(exc).__name__}: {exc}"
    path.mkdir(parents=True, exist_ok=True)
    (path / ERROR_FILE).write_text(traceback.format_exc())
    print(
        f"splicer run: {method} from the {kind} teacher failed: {message} (traceback in {path / ERROR_FILE}); "
        "going on with the other methods",
        file=sys.stderr,
        flush=True,
    )
    return {"run": str(path), "error": message}


def _finished(folder: Path, spec: Spec, resume: bool) -> dict[str, Any] | None:
    """With ``resume``, the summary of a run that already trained all its epochs, naming the folder it
    is in now (an experiment folder may have been moved or copied since it trained)."""
    run = RunDir(folder)
    if resume and run.summary.is_file():
        summary = json.loads(run.summary.read_text())
        if summary["epochs"] >= spec.train.epochs:
            return {**summary, "run": str(folder)}
    return None


def _resumable(folder: Path, resume: bool) -> bool:
    """Resume a run that was interrupted (in a method's phase too) or is to run longer; start the others afresh."""
    return resume and RunDir(folder).started


def _similarity(runtime: Runtime, data: DataBundle, teacher: Path, student: Path) -> dict[str, float]:
    """Table 8's KL and CKA, stored in the student's run and reused while neither checkpoint nor the
    eval split changes: rewriting a many-method table from finished runs then evaluates nothing."""
    key = {
        "teacher": str(teacher.resolve()),
        "checkpoints": [_fingerprint(teacher), _fingerprint(student)],
        "eval": data.eval_name,
    }
    stored = RunDir(student.parent).similarity
    if stored.is_file() and (cached := json.loads(stored.read_text())).get("key") == key:
        return cached["score"]
    nets = [runtime.place(network_from_checkpoint(load_checkpoint(path), path)) for path in (teacher, student)]
    score = similarity(nets[0], nets[1], data.eval, runtime)
    result = {"kl": score.kl, "cka": score.cka}
    if Distributed.from_env().is_main:  # under torchrun every rank measures it, rank 0 stores it
        stored.write_text(json.dumps({"key": key, "score": result}, indent=2) + "\n")
    return result


def _fingerprint(path: Path) -> list[int]:
    """Size and modification time: a retrained or resumed checkpoint has new ones."""
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def _stats(values: list[float]) -> dict[str, Any]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "values": values,
    }


def paired_delta(standard: dict[str, Any], sftn: dict[str, Any]) -> dict[str, Any]:
    """SFTN minus standard seed by seed: its std is the seed spread a difference must beat."""
    return _stats([b - a for a, b in zip(standard["values"], sftn["values"], strict=True)])


def build_report(
    spec: Spec, methods: list[str], seeds: list[int], results: dict[int, dict[str, Any]]
) -> dict[str, Any]:
    """Tables 1-2 (final eval top-1, mean ± std over seeds) and table 8 (KL, CKA) as plain data.

    A method whose run failed for some seed and teacher has no score for that teacher (None),
    its messages under ``errors``; the Best row and the mean difference use the methods that
    finished with both teachers. Each difference also has its paired form (``delta_seeds``, see
    :func:`paired_delta`). Time per method: mean wall seconds of its runs, their phases
    (AB's, FT's, SSKD's) included, and mean step seconds of the main runs.
    """

    def top1(key: str) -> dict[str, Any]:
        return _stats([results[seed][key]["final"]["top1"] for seed in seeds])

    def finished(key: str) -> bool:
        return all("error" not in results[seed][key] for seed in seeds)

    rows, similarity_rows = {}, {}
    for method in methods:
        keys = {kind: f"{method}-from-{kind}" for kind in TEACHERS}
        row: dict[str, Any] = {kind: top1(key) if finished(key) else None for kind, key in keys.items()}
        both = row["standard"] is not None and row["sftn"] is not None
        row["delta"] = row["sftn"]["mean"] - row["standard"]["mean"] if both else None
        row["delta_seeds"] = paired_delta(row["standard"], row["sftn"]) if both else None
        done = [results[seed][key] for key in keys.values() for seed in seeds if "error" not in results[seed][key]]
        row["wall_seconds"] = (
            statistics.fmean(s["wall_seconds"] + RunDir(Path(s["run"])).phases_wall_seconds() for s in done)
            if done
            else None
        )
        row["step_seconds"] = {
            kind: statistics.fmean(results[seed][key]["step_seconds_median"] for seed in seeds)
            if finished(key)
            else None
            for kind, key in keys.items()
        }
        row["errors"] = [
            f"seed {seed}, {kind} teacher: {results[seed][key]['error']}"
            for seed in seeds
            for kind, key in keys.items()
            if "error" in results[seed][key]
        ]
        rows[method] = row
        similarity_rows[method] = {
            kind: {
                metric: _stats([results[seed][key]["similarity"][metric] for seed in seeds]) for metric in ("kl", "cka")
            }
            if finished(key)
            else None
            for kind, key in keys.items()
        }
    complete = [m for m in methods if rows[m]["delta"] is not None]
    best = {kind: max(rows[m][kind]["mean"] for m in complete) if complete else None for kind in TEACHERS}
    first = results[seeds[0]]["sftn"]
    teacher = {kind: top1(kind) for kind in TEACHERS}
    return {
        "spec": spec.name,
        "teacher_model": spec.teacher.model,
        "student_model": spec.student.model,
        "seeds": seeds,
        "epochs": spec.train.epochs,
        "eval_split": first["eval_split"],
        "metric": "final top-1 accuracy (%) on the eval split, mean and std over seeds",
        "teacher": {
            **teacher,
            "delta": teacher["sftn"]["mean"] - teacher["standard"]["mean"],
            "delta_seeds": paired_delta(teacher["standard"], teacher["sftn"]),
        },
        "student_alone": top1("student"),
        "methods": rows,
        "best": {**best, "delta": best["sftn"] - best["standard"] if complete else None},
        "mean_delta": {
            "mean": statistics.fmean(rows[m]["delta"] for m in complete) if complete else None,
            "methods": complete,
        },
        "similarity": similarity_rows,
        "runs": {
            str(seed): {key: summary["run"] for key, summary in runs.items() if "error" not in summary}
            for seed, runs in results.items()
        },
        "failures": {
            str(seed): {key: summary for key, summary in runs.items() if "error" in summary}
            for seed, runs in results.items()
            if any("error" in summary for summary in runs.values())
        },
    }


def write_report(report: dict[str, Any], root: Path) -> None:
    """report.json (all numbers) and report.md (the paper's layout)."""
    if not Distributed.from_env().is_main:
        return
    (root / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (root / "report.md").write_text(render_markdown(report))


def render_markdown(report: dict[str, Any]) -> str:
    def cell(stats: dict[str, Any] | None) -> str:
        if stats is None:
            return "failed"
        return f"{stats['mean']:.2f} ± {stats['std']:.2f}" if len(stats["values"]) > 1 else f"{stats['mean']:.2f}"

    def delta(value: float | None) -> str:
        return "" if value is None else f"{value:+.2f}"

    def paired(row: dict[str, Any]) -> str:
        spread = row["delta_seeds"]
        if spread is None or len(spread["values"]) < 2:
            return delta(row["delta"])
        return f"{spread['mean']:+.2f} ± {spread['std']:.2f}"

    def seconds(value: float | None) -> str:
        if value is None:
            return ""
        return f"{value:.1f} s" if value < 600 else f"{value / 60:.1f} min"

    seeds = report["seeds"]
    rows = report["methods"]
    over = f"mean ± std over seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else f"seed {seeds[0]}"
    failures = any(row["errors"] for row in rows.values())
    note_head, note_rule = (" Failure |", "--|") if failures else ("", "")
    pad = " |" if failures else ""
    lines = [
        f"# {report['spec']}: SFTN vs standard teacher",
        "",
        f"Teacher {report['teacher_model']}, student {report['student_model']}. "
        f"Final {report['eval_split']} top-1 accuracy (%) after {report['epochs']} epochs, "
        f"{over}. Δ: SFTN minus standard"
        + (", mean ± std of the per-seed differences" if len(seeds) > 1 else "")
        + ". Time: mean wall time of one distillation run of the method.",
        "",
        f"| Models (Teacher/Student) | {report['teacher_model']} / {report['student_model']} | | | |{pad}",
        f"|:--|--:|--:|--:|--:|{note_rule}",
        f"| Teacher training method | Standard | SFTN | Δ | Time |{note_head}",
        f"| Teacher accuracy | {cell(report['teacher']['standard'])} | {cell(report['teacher']['sftn'])} "
        f"| {paired(report['teacher'])} | |{pad}",
        f"| Student accuracy w/o KD | {cell(report['student_alone'])} | | | |{pad}",
    ]
    for method, row in rows.items():
        note = (f" {_one_line('; '.join(row['errors']))} |" if row["errors"] else " |") if failures else ""
        lines.append(
            f"| {method_title(method)} | {cell(row['standard'])} | {cell(row['sftn'])} "
            f"| {paired(row)} | {seconds(row['wall_seconds'])} |{note}"
        )
    best, mean = report["best"], report["mean_delta"]
    if best["delta"] is not None:
        lines += [
            f"| Best | {best['standard']:.2f} | {best['sftn']:.2f} | {delta(best['delta'])} | |{pad}",
            f"| Mean Δ over {len(mean['methods'])} method{'' if len(mean['methods']) == 1 else 's'} "
            f"| | | {delta(mean['mean'])} | |{pad}",
        ]
    lines += [
        "",
        f"## Similarity between teacher and student (table 8), {report['eval_split']} split",
        "",
        "Lower KL divergence and higher CKA mean a student closer to its teacher.",
        "",
        "| Method | KL Standard | KL SFTN | CKA Standard | CKA SFTN |",
        "|:--|--:|--:|--:|--:|",
    ]
    for method, row in report["similarity"].items():
        kl = [cell(row[kind]["kl"] if row[kind] else None) for kind in TEACHERS]
        cka = [cell(row[kind]["cka"] if row[kind] else None) for kind in TEACHERS]
        lines.append(f"| {method_title(method)} | {' | '.join(kl)} | {' | '.join(cka)} |")
    lines += ["", "## Runs", ""]
    for seed, runs in report["runs"].items():
        lines.append(f"- seed {seed}: " + ", ".join(f"{key} `{path}`" for key, path in runs.items()))
    for seed, failed in report.get("failures", {}).items():
        lines.append(
            f"- seed {seed}, failed: "
            + ", ".join(f"{key} `{entry['run']}/{ERROR_FILE}`" for key, entry in failed.items())
        )
    return "\n".join(lines) + "\n"


def _one_line(text: str, limit: int = 300) -> str:
    """Text for one markdown table cell: no line breaks or bare '|', at most ``limit`` characters."""
    flat = " ".join(text.split()).replace("|", "\\|")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _plot(runs: dict[str, Any], methods: list[str], path: Path, title: str) -> None:
    if not Distributed.from_env().is_main:
        return
    from splicer.training.plots import plot_comparison

    curves = {
        method_title(m): {
            kind: read_metrics(RunDir(Path(runs[f"{m}-from-{kind}"]["run"])).metrics) for kind in TEACHERS
        }
        for m in methods
        if all("error" not in runs[f"{m}-from-{kind}"] for kind in TEACHERS)
    }
    curves = {m: c for m, c in curves.items() if all(r and "kd" in r[0]["terms"] for r in c.values())}
    plot_comparison(curves, path, title)
