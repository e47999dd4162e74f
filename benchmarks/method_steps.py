"""Each distillation method's training step time relative to KD's, on one otherwise idle process.

The step-time columns of ``results/methods_cpu.md`` were read from 10-epoch runs while other
runs shared the cores, with the load changing between runs. This measures the step alone: for
each method and teacher, a one-epoch distillation of ``--steps`` steps on synthetic images of the
spec's size (a step's cost does not depend on pixel values), in ``--rounds`` interleaved rounds
with the method order rotated each round, so that a change of load touches every method alike.
Per round each method's mean step is divided by KD's in the same round; the table gives the
median over rounds and the rounds' range. The teachers are trained for one epoch first (their
weights do not change the cost). Phases (AB's, FT's, SSKD's) run but are not part of the step.

    python benchmarks/method_steps.py                          # every method, proof_cpu networks
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
    parser.add_argument("--runs", type=Path, default=REPO / "runs", help="parent of the scratch runs (default: runs/)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (default: benchmarks/results/)")
    parser.add_argument("--name", default="method_steps_cpu", help="result files' name")
    args = parser.parse_args(argv)
    if args.steps < 2 or args.rounds < 1:
        parser.error("--steps must be at least 2 and --rounds at least 1")
    return args


def timing_spec(path: Path, steps: int, images: int | None = None):
    """The spec's networks and batch on synthetic images: one epoch of ``steps`` steps (or ``images``)."""
    from splicer.spec import load_spec
    from splicer.training.overrides import apply_overrides

    spec = load_spec(path)
    batch = spec.train.batch_size
    return apply_overrides(
        spec,
        assignments=[
            "data.dataset=synthetic",
            f"data.synthetic_train={images or steps * batch}",
            f"data.synthetic_test={batch}",
            "train.epochs=1",
            "train.milestones=[]",
            "train.device=cpu",
            "train.compile=false",
        ],
    )


def crd_images(spec) -> int | None:
    """Synthetic training images (classes in equal shares) that leave CRD all its configured negatives
    outside any one class, so that it does not lower their count."""
    from splicer.training.methods.base import method_options

    negatives = method_options("crd", spec.distill).negatives
    return -(-negatives * spec.num_classes // (spec.num_classes - 1)) + spec.num_classes


def measure(spec_path: Path, methods: list[str], steps: int, rounds: int, folder: Path) -> dict[str, Any]:
    """Mean step seconds of every (method, teacher) in every round, and each round's ratio to KD's."""
    from splicer.training.stage1 import train_teacher
    from splicer.training.stage2 import distill

    spec = timing_spec(spec_path, steps)
    crd_spec = timing_spec(spec_path, steps, max(steps * spec.train.batch_size, crd_images(spec)))
    shutil.rmtree(folder, ignore_errors=True)
    teachers = {kind: folder / kind for kind in TEACHERS}
    for kind, out in teachers.items():
        train_teacher(spec, standard=kind == "standard", out=out, quiet=True)
    order = ["kd", *(m for m in methods if m != "kd")]
    seconds: dict[str, dict[str, list[float]]] = {m: {kind: [] for kind in TEACHERS} for m in order}
    for number in range(rounds):
        shift = number % len(order)
        for method in order[shift:] + order[:shift]:
            for kind, teacher in teachers.items():
                run = folder / f"round{number}" / f"{method}-from-{kind}"
                summary = distill(crd_spec if method == "crd" else spec, teacher, method, out=run, quiet=True)
                seconds[method][kind].append(summary["step_seconds_median"])
                print(f"round {number + 1}/{rounds}: {method} from {kind}: {1000 * seconds[method][kind][-1]:.1f} ms")
    return {
        method: {
            kind: {
                "step_seconds": per_round,
                "relative_to_kd": [s / kd for s, kd in zip(per_round, seconds["kd"][kind], strict=True)],
            }
            for kind, per_round in seconds[method].items()
        }
        for method in methods
    }


def summarise(measured: dict[str, Any]) -> dict[str, Any]:
    """Median step and median ratio to KD over rounds, with the ratios' range."""
    return {
        method: {
            kind: {
                "step_ms": 1000 * statistics.median(entry["step_seconds"]),
                "relative_to_kd": statistics.median(entry["relative_to_kd"]),
                "range": [min(entry["relative_to_kd"]), max(entry["relative_to_kd"])],
                "step_seconds_per_round": entry["step_seconds"],
                "relative_to_kd_per_round": entry["relative_to_kd"],
            }
            for kind, entry in by_kind.items()
        }
        for method, by_kind in measured.items()
    }


def render(rows: dict[str, Any], spec, args: argparse.Namespace, made: dict[str, str]) -> str:
    """The markdown table; ``made`` is the provenance (date, command, versions, machine)."""
    from splicer.training.experiment import method_title

    def cell(entry: dict[str, Any]) -> str:
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
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    from splicer.errors import SplicerError
    from splicer.training.experiment import expand_methods

    torch.set_num_threads(args.threads)
    load_at_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    methods = expand_methods([m.strip() for m in args.methods.split(",") if m.strip()])
    try:
        spec = timing_spec(args.spec, args.steps)
        rows = summarise(measure(args.spec, methods, args.steps, args.rounds, args.runs / spec.name / "method_steps"))
    except SplicerError as exc:
        sys.exit(f"method_steps.py: {exc}")
    made = {**provenance(argv, torch.get_num_threads()), "load average at start (1/5/15 min)": load_at_start}
    markdown = render(rows, spec, args, made)
    payload = {**made, "spec": relative(args.spec), "steps": args.steps, "rounds": args.rounds, "methods": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.md").write_text(markdown)
    (args.out / f"{args.name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(markdown)


if __name__ == "__main__":
    main()
