"""``splicer run``: the paper's comparison for one teacher/student pair (tables 1-2, with
table 8's similarity and figure 5's curves).

Per seed it trains the standard teacher, the SFTN teacher and the student alone, then
distils a student from each teacher with each method. The report puts teacher accuracy
(standard vs SFTN), the student without KD, and the student per method from either
teacher side by side with their difference, as mean ± std over the seeds.

Every run gets its own folder under the experiment folder; with ``resume``, finished runs
are reused and interrupted ones resumed, so an experiment can be stopped and continued.
A distillation run that fails is reported in its method's row (its traceback in the run
folder's ``error.txt``) and the other methods go on; ``all`` stands for every registered method
that can read the pair's block ends: one that cannot (OH and AB where a block end has no final
ReLU) is skipped before any training and the report says why. Named explicitly, such a method
is an error before any training. The report also says how each block end reaches the methods
(its layout, as a map and as a global vector) and each method's rule for features of different sizes.
"""

from __future__ import annotations

import json
import statistics
import sys
import traceback
from pathlib import Path
from typing import Any

from splicer.data import DataBundle, build_data
from splicer.errors import SplicerError, UnsupportedPairError
from splicer.spec import Spec
from splicer.synthesis.layouts import describe_as_map, describe_as_vector
from splicer.training.checkpoint import load_checkpoint, network_from_checkpoint
from splicer.training.anchors import train_anchored_teacher
from splicer.training.distributed import Distributed
from splicer.training.engine import Runtime
from splicer.training.evaluate import similarity
from splicer.training.logging import read_metrics
from splicer.training.methods import METHODS
from splicer.training.methods.base import method_options
from splicer.training.runs import RUNS_ROOT, RunDir, folder_contents, fresh_folder
from splicer.training.soft_labels import check_soft_labels
from splicer.training.stage1 import train_teacher
from splicer.training.stage2 import block_shapes, distill, feature_report, method_for_pair, train_student

TEACHERS = ("standard", "sftn")
FINETUNED = "sftn-finetuned"
"""The SFTN fine-tuned from the standard teacher (``--sftn-from standard``)."""
SFTN_FROM = {"scratch": "sftn", "standard": FINETUNED}
"""``--sftn-from`` values and the teacher each trains."""
TEACHER_TITLES = {"standard": "Standard", "sftn": "SFTN", FINETUNED: "SFTN fine-tuned"}
DELTA_KEYS = {"sftn": "delta", FINETUNED: "delta_finetuned"}
"""Where a report keeps each SFTN's difference to the standard teacher."""
PAPER_ORDER = ("kd", "fitnets", "at", "sp", "vid", "rkd", "pkt", "ab", "ft", "crd", "sskd", "oh", "dkd")
"""The rows of the paper's tables 1 and 2, then DKD; other registered methods follow by name."""
METHOD_TITLES = {"fitnets": "FitNets"}
ERROR_FILE = "error.txt"
SEED_RESULT_FIELDS = (
    "run", "final", "wall_seconds", "phases_wall_seconds", "step_seconds_median", "img_per_s_median",
    "eval_split", "similarity", "error",
)  # fmt: skip
"""What a report keeps of each run's summary, per seed: enough to rebuild it with more seeds (:func:`merge_reports`)."""


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


def check_methods(spec: Spec, methods: list[str]) -> list[str]:
    """``methods`` expanded (``all``) and checked, names and ``distill.options``, against ``spec``:
    a typo fails before any teacher trains, not after."""
    methods = expand_methods(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        check_method_names(unknown, "methods")  # a misspelt name: its message with suggestions
        raise SplicerError(f"run_experiment: {', '.join(unknown)} are baselines; train them with train_baseline")
    if not methods:
        raise SplicerError("splicer run needs at least one method and one seed")
    for method in methods:
        method_options(method, spec.distill)
        check_soft_labels(spec, method)
    return methods


def run_experiment(
    spec: Spec,
    methods: list[str],
    seeds: list[int],
    out: Path | None = None,
    resume: bool = False,
    quiet: bool = False,
    anchors: int = 0,
    sftn_from: tuple[str, ...] = ("scratch",),
) -> dict[str, Any]:
    """Train everything the comparison needs and write report.md, report.json and curves.png; returns the report.

    With ``anchors``, the standard teacher also saves that many anchor checkpoints (for RCO).
    ``sftn_from``: how the SFTN teachers start (:data:`SFTN_FROM`): ``scratch`` trains the paper's SFTN,
    ``standard`` fine-tunes the standard teacher of the same seed into one (the spec's ``finetune:``
    recipe, by default its defaults); both give the three teacher columns.
    """
    unknown_start = [value for value in sftn_from if value not in SFTN_FROM]
    if unknown_start or not sftn_from:
        raise SplicerError(
            f"--sftn-from {','.join(sftn_from)}: use {', '.join(SFTN_FROM)} or both, e.g. --sftn-from scratch,standard"
        )
    teachers = ["standard", *(SFTN_FROM[value] for value in SFTN_FROM if value in sftn_from)]
    explicit = [m for m in methods if m != "all"]
    methods = check_methods(spec, methods)
    if not seeds:
        raise SplicerError("splicer run needs at least one method and one seed")
    pair = check_pair_support(spec, methods, explicit)
    methods = [m for m in methods if m not in pair["skipped"]]
    dist = Distributed.from_env()
    for method, reason in pair["skipped"].items():
        if not quiet and dist.is_main:
            print(f"splicer run: skipping {method}: {reason}", file=sys.stderr, flush=True)
    runtime = Runtime.for_spec(spec, dist)
    root = dist.from_main(experiment_folder(spec.name, out, resume))
    if dist.is_main:
        root.mkdir(parents=True, exist_ok=True)
    # The eval split does not depend on the seed: one stream scores every pair.
    data = build_data(
        spec.data, spec.input_size, spec.num_classes, spec.train.batch_size, runtime.device, spec.train.seed
    )
    results = {}
    for seed in seeds:
        seeded = spec.model_copy(update={"train": spec.train.model_copy(update={"seed": seed})})
        results[seed] = _seed_runs(
            seeded, root / f"seed{seed}", methods, resume, quiet, runtime, data, anchors, teachers
        )
    report = build_report(spec, methods, seeds, results, teachers)
    report.update(pair)
    report["folder"] = str(root)
    if not dist.is_main:
        return report
    write_report(report, root)
    _plot(
        results[seeds[0]],
        methods,
        teachers,
        root / "curves.png",
        f"{spec.name}: students from the standard vs the SFTN teacher (seed {seeds[0]})",
    )
    return report


def check_pair_support(spec: Spec, methods: list[str], explicit: list[str]) -> dict[str, Any]:
    """Which methods can read this pair's block ends, checked on freshly built networks before any training.

    Returns ``skipped`` (method: reason) for the methods that cannot, ``block_ends`` (each block end of
    teacher and student as a map and as a global vector) and ``features`` (per method that reads features:
    the form it reads and its size rule). A method named in ``explicit`` that cannot is an error.
    """
    import torch

    from splicer.assembly.build import build, build_student

    if not any(METHODS[m].needs_features or METHODS[m].needs_preactivations for m in methods):
        return {"skipped": {}, "block_ends": [], "features": {}}  # logit methods read every pair
    with torch.random.fork_rng(devices=[]):  # building draws initial weights; the runs' streams stay as they were
        teacher, student = build(spec, verify=False).teacher, build_student(spec)
    skipped: dict[str, str] = {}
    features: dict[str, Any] = {}
    for method in methods:
        try:
            loss_method = method_for_pair(spec, method, teacher, student)
        except UnsupportedPairError as exc:
            if method in explicit:
                raise UnsupportedPairError(f"--methods {method}: {exc}; leave it out (--methods all skips it)") from None
            skipped[method] = str(exc)
            continue
        report = feature_report(loss_method, teacher, student, spec)
        if report is not None:
            features[method] = {"reads": report["reads"], "size_rule": report["size_rule"]}
    block_ends = []
    shapes = [block_shapes(network, spec) for network in (teacher, student)]
    for k in range(len(teacher.blocks)):
        entry = {}
        for role, network, shape in (("teacher", teacher, shapes[0][k]), ("student", student, shapes[1][k])):
            entry[f"{role}_map"] = describe_as_map(network.layouts[k], shape)
            entry[f"{role}_vector"] = describe_as_vector(network.layouts[k], shape)
        block_ends.append(entry)
    return {"skipped": skipped, "block_ends": block_ends, "features": features}


def experiment_folder(name: str, out: Path | None, resume: bool) -> Path:
    """The experiment folder to write: ``out``, the latest experiment when resuming, or a new one.

    Refuses a folder that holds anything but an experiment, a non-empty one without ``--resume``
    and, with ``--resume``, a folder that holds no experiment to continue."""
    if out is not None:
        root = Path(out)
        found = folder_contents(root)
        if resume and found is None:
            raise SplicerError(
                f"--resume: {root} holds no experiment to resume ({'it is empty' if root.is_dir() else 'no such folder'}); "
                "drop --resume to start a new one there"
            )
        if found is not None and found[0] != "experiment":
            raise SplicerError(
                f"--out {root}: this folder holds {found[1]}, not an experiment of `splicer run`; nothing was written. "
                "Choose another --out"
            )
    elif resume:
        found = sorted((RUNS_ROOT / name).glob("experiment-*"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise SplicerError(f"--resume: no experiment under {RUNS_ROOT / name}; pass --out to name one")
        root = found[-1]
    else:
        root = fresh_folder(RUNS_ROOT / name, "experiment")
    if not resume and root.exists() and any(root.iterdir()):
        raise SplicerError(
            f"{root} already holds an experiment; pass --resume to continue it, or choose another --out"
        )
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
    teachers: list[str] | tuple[str, ...] = TEACHERS,
) -> dict[str, Any]:
    """The summaries of every run of one seed, teachers first; each distilled student with its similarity.

    A distillation that fails gives ``{"run": folder, "error": message}`` instead of a summary.
    """
    runs: dict[str, Any] = {}
    for kind in teachers:
        path = folder / kind
        if kind == "standard" and anchors:
            runs[kind] = _finished(path, spec, resume) or train_anchored_teacher(
                spec, path, anchors, _resumable(path, resume), quiet
            )
            continue
        stage1 = finetuned_spec(spec, folder / "standard") if kind == FINETUNED else spec
        runs[kind] = _finished(path, stage1, resume) or train_teacher(
            stage1, kind == "standard", path, _resumable(path, resume), quiet
        )
    path = folder / "student"
    runs["student"] = _finished(path, spec, resume) or train_student(spec, path, _resumable(path, resume), quiet)
    for method in methods:
        for kind in teachers:
            teacher, path = folder / kind, folder / f"{method}-from-{kind}"
            try:
                summary = _finished(path, spec, resume) or distill(
                    spec, teacher, method, path, _resumable(path, resume), quiet
                )
                summary["similarity"] = _similarity(runtime, data, teacher / "last.pt", path / "last.pt")
                summary["phases_wall_seconds"] = RunDir(path).phases_wall_seconds()
                (path / ERROR_FILE).unlink(missing_ok=True)  # an earlier attempt's, now resolved
            except Exception as exc:  # noqa: BLE001  one method's failure must not stop the others
                summary = _record_failure(path, method, kind, exc)
            runs[f"{method}-from-{kind}"] = summary
    return runs


def finetuned_spec(spec: Spec, standard: Path) -> Spec:
    """``spec`` for the SFTN fine-tuned from the standard teacher in ``standard``, by ``spec.finetune``
    (its defaults when the spec has none)."""
    from splicer.spec.schema import FinetuneSpec
    from splicer.training.overrides import start_teacher_from

    started = start_teacher_from(spec, str(standard))
    return started.model_copy(update={"finetune": spec.finetune or FinetuneSpec()})


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
        needed = spec.stage1_recipe().epochs if summary["kind"] in TEACHERS else spec.train.epochs
        if summary["epochs"] >= needed:
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


def seed_stats(values: list[float]) -> dict[str, Any]:
    """Mean and sample std of one score over seeds, with the per-seed values (kept for paired differences)."""
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "values": values,
    }


def paired_delta(standard: dict[str, Any], sftn: dict[str, Any]) -> dict[str, Any]:
    """SFTN minus standard seed by seed: its std is the seed spread a difference must beat."""
    return seed_stats([b - a for a, b in zip(standard["values"], sftn["values"], strict=True)])


def build_report(
    spec: Spec,
    methods: list[str],
    seeds: list[int],
    results: dict[int, dict[str, Any]],
    teachers: tuple[str, ...] | list[str] = TEACHERS,
) -> dict[str, Any]:
    """Tables 1-2 (final eval top-1, mean ± std over seeds) and table 8 (KL, CKA) as plain data.

    A method whose run failed for some seed and teacher has no score for that teacher (None),
    its messages under ``errors``; the Best row and the mean difference use the methods that
    finished with every teacher. ``teachers``: the standard one first, then the SFTNs compared with it
    (``sftn`` from scratch, ``sftn-finetuned`` fine-tuned from the standard one). Each difference also
    has its paired form (``delta_seeds``, see
    :func:`paired_delta`). Time per method: mean wall seconds of its runs, their phases
    (AB's, FT's, SSKD's) included, and mean step seconds of the main runs.
    """

    teachers = list(teachers)
    compared = [kind for kind in teachers if kind in DELTA_KEYS]

    def top1(key: str) -> dict[str, Any]:
        return seed_stats([results[seed][key]["final"]["top1"] for seed in seeds])

    def finished(key: str) -> bool:
        return all("error" not in results[seed][key] for seed in seeds)

    def differences(scores: dict[str, Any]) -> dict[str, Any]:
        """Each SFTN's difference to the standard teacher: mean, and seed by seed."""
        out: dict[str, Any] = {}
        for kind in compared:
            both = scores["standard"] is not None and scores[kind] is not None
            out[DELTA_KEYS[kind]] = scores[kind]["mean"] - scores["standard"]["mean"] if both else None
            out[f"{DELTA_KEYS[kind]}_seeds"] = paired_delta(scores["standard"], scores[kind]) if both else None
        return out

    rows, similarity_rows = {}, {}
    for method in methods:
        keys = {kind: f"{method}-from-{kind}" for kind in teachers}
        row: dict[str, Any] = {kind: top1(key) if finished(key) else None for kind, key in keys.items()}
        row.update(differences(row))
        done = [results[seed][key] for key in keys.values() for seed in seeds if "error" not in results[seed][key]]
        row["wall_seconds"] = (
            statistics.fmean(s["wall_seconds"] + s["phases_wall_seconds"] for s in done)
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
                metric: seed_stats([results[seed][key]["similarity"][metric] for seed in seeds]) for metric in ("kl", "cka")
            }
            if finished(key)
            else None
            for kind, key in keys.items()
        }
    complete = {kind: [m for m in methods if rows[m][DELTA_KEYS[kind]] is not None] for kind in compared}
    every = [m for m in methods if all(m in complete[kind] for kind in compared)]  # the Best row compares these
    best: dict[str, Any] = {kind: max(rows[m][kind]["mean"] for m in every) if every else None for kind in teachers}
    best.update({DELTA_KEYS[k]: best[k] - best["standard"] if every else None for k in compared})
    first = results[seeds[0]][teachers[-1]]
    teacher = {kind: top1(kind) for kind in teachers}
    return {
        "spec": spec.name,
        "teacher_model": spec.teacher.model,
        "student_model": spec.student.model,
        "seeds": seeds,
        "epochs": spec.train.epochs,
        "teachers": teachers,
        **({"finetune_epochs": _finetune_epochs(spec)} if FINETUNED in teachers else {}),
        "eval_split": first["eval_split"],
        "metric": "final top-1 accuracy (%) on the eval split, mean and std over seeds",
        "teacher": {**teacher, **differences(teacher)},
        "teacher_seconds": {
            kind: seed_stats([results[seed][kind]["wall_seconds"] for seed in seeds]) for kind in teachers
        },
        "student_alone": top1("student"),
        "methods": rows,
        "best": best,
        **{
            f"mean_{DELTA_KEYS[kind]}": {
                "mean": statistics.fmean(rows[m][DELTA_KEYS[kind]] for m in complete[kind]) if complete[kind] else None,
                "methods": complete[kind],
            }
            for kind in compared
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
        "seed_results": {
            str(seed): {key: {f: run[f] for f in SEED_RESULT_FIELDS if f in run} for key, run in runs.items()}
            for seed, runs in results.items()
        },
    }


def merge_reports(spec: Spec, reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One report over the runs of several reports of the same experiment run apart (seeds, or a seed's
    methods, on other machines or in other sessions), as :func:`build_report` would have made it from all
    their runs at once.

    A seed split by methods repeats its teachers and student alone in each part: those must score the same
    (the same seed trains the same networks on one device), else they are not the same runs. Refuses reports
    of another spec, teachers or number of epochs, a distillation given twice, and a method missing a seed."""
    first = reports[0]
    teachers = first.get("teachers", list(TEACHERS))
    results: dict[int, dict[str, Any]] = {}
    methods: list[str] = []
    for report in reports:
        for key in ("spec", "teachers", "epochs"):
            if report.get(key) != first.get(key):
                raise SplicerError(
                    f"merge_reports: {key} differs between the reports: {first.get(key)!r} and {report.get(key)!r}"
                )
        if "seed_results" not in report:
            raise SplicerError("merge_reports: a report has no seed_results (written before they were kept); rerun it")
        methods += [method for method in report["methods"] if method not in methods]
        for seed, runs in report["seed_results"].items():
            merged = results.setdefault(int(seed), {})
            for key, run in runs.items():
                if key in merged and "-from-" in key:
                    raise SplicerError(f"merge_reports: seed {seed}'s {key} is in two of the reports; give each once")
                if key in merged and merged[key].get("final") != run.get("final"):
                    raise SplicerError(
                        f"merge_reports: seed {seed}'s {key} scores {merged[key].get('final')} in one report and "
                        f"{run.get('final')} in another: not the same run, so the reports do not combine"
                    )
                merged.setdefault(key, run)
    missing = [
        f"seed {seed}: {method}" for seed, runs in sorted(results.items()) for method in methods
        if any(f"{method}-from-{kind}" not in runs for kind in teachers)
    ]  # fmt: skip
    if missing:
        raise SplicerError(f"merge_reports: every method needs every seed; missing {', '.join(missing)}")
    if spec.name != first["spec"] or spec.train.epochs != first["epochs"]:
        raise SplicerError(
            f"merge_reports: the reports are of {first['spec']} ({first['epochs']} epochs), "
            f"the spec is {spec.name} ({spec.train.epochs} epochs)"
        )
    merged_report = build_report(spec, methods, sorted(results), results, teachers)
    merged_report["skipped"] = {k: v for report in reports for k, v in report.get("skipped", {}).items()}
    merged_report["features"] = {k: v for report in reports for k, v in report.get("features", {}).items()}
    merged_report["block_ends"] = next((r["block_ends"] for r in reports if r.get("block_ends")), [])
    return merged_report


def _finetune_epochs(spec: Spec) -> int:
    from splicer.spec.schema import FinetuneSpec

    return (spec.finetune or FinetuneSpec()).recipe(spec.train).epochs


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

    def paired(row: dict[str, Any], key: str) -> str:
        spread = row[f"{key}_seeds"]
        if spread is None or len(spread["values"]) < 2:
            return delta(row[key])
        return f"{spread['mean']:+.2f} ± {spread['std']:.2f}"

    def seconds(value: float | None) -> str:
        if value is None:
            return ""
        return f"{value:.1f} s" if value < 600 else f"{value / 60:.1f} min"

    def columns(row: dict[str, Any], score: Any = cell, difference: Any = paired) -> str:
        """The standard teacher's cell, then each SFTN's with its difference."""
        cells = [score(row["standard"])]
        for kind in compared:
            cells += [score(row[kind]), difference(row, DELTA_KEYS[kind])]
        return " | ".join(cells)

    teachers = report.get("teachers", list(TEACHERS))
    compared = [kind for kind in teachers if kind in DELTA_KEYS]
    titles = [TEACHER_TITLES[kind] for kind in compared]
    seeds = report["seeds"]
    rows = report["methods"]
    over = f"mean ± std over seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else f"seed {seeds[0]}"
    failures = any(row["errors"] for row in rows.values())
    note_head, note_rule = (" Failure |", "--|") if failures else ("", "")
    pad = " |" if failures else ""
    blank = " |" * (2 * len(compared))
    lines = [
        f"# {report['spec']}: {' and '.join(titles)} vs standard teacher",
        "",
        f"Teacher {report['teacher_model']}, student {report['student_model']}. "
        f"Final {report['eval_split']} top-1 accuracy (%) after {report['epochs']} epochs, "
        f"{over}. Δ: {' or '.join(titles)} minus standard"
        + (", mean ± std of the per-seed differences" if len(seeds) > 1 else "")
        + ". Time: mean wall time of one distillation run of the method."
        + (
            f" The fine-tuned SFTN trained {report['finetune_epochs']} epochs from the standard teacher."
            if "finetune_epochs" in report
            else ""
        ),
        "",
        f"| Models (Teacher/Student) | {report['teacher_model']} / {report['student_model']} |{blank} |{pad}",
        f"|:--|--:|{'--:|--:|' * len(compared)}--:|{note_rule}",
        f"| Teacher training method | Standard | {' | '.join(f'{t} | Δ' for t in titles)} | Time |{note_head}",
        f"| Teacher accuracy | {columns(report['teacher'])} | |{pad}",
    ]
    if "teacher_seconds" in report:
        times = {kind: seconds(stats["mean"]) for kind, stats in report["teacher_seconds"].items()}
        cells = [times["standard"], *(cell for kind in compared for cell in (times[kind], ""))]
        lines.append(f"| Teacher training time | {' | '.join(cells)} | |{pad}")
    lines.append(f"| Student accuracy w/o KD | {cell(report['student_alone'])} |{blank} |{pad}")
    for method, row in rows.items():
        note = (f" {_one_line('; '.join(row['errors']))} |" if row["errors"] else " |") if failures else ""
        lines.append(f"| {method_title(method)} | {columns(row)} | {seconds(row['wall_seconds'])} |{note}")
    best = report["best"]
    if best["standard"] is not None:
        lines.append(
            f"| Best | {columns(best, lambda v: f'{v:.2f}', lambda r, key: delta(r[key]))} | |{pad}"
        )
    means = [report[f"mean_{DELTA_KEYS[kind]}"] for kind in compared]
    if any(mean["mean"] is not None for mean in means):
        counted = max(len(mean["methods"]) for mean in means)
        cells = ["", *(cell for mean in means for cell in ("", delta(mean["mean"])))]
        lines.append(f"| Mean Δ over {counted} method{'' if counted == 1 else 's'} | {' | '.join(cells)} | |{pad}")
    kl_titles = " | ".join(f"KL {TEACHER_TITLES[kind]}" for kind in teachers)
    cka_titles = " | ".join(f"CKA {TEACHER_TITLES[kind]}" for kind in teachers)
    lines += [
        "",
        f"## Similarity between teacher and student (table 8), {report['eval_split']} split",
        "",
        "Lower KL divergence and higher CKA mean a student closer to its teacher.",
        "",
        f"| Method | {kl_titles} | {cka_titles} |",
        "|:--|" + "--:|" * (2 * len(teachers)),
    ]
    for method, row in report["similarity"].items():
        kl = [cell(row[kind]["kl"] if row[kind] else None) for kind in teachers]
        cka = [cell(row[kind]["cka"] if row[kind] else None) for kind in teachers]
        lines.append(f"| {method_title(method)} | {' | '.join(kl)} | {' | '.join(cka)} |")
    lines += _feature_lines(report)
    lines += ["", "## Runs", ""]
    for seed, runs in report["runs"].items():
        lines.append(f"- seed {seed}: " + ", ".join(f"{key} `{path}`" for key, path in runs.items()))
    for seed, failed in report.get("failures", {}).items():
        lines.append(
            f"- seed {seed}, failed: "
            + ", ".join(f"{key} `{entry['run']}/{ERROR_FILE}`" for key, entry in failed.items())
        )
    return "\n".join(lines) + "\n"


def _feature_lines(report: dict[str, Any]) -> list[str]:
    """The skipped methods with their reasons, the block ends as the methods read them, and each method's size rule."""
    lines: list[str] = []
    if report.get("skipped"):
        lines += ["", "## Skipped methods", "", "These methods cannot read this pair's block ends and were not run:", ""]
        lines += [f"- {method_title(m)}: {_one_line(reason, 600)}" for m, reason in report["skipped"].items()]
    if report.get("features"):
        lines += [
            "",
            "## How the feature methods read the block ends",
            "",
            "| Block | Teacher as map | Teacher as vector | Student as map | Student as vector |",
            "|:--|:--|:--|:--|:--|",
        ]
        for k, end in enumerate(report.get("block_ends", []), start=1):
            cells = [end[f"{role}_{form}"] for role in ("teacher", "student") for form in ("map", "vector")]
            lines.append(f"| {k} | " + " | ".join(cells) + " |")
        lines.append("")
        lines += [f"- {method_title(m)}: {f['reads']}; {f['size_rule']}" for m, f in report["features"].items()]
    return lines


def _one_line(text: str, limit: int = 300) -> str:
    """Text for one markdown table cell: no line breaks or bare '|', at most ``limit`` characters."""
    flat = " ".join(text.split()).replace("|", "\\|")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _plot(runs: dict[str, Any], methods: list[str], teachers: list[str], path: Path, title: str) -> None:
    if not Distributed.from_env().is_main:
        return
    from splicer.training.plots import plot_comparison

    curves = {
        method_title(m): {
            kind: read_metrics(RunDir(Path(runs[f"{m}-from-{kind}"]["run"])).metrics) for kind in teachers
        }
        for m in methods
        if all("error" not in runs[f"{m}-from-{kind}"] for kind in teachers)
    }
    curves = {m: c for m, c in curves.items() if all(r and "kd" in r[0]["terms"] for r in c.values())}
    plot_comparison(curves, path, title)
