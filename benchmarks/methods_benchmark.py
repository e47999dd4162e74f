"""Every registered distillation method, from the standard and from the SFTN teacher, on a validation split.

Drives ``splicer run`` (splicer's own spec, data pipeline and trainer) on the CPU proof
configuration (``benchmarks/specs/proof_cpu.yaml``, real CIFAR-10 at 16x16) for one seed, with
``--val-split`` training images held out and scored instead of the test set (never the test
set: this table is for comparing methods, not for reporting). Per method it stores the
student's validation top-1 from either teacher, their difference, and its step time relative
to KD's with the same teacher, in ``benchmarks/results/methods_cpu.md`` / ``.json`` together
with the teachers, the student alone and the exact command.

    python benchmarks/methods_benchmark.py                         # every method, seed 0
    python benchmarks/methods_benchmark.py --methods kd,sp,dkd     # some of them
    python benchmarks/methods_benchmark.py --train-subset 20000    # a shorter run

Finished runs are reused and interrupted ones resumed (the experiment folder is resumed), so
the full command after a partial or interrupted one only trains what is missing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from proof import REPO, RESULTS, SPECS, VALIDATION_IMAGES, cifar10_root, started  # noqa: E402
from provenance import provenance, repo_relative as relative  # noqa: E402

TEACHERS = ("standard", "sftn")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--spec", type=Path, default=SPECS / "proof_cpu.yaml", help="spec (default: benchmarks/specs/proof_cpu.yaml)"
    )
    parser.add_argument("--methods", default="all", help="comma-separated methods, or all (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="the one seed (default: 0)")
    parser.add_argument(
        "--val-split",
        type=int,
        default=VALIDATION_IMAGES,
        help=f"training images held out and scored (default: {VALIDATION_IMAGES}); never the test set",
    )
    parser.add_argument("--train-subset", type=int, help="train on this many images only (default: all the rest)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="change a spec field (repeatable)"
    )
    parser.add_argument("--data-root", type=Path, help="CIFAR-10 ImageFolder root (default: unpack ../shared/data)")
    parser.add_argument("--runs", type=Path, default=REPO / "runs", help="parent of the run folders (default: runs/)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (default: benchmarks/results/)")
    parser.add_argument("--name", default="methods_cpu", help="result files' and experiment folder's name")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.val_split < 1:
        parser.error("--val-split must hold out at least one image: this benchmark never scores on the test set")
    return args


def load_spec(args: argparse.Namespace):
    """The spec with the validation split, the seed and ``--set``; real CIFAR-10 for an image-folder spec."""
    from splicer.spec import load_spec as load
    from splicer.training.overrides import apply_overrides

    spec = load(args.spec)
    overrides = [f"data.val_split={args.val_split}", f"train.seed={args.seed}"]
    if args.train_subset is not None:
        overrides.append(f"data.train_subset={args.train_subset}")
    if spec.data.dataset == "imagefolder" and not any(s.startswith("data.root=") for s in args.set):
        overrides.append(f"data.root={cifar10_root(args.data_root)}")
    return apply_overrides(spec, assignments=overrides + args.set)


def method_rows(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per method: top-1 from each teacher, the difference, step time relative to KD's with the same teacher."""
    methods = report["methods"]
    kd_steps = methods.get("kd", {}).get("step_seconds", {})
    rows = {}
    for method, row in methods.items():
        relative_step = {
            kind: row["step_seconds"][kind] / kd_steps[kind]
            if row["step_seconds"][kind] is not None and kd_steps.get(kind)
            else None
            for kind in TEACHERS
        }
        rows[method] = {
            "top1": {kind: row[kind]["mean"] if row[kind] else None for kind in TEACHERS},
            "delta": row["delta"],
            "step_seconds": row["step_seconds"],
            "step_relative_to_kd": relative_step,
            "wall_seconds": row["wall_seconds"],
            "errors": row["errors"],
        }
    return rows


def render(
    report: dict[str, Any], rows: dict[str, dict[str, Any]], spec, args: argparse.Namespace, made: dict[str, str]
) -> str:
    """The markdown table; ``made`` is the provenance (date, command, versions, machine)."""
    from splicer.experiments.experiment import method_title

    def top1(value: float | None) -> str:
        return "failed" if value is None else f"{value:.2f}"

    def ratio(value: float | None) -> str:
        return "" if value is None else f"{value:.2f}x"

    def signed(value: float | None) -> str:
        return "" if value is None else f"{value:+.2f}"

    data = spec.data
    images = f"{data.train_subset} training images" if data.train_subset else "all other training images"
    lines = [
        f"# Every distillation method from the standard and the SFTN teacher ({report['spec']}, validation split)",
        "",
        f"`{relative(args.spec)}`: {spec.teacher.model} -> {spec.student.model} {spec.student.kwargs or ''}, "
        f"{spec.input_size[1]}x{spec.input_size[2]} inputs, {report['epochs']} epochs per run, seed {args.seed}; "
        f"{args.val_split} training images held out as the validation split ({report['eval_split']}), {images} "
        "for training; never the test set. Final validation top-1 (%). Step time: median over epochs of the "
        "mean training step (teacher forward included), relative to KD's with the same teacher. Feature methods "
        "add KD (CE 0.1, KD 0.9 at T=4), as the paper; DKD has its own objective.",
        "",
        *(f"- {key}: {value}" for key, value in made.items()),
        "",
        "| Method | Standard teacher | SFTN teacher | Δ | Step vs KD (standard) | Step vs KD (SFTN) | Wall per run |",
        "|:--|--:|--:|--:|--:|--:|--:|",
        f"| Teacher | {top1(report['teacher']['standard']['mean'])} | {top1(report['teacher']['sftn']['mean'])} "
        f"| {signed(report['teacher']['delta'])} | | | |",
        f"| Student alone | {top1(report['student_alone']['mean'])} | | | | | |",
    ]
    for method, row in rows.items():
        seconds = row["wall_seconds"]
        wall = "" if seconds is None else f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
        lines.append(
            f"| {method_title(method)} | {top1(row['top1']['standard'])} | {top1(row['top1']['sftn'])} "
            f"| {signed(row['delta'])} | {ratio(row['step_relative_to_kd']['standard'])} "
            f"| {ratio(row['step_relative_to_kd']['sftn'])} | {wall} |"
        )
    best, mean = report["best"], report["mean_delta"]
    if best["delta"] is not None:
        lines += [
            f"| Best | {top1(best['standard'])} | {top1(best['sftn'])} | {signed(best['delta'])} | | | |",
            f"| Mean Δ over {len(mean['methods'])} methods | | | {signed(mean['mean'])} | | | |",
        ]
    failed = {m: row["errors"] for m, row in rows.items() if row["errors"]}
    if failed:
        lines += ["", "Failures (traceback in each run folder's error.txt):", ""]
        lines += [f"- {method_title(m)}: {'; '.join(errors)}" for m, errors in failed.items()]
    kd = rows.get("kd", {}).get("step_seconds", {})
    if kd.get("standard") and kd.get("sftn"):
        lines += [
            "",
            f"KD's step: {1000 * kd['standard']:.1f} ms with the standard teacher, "
            f"{1000 * kd['sftn']:.1f} ms with the SFTN teacher.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from splicer.errors import SplicerError
    from splicer.experiments.experiment import run_experiment

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    try:
        spec = load_spec(args)
        folder = args.runs / spec.name / args.name
        report = run_experiment(spec, methods, [args.seed], out=folder, resume=started(folder), quiet=args.quiet)
    except SplicerError as exc:
        sys.exit(f"methods_benchmark.py: {exc}")
    if report["eval_split"] == "test":
        sys.exit("methods_benchmark.py: the runs were scored on the test set; this benchmark needs a validation split")
    report["folder"] = relative(report["folder"])
    report["runs"] = {seed: {k: relative(p) for k, p in runs.items()} for seed, runs in report["runs"].items()}
    for failed in report["failures"].values():
        for entry in failed.values():
            entry["run"] = relative(entry["run"])
    import torch

    rows = method_rows(report)
    made = provenance(argv, torch.get_num_threads())
    markdown = render(report, rows, spec, args, made)
    payload = {
        **made,
        "spec": relative(args.spec),
        "seed": args.seed,
        "val_split": args.val_split,
        "train_subset": args.train_subset,
        "set": [s for s in args.set if not s.startswith("data.root=")],
        "methods": rows,
        "report": report,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.md").write_text(markdown)
    (args.out / f"{args.name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(markdown)
    print(f"wrote {relative(args.out / (args.name + '.md'))} and .json")


if __name__ == "__main__":
    main()
