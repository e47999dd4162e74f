"""Why does a short-trained SFTN teacher lose accuracy? Variants of stage 1, on a validation split.

Trains, for one seed on the CPU proof configuration with ``--train-subset`` training images and
5,000 held-out validation images (never the test set): the standard teacher and a KD student
from it, then for each SFTN variant the SFTN teacher and a KD student from it. Variants change
one thing each: lambda_KL, the KL direction, or the schedule length. Stores a table in
``benchmarks/results/sftn_ablation.md`` / ``.json``.

    python benchmarks/sftn_ablation.py --train-subset 20000
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from proof import REPO, RESULTS, SPECS, VALIDATION_IMAGES, cifar10_root  # noqa: E402

VARIANTS: dict[str, list[str]] = {
    "SFTN, paper defaults (lambda_KL 3, KL(q_T||q_R))": [],
    "SFTN, lambda_KL 1": ["loss.branch_kl=1.0"],
    "SFTN, KL(q_R||q_T) (the paper's equation as written)": ["loss.kl_direction=branch_teacher"],
    "SFTN, lambda_KL 0 (branches trained, no KL to the teacher)": ["loss.branch_kl=0.0"],
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-subset", type=int, default=20000, help="training images (default: 20000)")
    parser.add_argument("--epochs", type=int, help="override the spec's epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "sftn_ablation")
    parser.add_argument("--data-root", type=Path)
    args = parser.parse_args(argv)

    from splicer.spec import load_spec
    from splicer.training.overrides import apply_overrides
    from splicer.training.stage1 import train_teacher
    from splicer.training.stage2 import distill

    root = cifar10_root(args.data_root)
    base = [f"data.root={root}", f"data.val_split={VALIDATION_IMAGES}", f"data.train_subset={args.train_subset}"]

    def spec_with(extra: list[str]):
        spec = load_spec(SPECS / "proof_cpu.yaml")
        return apply_overrides(spec, train={"epochs": args.epochs, "seed": args.seed}, assignments=base + extra)

    rows = []

    def run(label: str, extra: list[str], standard: bool) -> None:
        folder = args.runs / f"{len(rows)}"
        spec = spec_with(extra)
        done = folder / "teacher" / "summary.json"
        teacher = json.loads(done.read_text()) if done.is_file() else train_teacher(
            spec, standard, folder / "teacher", resume=(folder / "teacher" / "last.pt").is_file(), quiet=True
        )
        done = folder / "kd" / "summary.json"
        student = json.loads(done.read_text()) if done.is_file() else distill(
            spec, folder / "teacher", "kd", folder / "kd", resume=(folder / "kd" / "last.pt").is_file(), quiet=True
        )
        rows.append(
            {"variant": label, "overrides": extra, "teacher_top1": teacher["final"]["top1"], "kd_student_top1": student["final"]["top1"]}
        )
        print(f"{label}: teacher {teacher['final']['top1']:.2f}, KD student {student['final']['top1']:.2f}", flush=True)

    run("Standard teacher (CE only)", [], standard=True)
    for label, extra in VARIANTS.items():
        run(label, extra, standard=False)
    spec = spec_with([])
    lines = [
        "# Why a short-trained SFTN loses: stage-1 variants on a validation split",
        "",
        f"CPU proof configuration (`benchmarks/specs/proof_cpu.yaml`: {spec.teacher.model} -> {spec.student.model} "
        f"{spec.student.kwargs}, CIFAR-10 at {spec.input_size[1]}x{spec.input_size[2]}), {args.train_subset} training "
        f"images, {VALIDATION_IMAGES} held-out validation images, {spec.train.epochs} epochs, seed {args.seed}. "
        "Final validation top-1 (%).",
        "",
        f"Command: `python benchmarks/sftn_ablation.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
        "",
        "| Teacher | Teacher top-1 | KD student top-1 |",
        "|:--|--:|--:|",
        *(f"| {r['variant']} | {r['teacher_top1']:.2f} | {r['kd_student_top1']:.2f} |" for r in rows),
        "",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sftn_ablation.md").write_text("\n".join(lines))
    (RESULTS / "sftn_ablation.json").write_text(json.dumps({"rows": rows, "train_subset": args.train_subset}, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
