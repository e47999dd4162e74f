"""``splicer run``: the paper's comparison for one teacher/student pair (tables 1-2, with
table 8's similarity and figure 5's curves).

Per seed it trains the standard teacher, the SFTN teacher and the student alone, then
distils a student from each teacher with each method. The report puts teacher accuracy
(standard vs SFTN), the student without KD, and the student per method from either
teacher side by side with their difference, as mean ± std over the seeds.

Every run gets its own folder under the experiment folder; with ``resume``, finished runs
are reused and interrupted ones resumed, so an experiment can be stopped and continued.
"""

from __future__ import annotations

import json
import statistics
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
from splicer.training.runs import RUNS_ROOT, RunDir, fresh_folder
from splicer.training.stage1 import train_teacher
from splicer.training.stage2 import distill, train_student

TEACHERS = ("standard", "sftn")
METHOD_TITLES = {"kd": "KD", "fitnets": "FitNets", "at": "AT"}


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
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SplicerError(f"unknown distillation method(s) {', '.join(unknown)}; valid: {', '.join(sorted(METHODS))}")
    if not methods or not seeds:
        raise SplicerError("splicer run needs at least one method and one seed")
    root = _experiment_folder(spec.name, out, resume)
    # The eval split does not depend on the seed: one stream scores every pair.
    runtime = Runtime.for_spec(spec, Distributed.from_env())
    data = build_data(
        spec.data, spec.input_size, spec.num_classes, spec.train.batch_size, runtime.device, spec.train.seed
    )
    results = {}
    for seed in seeds:
        seeded = spec.model_copy(update={"train": spec.train.model_copy(update={"seed": seed})})
        results[seed] = _seed_runs(seeded, root / f"seed{seed}", methods, resume, quiet, runtime, data, anchors)
    report = build_report(spec, methods, seeds, results)
    report["folder"] = str(root)
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
    root.mkdir(parents=True, exist_ok=True)
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
    """The summaries of every run of one seed, teachers first; each distilled student with its similarity."""
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
            summary = _finished(path, spec, resume) or distill(
                spec, teacher, method, path, _resumable(path, resume), quiet
            )
            summary["similarity"] = _similarity(runtime, data, teacher / "last.pt", path / "last.pt")
            runs[f"{method}-from-{kind}"] = summary
    return runs


def _finished(folder: Path, spec: Spec, resume: bool) -> dict[str, Any] | None:
    """With ``resume``, the summary of a run that already trained all its epochs."""
    run = RunDir(folder)
    if resume and run.summary.is_file():
        summary = json.loads(run.summary.read_text())
        if summary["epochs"] >= spec.train.epochs:
            return summary
    return None


def _resumable(folder: Path, resume: bool) -> bool:
    """Resume a run that was interrupted (or is to run longer); start the others afresh."""
    return resume and RunDir(folder).last.is_file()


def _similarity(runtime: Runtime, data: DataBundle, teacher: Path, student: Path) -> dict[str, float]:
    nets = [runtime.place(network_from_checkpoint(load_checkpoint(path), path)) for path in (teacher, student)]
    score = similarity(nets[0], nets[1], data.eval, runtime)
    return {"kl": score.kl, "cka": score.cka}


def _stats(values: list[float]) -> dict[str, Any]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "values": values,
    }


def build_report(
    spec: Spec, methods: list[str], seeds: list[int], results: dict[int, dict[str, Any]]
) -> dict[str, Any]:
    """Tables 1-2 (final eval top-1, mean ± std over seeds) and table 8 (KL, CKA) as plain data."""

    def top1(key: str) -> dict[str, Any]:
        return _stats([results[seed][key]["final"]["top1"] for seed in seeds])

    rows = {}
    for method in methods:
        row = {kind: top1(f"{method}-from-{kind}") for kind in TEACHERS}
        row["delta"] = row["sftn"]["mean"] - row["standard"]["mean"]
        rows[method] = row
    best = {kind: max(rows[m][kind]["mean"] for m in methods) for kind in TEACHERS}
    similarity_rows = {
        method: {
            kind: {
                metric: _stats([results[seed][f"{method}-from-{kind}"]["similarity"][metric] for seed in seeds])
                for metric in ("kl", "cka")
            }
            for kind in TEACHERS
        }
        for method in methods
    }
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
        "teacher": {**teacher, "delta": teacher["sftn"]["mean"] - teacher["standard"]["mean"]},
        "student_alone": top1("student"),
        "methods": rows,
        "best": {**best, "delta": best["sftn"] - best["standard"]},
        "similarity": similarity_rows,
        "runs": {str(seed): {key: summary["run"] for key, summary in runs.items()} for seed, runs in results.items()},
    }


def write_report(report: dict[str, Any], root: Path) -> None:
    """report.json (all numbers) and report.md (the paper's layout)."""
    if not Distributed.from_env().is_main:
        return
    (root / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (root / "report.md").write_text(render_markdown(report))


def render_markdown(report: dict[str, Any]) -> str:
    def cell(stats: dict[str, Any]) -> str:
        return f"{stats['mean']:.2f} ± {stats['std']:.2f}" if len(stats["values"]) > 1 else f"{stats['mean']:.2f}"

    def delta(value: float) -> str:
        return f"{value:+.2f}"

    seeds = report["seeds"]
    over = f"mean ± std over seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else f"seed {seeds[0]}"
    lines = [
        f"# {report['spec']}: SFTN vs standard teacher",
        "",
        f"Teacher {report['teacher_model']}, student {report['student_model']}. "
        f"Final {report['eval_split']} top-1 accuracy (%) after {report['epochs']} epochs, "
        f"{over}.",
        "",
        f"| Models (Teacher/Student) | {report['teacher_model']} / {report['student_model']} | | |",
        "|:--|--:|--:|--:|",
        "| Teacher training method | Standard | SFTN | Δ |",
        f"| Teacher accuracy | {cell(report['teacher']['standard'])} | {cell(report['teacher']['sftn'])} "
        f"| {delta(report['teacher']['delta'])} |",
        f"| Student accuracy w/o KD | {cell(report['student_alone'])} | | |",
    ]
    for method, row in report["methods"].items():
        lines.append(
            f"| {METHOD_TITLES.get(method, method)} | {cell(row['standard'])} | {cell(row['sftn'])} "
            f"| {delta(row['delta'])} |"
        )
    best = report["best"]
    lines += [
        f"| Best | {best['standard']:.2f} | {best['sftn']:.2f} | {delta(best['delta'])} |",
        "",
        f"## Similarity between teacher and student (table 8), {report['eval_split']} split",
        "",
        "Lower KL divergence and higher CKA mean a student closer to its teacher.",
        "",
        "| Method | KL Standard | KL SFTN | CKA Standard | CKA SFTN |",
        "|:--|--:|--:|--:|--:|",
    ]
    for method, row in report["similarity"].items():
        lines.append(
            f"| {METHOD_TITLES.get(method, method)} | {cell(row['standard']['kl'])} | {cell(row['sftn']['kl'])} "
            f"| {cell(row['standard']['cka'])} | {cell(row['sftn']['cka'])} |"
        )
    lines += ["", "## Runs", ""]
    for seed, runs in report["runs"].items():
        lines.append(f"- seed {seed}: " + ", ".join(f"{key} `{path}`" for key, path in runs.items()))
    return "\n".join(lines) + "\n"


def _plot(runs: dict[str, Any], methods: list[str], path: Path, title: str) -> None:
    if not Distributed.from_env().is_main:
        return
    from splicer.training.plots import plot_comparison

    curves = {
        METHOD_TITLES.get(m, m): {
            kind: read_metrics(RunDir(Path(runs[f"{m}-from-{kind}"]["run"])).metrics) for kind in TEACHERS
        }
        for m in methods
    }
    plot_comparison(curves, path, title)
