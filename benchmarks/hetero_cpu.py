"""Distillation across architectures on the CPU: a ViT teacher to a CNN student and a CNN teacher to a ViT student.

Drives ``splicer run`` (splicer's own spec, data pipeline and trainer) on real CIFAR-10 pooled to
16x16 (as the proof's CPU configuration) for two pairs, one in each direction (``benchmarks/specs/hetero_vit_resnet8_cpu.yaml``: a small
ViT, patch 4, to the CIFAR resnet8; ``hetero_resnet20_vit_cpu.yaml``: the CIFAR resnet20 to a
small ViT), with the standard and the SFTN teacher and every registered method that can read the
pair's block ends (``--methods all``: methods registered later, OFA and DIST, join by themselves;
OH and AB are skipped on these pairs, their ViT block ends have no final ReLU, and the table says
so). One seed. Scored on ``--val-split`` held-out training images, never the test set. The tables
(the layout of the paper's table 2, from splicer's own experiment report) go to
``benchmarks/results/hetero_cpu.md`` / ``.json`` with the exact command and commit.

    python benchmarks/hetero_cpu.py                     # the stored table; sized for <= 40 min on 2 free cores
    python benchmarks/hetero_cpu.py --methods kd,at,rkd # some methods only
    python benchmarks/hetero_cpu.py --pairs hetero_vit_resnet8_cpu.yaml   # one pair (run the other beside it)
    python benchmarks/hetero_cpu.py --train-subset 64 --val-split 64 --epochs 1 --name hetero_smoke  # a smoke

Size: 5,000 training images and 2,000 held out, 6 epochs per run (the standard teacher, the
SFTN, the student alone and 2 runs per method for each pair: 2 x (3 + 2 x 13) = 58 runs with OFA
and DIST), at 16x16 on the CPU, sized to take at most 40 minutes on 2 free cores. The estimate:
one-thread training steps at batch 64 of about 25-40 ms (ViT -> resnet8: teacher 25, SFTN 38,
KD 32 ms; resnet20 -> ViT: teacher 87, SFTN 130, KD 40 ms), measured on a loaded machine and
scaled by the proof configuration's KD step (93 ms at batch 128 on an idle machine, 1.34 s that
same hour); with CRD's and SSKD's steps at about 3x KD's and 5-8 s per run to build, evaluate
and compare, about 245 s per epoch of all runs plus 400 s, 31 minutes at 6 epochs. On a loaded
machine it takes longer. The first run on a machine may also decode CIFAR-10 once into
splicer's image cache (minutes), which later runs reuse. Finished
runs are reused and interrupted ones resumed (the experiment folders are resumed), so the same
command after an interruption only trains what is missing.

What it can show: that every method runs on both heterogeneous directions and how the
students compare after a short schedule. What it cannot: one seed and 6 epochs on 5,000 images at 16x16
are far from the paper's 240 epochs on 50,000; a difference of a point or two between methods or
teachers is within the spread of seeds (see proof_cpu.md for that spread on a CNN pair).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from proof import REPO, RESULTS, SPECS, cifar10_root, started  # noqa: E402
from provenance import provenance, repo_relative as relative  # noqa: E402

PAIRS = ("hetero_vit_resnet8_cpu.yaml", "hetero_resnet20_vit_cpu.yaml")
TRAIN_IMAGES = 5000
VALIDATION_IMAGES = 2000
EPOCHS = 6


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="all", help="comma-separated methods, or all (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="the one seed (default: 0)")
    parser.add_argument(
        "--pairs",
        default=",".join(PAIRS),
        help="comma-separated spec files of benchmarks/specs/ to train (default: both); train each in its own "
        "process (one thread each), then run without --pairs to write the table from the finished runs",
    )
    parser.add_argument(
        "--train-subset", type=int, default=TRAIN_IMAGES, help=f"training images (default: {TRAIN_IMAGES})"
    )
    parser.add_argument(
        "--val-split",
        type=int,
        default=VALIDATION_IMAGES,
        help=f"training images held out and scored (default: {VALIDATION_IMAGES}); never the test set",
    )
    parser.add_argument("--epochs", type=int, default=EPOCHS, help=f"epochs of every run (default: {EPOCHS})")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="change a field of both specs (repeatable)"
    )
    parser.add_argument("--data-root", type=Path, help="CIFAR-10 ImageFolder root (default: unpack ../shared/data)")
    parser.add_argument("--runs", type=Path, default=REPO / "runs", help="parent of the run folders (default: runs/)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (default: benchmarks/results/)")
    parser.add_argument("--name", default="hetero_cpu", help="result files' and experiment folders' name")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.val_split < 1:
        parser.error("--val-split must hold out at least one image: this benchmark never scores on the test set")
    if args.epochs < 1 or args.train_subset < 1:
        parser.error("--epochs and --train-subset must be at least 1")
    return args


def load_spec(path: Path, args: argparse.Namespace):
    """A pair's spec on real CIFAR-10 (unless ``--set`` changes the data) with the subset, the validation
    split, the epochs (the one milestone at 3/4 of them), the seed and ``--set``."""
    from splicer.spec import load_spec as load
    from splicer.training.overrides import apply_overrides

    milestone = max(1, round(0.75 * args.epochs))
    real_images = not any(s.startswith(("data.root=", "data.dataset=")) for s in args.set)
    overrides = [f"data.root={cifar10_root(args.data_root)}"] if real_images else []
    overrides += [
        f"data.train_subset={args.train_subset}",
        f"data.val_split={args.val_split}",
        f"train.epochs={args.epochs}",
        f"train.milestones=[{milestone}]" if milestone < args.epochs else "train.milestones=[]",
        f"train.seed={args.seed}",
    ]
    return apply_overrides(load(path), assignments=overrides + args.set)


def portable(report: dict[str, Any]) -> dict[str, Any]:
    """The report with every folder relative to the repository (stored results name no machine folders)."""
    report["folder"] = relative(report["folder"])
    report["runs"] = {seed: {k: relative(p) for k, p in runs.items()} for seed, runs in report["runs"].items()}
    for failed in report["failures"].values():
        for entry in failed.values():
            entry["run"] = relative(entry["run"])
    return report


def render(reports: list[dict[str, Any]], args: argparse.Namespace, made: dict[str, str]) -> str:
    """Both pairs' tables (splicer's experiment report, the layout of the paper's table 2) under one header."""
    from splicer.experiments.experiment import render_markdown

    lines = [
        "# Distillation across architectures on the CPU: ViT -> CNN and CNN -> ViT (CIFAR-10, validation split)",
        "",
        f"Real CIFAR-10 pooled to 16x16, {args.train_subset} training images, {args.val_split} other training images "
        f"held out and scored (never the test set), {args.epochs} epochs per run, seed {args.seed}. Feature "
        "methods add KD (CE 0.1, KD 0.9 at T=4), as the paper; each method reads token and channels-last block "
        "ends through splicer's layout adapters (see each pair's last sections). One seed and a short schedule: "
        "differences of a point or two are within the seed spread, and the teachers are far from converged.",
        "",
        *(f"- {key}: {value}" for key, value in made.items()),
        "",
    ]
    for report in reports:  # each pair's headings one level down, under the common title
        lines += ["#" + line if line.startswith("#") else line for line in render_markdown(report).splitlines()]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from splicer.errors import SplicerError
    from splicer.experiments.experiment import run_experiment

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    pairs = [name.strip() for name in args.pairs.split(",") if name.strip()]
    unknown = sorted(set(pairs) - set(PAIRS))
    if unknown:
        sys.exit(f"hetero_cpu.py: --pairs {','.join(unknown)}: unknown; valid: {', '.join(PAIRS)}")
    reports = []
    for name in pairs:
        try:
            spec = load_spec(SPECS / name, args)
            folder = args.runs / spec.name / args.name
            report = run_experiment(spec, methods, [args.seed], out=folder, resume=started(folder), quiet=args.quiet)
        except SplicerError as exc:
            sys.exit(f"hetero_cpu.py: {name}: {exc}")
        if report["eval_split"] == "test":
            sys.exit("hetero_cpu.py: the runs were scored on the test set; this benchmark needs a validation split")
        reports.append(portable(report))
    import torch

    made = provenance(argv, torch.get_num_threads())
    markdown = render(reports, args, made)
    payload = {
        **made,
        "specs": [relative(SPECS / name) for name in pairs],
        "seed": args.seed,
        "train_subset": args.train_subset,
        "val_split": args.val_split,
        "epochs": args.epochs,
        "set": [s for s in args.set if not s.startswith("data.root=")],
        "reports": reports,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.md").write_text(markdown)
    (args.out / f"{args.name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(markdown)
    print(f"wrote {relative(args.out / (args.name + '.md'))} and .json")


if __name__ == "__main__":
    main()
