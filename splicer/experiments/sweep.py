"""``splicer run --sweep KEY=V1,V2,...``: the paper's sensitivity tables (5: tau, 6: lambda_KL)
for any spec field, on any pair.

Each cell of the grid (one value per swept key) trains its own SFTN teacher and distils a
student from it with each method. The reference, the standard teacher and the students
distilled from it, does not depend on keys that only shape the SFTN (``loss``,
``transforms``, ``branch_student``), so for those it is trained once; a key that would
change it (``train.lr``, ``distill.kd_tau``, ...) gets a reference per value.

The sweep folder keeps every run under a name made of its assignments, and a finished run
is reused: rerunning a sweep only writes its report, extending it (more values) trains only
the new cells, and an interrupted run is resumed from its last checkpoint. ``sweep.json``
records the spec the sweep was started with; a different spec needs another folder.
"""

from __future__ import annotations

import itertools
import json
import statistics
from pathlib import Path
from typing import Any

from splicer.errors import SplicerError
from splicer.spec import Spec
from splicer.training.distributed import Distributed
from splicer.training.engine import Runtime
from splicer.training.overrides import apply_overrides
from splicer.training.runs import RUNS_ROOT, RunDir
from splicer.training.stage1 import train_teacher
from splicer.training.stage2 import distill

SFTN_ONLY = ("loss.", "transforms.", "branch_student.")
"""Keys under these sections change the SFTN but not the standard teacher or its students."""

Assignment = dict[str, Any]


def parse_sweeps(items: list[str]) -> list[tuple[str, list[Any]]]:
    """``["loss.tau=1,5,10"]`` -> ``[("loss.tau", [1, 5, 10])]``; values are YAML (commas inside [] are kept)."""
    import yaml

    sweeps = []
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or not text.strip():
            raise SplicerError(f"--sweep {item!r}: expected KEY.PATH=V1,V2,..., e.g. --sweep loss.tau=1,5,10")
        if key in (k for k, _ in sweeps):
            raise SplicerError(f"--sweep {item!r}: {key} is swept twice; give all its values in one --sweep")
        try:
            values = [yaml.safe_load(part) for part in _split_values(text)]
        except yaml.YAMLError:
            raise SplicerError(f"--sweep {item!r}: a value is not valid YAML") from None
        sweeps.append((key, values))
    return sweeps


def _split_values(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char in "[{"
        depth -= char in "]}"
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    parts.append(current.strip())
    return [p for p in parts if p]


def grid(sweeps: list[tuple[str, list[Any]]]) -> list[Assignment]:
    """Every combination of one value per key, in the order given."""
    keys = [key for key, _ in sweeps]
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(values for _, values in sweeps))]


def cell_name(assignment: Assignment) -> str:
    """A folder name for an assignment, e.g. ``loss.tau=5`` (``reference`` when empty)."""
    if not assignment:
        return "reference"
    text = ",".join(f"{key}={json.dumps(value, separators=(',', ':'))}" for key, value in assignment.items())
    return "".join(c if c.isalnum() or c in "._=,-+[]" else "_" for c in text)


def cell_spec(spec: Spec, assignment: Assignment) -> Spec:
    """``spec`` with the assignment applied and validated (a bad key gets the spec's own message)."""
    return apply_overrides(spec, None, [f"{key}={json.dumps(value)}" for key, value in assignment.items()])


def check_sweep(
    spec: Spec, sweeps: list[tuple[str, list[Any]]], methods: list[str], seeds: list[int], out: Path | None
) -> tuple[list[Assignment], list[str], Path]:
    """Everything a sweep will use, checked before anything trains or is written: every key and value
    (applied to the spec and validated), the methods and their options in every cell, the folder.
    Returns the cells, the methods (``all`` expanded) and the sweep folder."""
    from splicer.experiments.experiment import check_methods

    if not sweeps or not methods or not seeds:
        raise SplicerError("a sweep needs at least one --sweep, one method and one seed")
    methods = check_methods(spec, methods)
    cells = grid(sweeps)
    for assignment in cells:
        try:
            check_methods(cell_spec(spec, assignment), methods)
        except SplicerError as exc:
            values = ", ".join(f"{key}={json.dumps(value)}" for key, value in assignment.items())
            raise SplicerError(f"--sweep {values}: {exc}") from None
    root = Path(out) if out is not None else RUNS_ROOT / spec.name / "sweep"
    _check_folder(root, spec)
    return cells, methods, root


def run_sweep(
    spec: Spec,
    sweeps: list[tuple[str, list[Any]]],
    methods: list[str],
    seeds: list[int],
    out: Path | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Train (or reuse) every cell and its reference; write report.md and report.json; returns the report."""
    cells, methods, root = check_sweep(spec, sweeps, methods, seeds, out)
    dist = Distributed.from_env()
    Runtime.for_spec(spec, dist)  # under torchrun: join the process group before the ranks compare notes
    _claim(root, spec, dist)
    results: dict[str, Any] = {}
    for seed in seeds:
        seeded = spec.model_copy(update={"train": spec.train.model_copy(update={"seed": seed})})
        results[str(seed)] = {
            cell_name(a): _cell(seeded, a, methods, root / f"seed{seed}", quiet) for a in cells
        }
    report = build_report(spec, sweeps, cells, methods, seeds, results)
    report["folder"] = str(root)
    if dist.is_main:
        (root / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        (root / "report.md").write_text(render_markdown(report))
    return report


def _claim(root: Path, spec: Spec, dist: Distributed) -> None:
    """Record the sweep's base spec, or check that the folder's sweep was started with this one."""
    marker = root / "sweep.json"
    _check_folder(root, spec)
    if marker.is_file():
        return
    dist.barrier()  # every rank has looked at the folder before rank 0 fills it
    if dist.is_main:
        root.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"spec": spec.model_dump(mode="json")}, indent=2) + "\n")


def _check_folder(root: Path, spec: Spec) -> None:
    """The sweep folder is new, empty, or holds a sweep of this very spec (whose finished runs are reused)."""
    from splicer.training.runs import folder_contents

    marker = root / "sweep.json"
    if marker.is_file():
        if json.loads(marker.read_text())["spec"] != spec.model_dump(mode="json"):
            raise SplicerError(
                f"{root} holds a sweep of another spec (see {marker}); its finished runs cannot be reused. "
                "Choose another --out, or run with the same spec and flags"
            )
        return
    found = folder_contents(root)
    if found is not None:
        raise SplicerError(f"--out {root}: this folder holds {found[1]}, not a sweep; nothing was written. Choose another --out")


def _cell(spec: Spec, assignment: Assignment, methods: list[str], folder: Path, quiet: bool) -> dict[str, Any]:
    """The SFTN of one cell and its students, and the reference they are compared with."""
    reference = {key: value for key, value in assignment.items() if not key.startswith(SFTN_ONLY)}
    ref_spec, ref_folder = cell_spec(spec, reference), folder / cell_name(reference)
    standard = _reuse_or(ref_folder / "standard", ref_spec, lambda p, r: train_teacher(ref_spec, True, p, r, quiet))
    runs: dict[str, Any] = {"reference": cell_name(reference), "standard": standard}
    the_spec, cell_folder = cell_spec(spec, assignment), folder / cell_name(assignment)
    runs["sftn"] = _reuse_or(cell_folder / "sftn", the_spec, lambda p, r: train_teacher(the_spec, False, p, r, quiet))
    for method in methods:
        runs[f"{method}-from-standard"] = _reuse_or(
            ref_folder / f"{method}-from-standard",
            ref_spec,
            lambda p, r, m=method: distill(ref_spec, ref_folder / "standard", m, p, r, quiet),
        )
        runs[f"{method}-from-sftn"] = _reuse_or(
            cell_folder / f"{method}-from-sftn",
            the_spec,
            lambda p, r, m=method: distill(the_spec, cell_folder / "sftn", m, p, r, quiet),
        )
    return runs


def _reuse_or(path: Path, spec: Spec, train: Any) -> dict[str, Any]:
    """A finished run's summary; otherwise train it (resuming an interrupted one)."""
    run = RunDir(path)
    if run.summary.is_file():
        summary = json.loads(run.summary.read_text())
        if summary["epochs"] >= spec.train.epochs:
            return summary
    return train(path, run.last.is_file())


def _mean(values: list[float]) -> dict[str, Any]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "values": values,
    }


def build_report(
    spec: Spec,
    sweeps: list[tuple[str, list[Any]]],
    cells: list[Assignment],
    methods: list[str],
    seeds: list[int],
    results: dict[str, Any],
) -> dict[str, Any]:
    """Tables 5/6 as data: per cell the SFTN's and the students' final top-1; the references below."""

    def top1(name: str, key: str) -> dict[str, Any]:
        return _mean([results[str(seed)][name][key]["final"]["top1"] for seed in seeds])

    rows, references = [], {}
    for assignment in cells:
        name = cell_name(assignment)
        rows.append(
            {
                "cell": name,
                "assignment": assignment,
                "sftn": top1(name, "sftn"),
                "students": {m: top1(name, f"{m}-from-sftn") for m in methods},
                "reference": results[str(seeds[0])][name]["reference"],
            }
        )
        ref = results[str(seeds[0])][name]["reference"]
        if ref not in references:
            references[ref] = {
                "standard": top1(name, "standard"),
                "students": {m: top1(name, f"{m}-from-standard") for m in methods},
            }
    first = results[str(seeds[0])][cell_name(cells[0])]["sftn"]
    return {
        "spec": spec.name,
        "teacher_model": spec.teacher.model,
        "student_model": spec.student.model,
        "branch_student_model": spec.branch_network.model,
        "sweeps": [{"key": key, "values": values} for key, values in sweeps],
        "methods": methods,
        "seeds": seeds,
        "epochs": spec.train.epochs,
        "eval_split": first["eval_split"],
        "metric": "final top-1 accuracy (%) on the eval split, mean and std over seeds",
        "cells": rows,
        "references": references,
        "runs": {
            seed: {
                cell: {key: run["run"] for key, run in runs.items() if isinstance(run, dict)}
                for cell, runs in by.items()
            }
            for seed, by in results.items()
        },
    }


def render_markdown(report: dict[str, Any]) -> str:
    """The layout of tables 5 and 6: SFTN and student accuracy per value, the standard teacher below."""

    def cell(stats: dict[str, Any]) -> str:
        return f"{stats['mean']:.2f} ± {stats['std']:.2f}" if len(stats["values"]) > 1 else f"{stats['mean']:.2f}"

    seeds = report["seeds"]
    over = f"mean ± std over seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else f"seed {seeds[0]}"
    keys = ", ".join(s["key"] for s in report["sweeps"])
    methods = report["methods"]
    lines = [
        f"# {report['spec']}: sweep of {keys}",
        "",
        f"Teacher {report['teacher_model']}, student {report['student_model']}"
        + (
            f" (SFTN branches: {report['branch_student_model']})"
            if report["branch_student_model"] != report["student_model"]
            else ""
        )
        + f". Final {report['eval_split']} top-1 accuracy (%) after {report['epochs']} epochs, {over}.",
        "",
        "| Setting | Teacher accuracy | " + " | ".join(f"Student by {m.upper()}" for m in methods) + " |",
        "|:--|--:|" + "--:|" * len(methods),
    ]
    for row in report["cells"]:
        label = ", ".join(f"{k}={v}" for k, v in row["assignment"].items())
        students = " | ".join(cell(row["students"][m]) for m in methods)
        lines.append(f"| SFTN, {label} | {cell(row['sftn'])} | {students} |")
    for name, ref in report["references"].items():
        label = "Standard" if name == "reference" else f"Standard, {name}"
        students = " | ".join(cell(ref["students"][m]) for m in methods)
        lines.append(f"| {label} | {cell(ref['standard'])} | {students} |")
    shared = [s["key"] for s in report["sweeps"] if s["key"].startswith(SFTN_ONLY)]
    if shared:
        lines += ["", f"The standard teacher does not depend on {', '.join(shared)}: it is trained once per reference."]
    lines += ["", "## Runs", ""]
    for seed, by in report["runs"].items():
        for name, runs in by.items():
            lines.append(f"- seed {seed}, {name}: " + ", ".join(f"{k} `{v}`" for k, v in runs.items()))
    return "\n".join(lines) + "\n"
