"""Each distillation method's training step time relative to KD's, on one otherwise idle process.

The step-time columns of ``results/methods_cpu.md`` were read from 10-epoch runs while other
runs shared the cores, with the load changing between runs. This measures the step alone: for
each method and teacher, a one-epoch distillation of ``--steps`` steps on synthetic images of the
spec's size (a step's cost does not depend on pixel values), in ``--rounds`` interleaved rounds
with the method order rotated each round, so that a change of load touches every method alike.
Per round each method's mean step is divided by KD's in the same round; the table gives the
median over rounds and the rounds' range. Phases (AB's, FT's, SSKD's) run but are not part of
the step. The teachers' weights do not change the cost, but a phase can diverge from a barely
trained teacher (FT's paraphraser does from one-epoch teachers): ``--teachers`` takes trained
ones, e.g. the methods_cpu runs' (by default both are trained for one epoch here). A run that
fails is reported in the table and the others go on.

    python benchmarks/method_steps.py --teachers runs/proof_cpu/methods_cpu/seed0
    python benchmarks/method_steps.py --methods kd,crd --rounds 1

Writes ``benchmarks/results/method_steps_cpu.md`` / ``.json`` with the exact command; the run
folders under ``runs/<spec>/method_steps`` are scratch and replaced by each invocation.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from proof import REPO, RESULTS, SPECS  # noqa: E402
from provenance import provenance, repo_relative as relative  # noqa: E402

TEACHERS = ("standard", "sftn")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--spec", type=Path, default=SPECS / "proof_cpu.yaml", help="spec (default: benchmarks/specs/proof_cpu.yaml)"
    )
    parser.add_argument("--methods", default="all", help="comma-separated methods, or all (default: all)")
    parser.add_argument("--steps", type=int, default=60, help="training steps per measured epoch (default: 60)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default: 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1, as methods_cpu)")
    parser.add_argument(
        "--teachers", type=Path, help="folder with standard/ and sftn/ runs of this spec (default: train for one epoch)"
    )
    parser.add_argument("--runs", type=Path, default=REPO / "runs", help="parent of the scratch runs (default: runs/)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (default: benchmarks/results/)")
    parser.add_argument("--name", default="method_steps_cpu", help="result files' name")
    args = parser.parse_args(argv)
    if args.steps < 2 or args.rounds < 1:
        parser.error("--steps must be at least 2 and --rounds at least 1")
    return args


def timing_spec(path: Path, steps: int):
    """The spec's networks and batch on synthetic images: one epoch of ``steps`` steps."""
    from splicer.spec import load_spec
    from splicer.training.overrides import apply_overrides

    spec = load_spec(path)
    batch = spec.train.batch_size
    return apply_overrides(
        spec,
        assignments=[
            "data.dataset=synthetic",
            f"data.synthetic_train={steps * batch}",
            f"data.synthetic_test={batch}",
            "train.epochs=1",
            "train.milestones=[]",
            "train.device=cpu",
            "train.compile=false",
        ],
    )


def crd_timing_spec(spec):
    """``spec`` with enough synthetic training images (classes in equal shares) to leave CRD all its
    configured negatives outside any one class, so that it does not lower their count."""
    from splicer.training.methods.base import method_options
    from splicer.training.overrides import apply_overrides

    negatives = method_options("crd", spec.distill).negatives
    images = -(-negatives * spec.num_classes // (spec.num_classes - 1)) + spec.num_classes
    return apply_overrides(spec, assignments=[f"data.synthetic_train={max(images, spec.data.synthetic_train)}"])


def measure(args: argparse.Namespace, spec, methods: list[str], folder: Path) -> dict[str, Any]:
    """Mean step seconds of every (method, teacher) in every round (None where the run failed), each
    round's ratio to KD's, and the failures' messages."""
    from splicer.errors import SplicerError
    from splicer.training.stage1 import train_teacher
    from splicer.training.stage2 import distill

    rounds = args.rounds
    crd_spec = crd_timing_spec(spec)
    shutil.rmtree(folder, ignore_errors=True)
    teachers = {kind: (args.teachers or folder) / kind for kind in TEACHERS}
    if args.teachers is None:
        for kind, out in teachers.items():
            train_teacher(spec, standard=kind == "standard", out=out, quiet=True)
    order = ["kd", *(m for m in methods if m != "kd")]
    seconds: dict[str, dict[str, list[float | None]]] = {m: {kind: [] for kind in TEACHERS} for m in order}
    errors: dict[str, dict[str, str]] = {m: {} for m in order}
    for number in range(rounds):
        shift = number % len(order)
        for method in order[shift:] + order[:shift]:
            for kind, teacher in teachers.items():
                run = folder / f"round{number}" / f"{method}-from-{kind}"
                try:
                    summary = distill(crd_spec if method == "crd" else spec, teacher, method, out=run, quiet=True)
                except SplicerError as exc:
                    seconds[method][kind].append(None)
                    errors[method][kind] = str(exc)
                    print(f"round {number + 1}/{rounds}: {method} from {kind} failed: {exc}", flush=True)
                    continue
                seconds[method][kind].append(summary["step_seconds_median"])
                shown = f"{1000 * summary['step_seconds_median']:.1f} ms"
                print(f"round {number + 1}/{rounds}: {method} from {kind}: {shown}", flush=True)
    return {
        method: {
            kind: {
                "step_seconds": per_round,
                "relative_to_kd": [
                    s / kd if s is not None and kd is not None else None
                    for s, kd in zip(per_round, seconds["kd"][kind], strict=True)
                ],
                "error": errors[method].get(kind),
            }
            for kind, per_round in seconds[method].items()
        }
        for method in methods
    }


def summarise(measured: dict[str, Any]) -> dict[str, Any]:
    """Median step and median ratio to KD over the rounds that finished, with the ratios' range."""

    def over_rounds(entry: dict[str, Any]) -> dict[str, Any]:
        steps = [s for s in entry["step_seconds"] if s is not None]
        ratios = [r for r in entry["relative_to_kd"] if r is not None]
        return {
            "step_ms": 1000 * statistics.median(steps) if steps else None,
            "relative_to_kd": statistics.median(ratios) if ratios else None,
            "range": [min(ratios), max(ratios)] if ratios else None,
            "step_seconds_per_round": entry["step_seconds"],
            "relative_to_kd_per_round": entry["relative_to_kd"],
            "error": entry["error"],
        }

    return {method: {kind: over_rounds(entry) for kind, entry in by_kind.items()} for method, by_kind in measured.items()}


def render(rows: dict[str, Any], spec, args: argparse.Namespace, made: dict[str, str]) -> str:
    """The markdown table; ``made`` is the provenance (date, command, versions, machine)."""
    from splicer.experiments.experiment import method_title

    def cell(entry: dict[str, Any]) -> str:
        if entry["relative_to_kd"] is None:
            return "failed | failed" if entry["step_ms"] is None else f"{entry['step_ms']:.1f} | "
        low, high = entry["range"]
        spread = f" ({low:.2f}-{high:.2f})" if args.rounds > 1 else ""
        return f"{entry['step_ms']:.1f} | {entry['relative_to_kd']:.2f}x{spread}"

    lines = [
        f"# Training step of every distillation method relative to KD's ({spec.name} networks, one process)",
        "",
        f"`{relative(args.spec)}`: {spec.teacher.model} -> {spec.student.model} {spec.student.kwargs or ''}, "
        f"{spec.input_size[1]}x{spec.input_size[2]} synthetic inputs, batch {spec.train.batch_size}; one epoch of "
        f"{args.steps} steps per run (CRD: enough images for all its negatives), {args.rounds} interleaved rounds with "
        "the method order rotated. Step: mean over the epoch (its first step and the teacher's forward included), "
        "median over rounds; "
        "ratio: per round to KD's with the same teacher, median (range) over rounds. Phases are not part of "
        "the step.",
        "",
        *(f"- {key}: {value}" for key, value in made.items()),
        "",
        "| Method | Step (ms), standard | vs KD, standard | Step (ms), SFTN | vs KD, SFTN |",
        "|:--|--:|--:|--:|--:|",
    ]
    for method, by_kind in rows.items():
        lines.append(f"| {method_title(method)} | {cell(by_kind['standard'])} | {cell(by_kind['sftn'])} |")
    failed = [(method, kind, entry["error"]) for method, by_kind in rows.items() for kind, entry in by_kind.items()]
    if any(error for *_, error in failed):
        lines += ["", "Failures (the last message of each):", ""]
        lines += [f"- {method_title(m)} from the {kind} teacher: {error}" for m, kind, error in failed if error]
    teachers = relative(args.teachers) if args.teachers else "trained here for one epoch on the synthetic images"
    lines += ["", f"Teachers: {teachers}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    from splicer.errors import SplicerError
    from splicer.experiments.experiment import expand_methods

    torch.set_num_threads(args.threads)
    load_at_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    methods = expand_methods([m.strip() for m in args.methods.split(",") if m.strip()])
    try:
        spec = timing_spec(args.spec, args.steps)
        rows = summarise(measure(args, spec, methods, args.runs / spec.name / "method_steps"))
    except SplicerError as exc:
        sys.exit(f"method_steps.py: {exc}")
    made = {**provenance(argv, torch.get_num_threads()), "load average at start (1/5/15 min)": load_at_start}
    markdown = render(rows, spec, args, made)
    teachers = relative(args.teachers) if args.teachers else None
    payload = {**made, "spec": relative(args.spec), "teachers": teachers, "steps": args.steps, "rounds": args.rounds}
    payload["methods"] = rows
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.md").write_text(markdown)
    (args.out / f"{args.name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(markdown)


if __name__ == "__main__":
    main()
