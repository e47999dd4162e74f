"""Why does a short-trained SFTN teacher lose accuracy? Variants of stage 1, on a validation split.

Trains, on the CPU proof configuration with ``--train-subset`` training images and 5,000
held-out validation images (never the test set), a teacher per variant and a KD student from
it. Each variant changes one thing in stage 1: lambda_KL, the KL direction, the transform
layers, or the schedule length (stage-1 epochs, milestones at 60% and 90%). Stage 2 keeps the
spec's 10 epochs, except in the ``-s40`` variants, which distil 40 epochs from the 40-epoch
teachers; the students of one schedule differ only by their teacher. The student trained alone
(``student-alone``, ``student-alone-s40``) is the reference KD must beat. Stores
``benchmarks/results/sftn_ablation.md`` / ``.json`` (``sftn_ablation_seeds_...`` with --seeds).

    python benchmarks/sftn_ablation.py --train-subset 20000
    python benchmarks/sftn_ablation.py --only standard-e40,sftn-kl3-e40   # some variants, e.g. in parallel
    python benchmarks/sftn_ablation.py --seeds 0,1,2 --only student-alone,standard-e40,sftn-kl3-e40 --table

Finished runs in ``--runs`` are reused, so the full command after partial ones only writes the table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from proof import REPO, RESULTS, SPECS, VALIDATION_IMAGES, cifar10_root, scaled_schedule  # noqa: E402
from provenance import provenance  # noqa: E402


@dataclass(frozen=True)
class Variant:
    """One stage-1 setting; ``folder`` names its runs, so finished runs are found again."""

    folder: str
    label: str
    kind: str  # "standard", "sftn" or "student" (the student alone, no teacher)
    stage1: tuple[str, ...] = ()  # spec assignments for stage 1 only
    epochs: int | None = None  # stage-1 epochs; None keeps the spec's
    stage2_epochs: int | None = None  # KD (or student-alone) epochs; None keeps the spec's
    teacher_of: str | None = None  # distil from that variant's teacher instead of training one


SCHEDULED = (  # the teachers trained for longer stage-1 schedules
    ("standard", "Standard teacher (CE only)", "standard", ()),
    ("sftn-kl3", "SFTN, paper defaults (lambda_KL 3)", "sftn", ()),
    ("sftn-kl1", "SFTN, lambda_KL 1", "sftn", ("loss.branch_kl=1.0",)),
)

VARIANTS: list[Variant] = [
    Variant("student-alone", "Student alone (no teacher)", "student"),
    Variant("standard-e10", "Standard teacher (CE only)", "standard"),
    Variant("sftn-kl3-e10", "SFTN, paper defaults (lambda_KL 3, KL(q_T||q_R))", "sftn"),
    Variant("sftn-kl1-e10", "SFTN, lambda_KL 1", "sftn", ("loss.branch_kl=1.0",)),
    Variant(
        "sftn-kl3-reversed-e10",
        "SFTN, KL(q_R||q_T) (the paper's equation as written)",
        "sftn",
        ("loss.kl_direction=branch_teacher",),
    ),
    Variant(
        "sftn-kl0-e10", "SFTN, lambda_KL 0 (branches trained, no KL to the teacher)", "sftn", ("loss.branch_kl=0.0",)
    ),
    Variant("sftn-kl3-t3x3-e10", "SFTN, 3x3 transforms instead of 1x1", "sftn", ("transforms.equal_kernel=3",)),
    Variant(
        "sftn-kl3-tlinear-e10",
        "SFTN, transforms without ReLU (conv + BN only)",
        "sftn",
        ("transforms.activation=false",),
    ),
    *(
        Variant(f"{name}-e{epochs}", label, kind, extra, epochs)
        for epochs, teachers in ((20, SCHEDULED), (40, SCHEDULED), (80, SCHEDULED[:2]))
        for name, label, kind, extra in teachers
    ),
    # A longer stage 2 too: can the student take more from the 40-epoch teachers?
    Variant("student-alone-s40", "Student alone (no teacher)", "student", stage2_epochs=40),
    *(
        Variant(f"{name}-e40-s40", label, kind, extra, 40, stage2_epochs=40, teacher_of=f"{name}-e40")
        for name, label, kind, extra in SCHEDULED
    ),
]
BY_FOLDER = {variant.folder: variant for variant in VARIANTS}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-subset", type=int, default=20000, help="training images (default: 20000)")
    parser.add_argument(
        "--seeds",
        default="0",
        help="comma-separated seeds (default: 0); seed N > 0 keeps its runs in runs/sftn_ablation_seedN",
    )
    parser.add_argument(
        "--only",
        help="comma-separated variant folders to run (default: all, then write the table); "
        f"choices: {', '.join(v.folder for v in VARIANTS)}",
    )
    parser.add_argument(
        "--table", action="store_true", help="with --only: still write the table, of the chosen variants only"
    )
    parser.add_argument("--runs", type=Path, help="parent of the run folders (default: runs/)")
    parser.add_argument("--data-root", type=Path)
    args = parser.parse_args(argv)
    seeds = [int(seed) for seed in args.seeds.split(",")]

    chosen = VARIANTS
    if args.only:
        names = args.only.split(",")
        unknown = sorted(set(names) - {v.folder for v in VARIANTS})
        if unknown:
            parser.error(
                f"--only: unknown variant(s) {', '.join(unknown)}; choose from {', '.join(v.folder for v in VARIANTS)}"
            )
        chosen = [v for v in VARIANTS if v.folder in names]

    from splicer.spec import load_spec
    from splicer.training.overrides import apply_overrides

    root = cifar10_root(args.data_root)
    proof_spec = load_spec(SPECS / "proof_cpu.yaml")

    def spec_for(seed: int):
        base = [
            f"data.root={root}",
            f"data.val_split={VALIDATION_IMAGES}",
            f"data.train_subset={args.train_subset}",
            f"train.seed={seed}",
        ]
        return lambda extra: apply_overrides(proof_spec, assignments=base + extra)

    parent = args.runs or REPO / "runs"
    rows = {
        seed: [run_variant(v, spec_for(seed), parent / f"sftn_ablation{_seed_suffix(seed)}") for v in chosen]
        for seed in seeds
    }
    if args.only and not args.table:
        return
    name = "sftn_ablation" + ("" if seeds == [0] else "_seeds_" + "_".join(map(str, seeds)))
    write_table(rows, spec_for(seeds[0])([]), args, argv, name)


def _seed_suffix(seed: int) -> str:
    return f"_seed{seed}" if seed else ""


def run_variant(variant: Variant, spec_with, runs: Path) -> dict[str, Any]:
    """Train (or reuse) the variant's teacher and its KD student; returns the table row."""
    from splicer.training.stage1 import train_teacher
    from splicer.training.stage2 import distill, train_student

    folder = runs / variant.folder
    spec = spec_with([])

    def schedule(epochs: int | None) -> list[str]:
        """``epochs`` (None: the spec's) with the spec's milestones at the same fractions of training."""
        return scaled_schedule(spec.train.epochs, spec.train.milestones, epochs) if epochs else []

    stage2_spec = spec_with(schedule(variant.stage2_epochs))
    if variant.kind == "student":
        student = finished_summary(folder / "student") or train_student(
            stage2_spec, folder / "student", resume=(folder / "student" / "last.pt").is_file(), quiet=True
        )
        row = {
            "variant": variant.label,
            "folder": variant.folder,
            "stage1_epochs": None,
            "stage2_epochs": stage2_spec.train.epochs,
            "overrides": [],
            "teacher_top1": None,
            "kd_student_top1": student["final"]["top1"],
        }
        print(f"{variant.label}: {row['kd_student_top1']:.2f}", flush=True)
        return row
    source = BY_FOLDER[variant.teacher_of] if variant.teacher_of else variant
    overrides = list(source.stage1) + schedule(source.epochs)
    teacher_spec = spec_with(overrides)
    teacher_folder = runs / source.folder / "teacher"
    teacher = finished_summary(teacher_folder) or train_teacher(
        teacher_spec,
        variant.kind == "standard",
        teacher_folder,
        resume=(teacher_folder / "last.pt").is_file(),
        quiet=True,
    )
    student = finished_summary(folder / "kd") or distill(
        stage2_spec, teacher_folder, "kd", folder / "kd", resume=(folder / "kd" / "last.pt").is_file(), quiet=True
    )
    row = {
        "variant": variant.label,
        "folder": variant.folder,
        "stage1_epochs": teacher_spec.train.epochs,
        "stage2_epochs": stage2_spec.train.epochs,
        "overrides": overrides,
        "teacher_top1": teacher["final"]["top1"],
        "kd_student_top1": student["final"]["top1"],
        "teacher_wall_seconds": round(teacher["wall_seconds"]),
    }
    print(
        f"{variant.label} ({row['stage1_epochs']} + {row['stage2_epochs']} epochs): teacher {row['teacher_top1']:.2f}, "
        f"KD student {row['kd_student_top1']:.2f}",
        flush=True,
    )
    return row


def finished_summary(folder: Path) -> dict[str, Any] | None:
    """The run summary of a finished run folder (its summary.json), or None: such runs are reused."""
    done = folder / "summary.json"
    return json.loads(done.read_text()) if done.is_file() else None


def _cell(text: str) -> str:
    """Text for a markdown table cell: a bare '|' would end the cell."""
    return text.replace("|", r"\|")


def write_table(
    rows: dict[int, list[dict[str, Any]]], spec, args: argparse.Namespace, argv: list[str] | None, name: str
) -> None:
    """One line per variant: each figure is the mean over seeds, ± the standard deviation with several."""
    seeds = list(rows)
    variants = [r["folder"] for r in rows[seeds[0]]]
    by_folder = {
        folder: [next(r for r in rows[seed] if r["folder"] == folder) for seed in seeds] for folder in variants
    }
    alone = {runs[0]["stage2_epochs"]: runs for runs in by_folder.values() if runs[0]["teacher_top1"] is None}
    standard = {
        (runs[0]["stage1_epochs"], runs[0]["stage2_epochs"]): runs
        for folder, runs in by_folder.items()
        if folder.startswith("standard-")
    }
    alone_text = "; ".join(
        f"{epochs} epochs **{mean_sd([r['kd_student_top1'] for r in runs])}**" for epochs, runs in alone.items()
    )
    meta = provenance(argv, int(os.environ.get("OMP_NUM_THREADS", "0")) or 2)
    seed_text = f"seed {seeds[0]}" if len(seeds) == 1 else f"mean ± standard deviation over seeds {args.seeds}"
    lines = [
        "# Why a short-trained SFTN loses: stage-1 variants on a validation split",
        "",
        f"CPU proof configuration (`benchmarks/specs/proof_cpu.yaml`: {spec.teacher.model} -> {spec.student.model} "
        f"{spec.student.kwargs}, CIFAR-10 at {spec.input_size[1]}x{spec.input_size[2]}), {args.train_subset} training "
        f"images, {VALIDATION_IMAGES} held-out validation images, {seed_text}. Final validation top-1 (%). "
        "Stage 1 and stage 2 (KD, tau 4) epochs as in the table, milestones at 60% and 90% of each. Differences "
        "are paired by seed." + (f" Student alone: {alone_text}." if alone else ""),
        "",
        *(f"- {key}: {value}" for key, value in meta.items()),
        "",
        "| Teacher (stage 1) | Stage-1 epochs | Stage-2 epochs | Teacher top-1 | KD student top-1 "
        "| KD student minus the standard teacher's (same epochs) | KD student minus the student alone (same epochs) |",
        "|:--|--:|--:|--:|--:|--:|--:|",
    ]
    for folder, runs in by_folder.items():
        if runs[0]["teacher_top1"] is None:
            continue
        students = [r["kd_student_top1"] for r in runs]
        first = runs[0]
        reference = standard.get((first["stage1_epochs"], first["stage2_epochs"]))
        versus = "" if reference is None or reference is runs else mean_sd(_minus(students, reference), signed=True)
        own_alone = alone.get(first["stage2_epochs"])
        gain = "" if own_alone is None else mean_sd(_minus(students, own_alone), signed=True)
        lines.append(
            f"| {_cell(first['variant'])} | {first['stage1_epochs']} | {first['stage2_epochs']} "
            f"| {mean_sd([r['teacher_top1'] for r in runs])} | {mean_sd(students)} | {versus} | {gain} |"
        )
    lines.append("")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.md").write_text("\n".join(lines))
    rows_by_seed = {str(seed): seed_rows for seed, seed_rows in rows.items()}
    payload = {"meta": meta, "rows": rows_by_seed, "train_subset": args.train_subset}
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    print("\n".join(lines))


def _minus(students: list[float], reference: list[dict[str, Any]]) -> list[float]:
    """Per-seed differences to the reference student (standard teacher's, or alone) of the same seed."""
    return [s - r["kd_student_top1"] for s, r in zip(students, reference)]


def mean_sd(values: list[float], signed: bool = False) -> str:
    """``m`` for one value, ``m ± sd`` for several; ``signed`` for differences."""
    mean = statistics.fmean(values)
    text = f"{mean:+.2f}" if signed else f"{mean:.2f}"
    return text if len(values) == 1 else f"{text} ± {statistics.stdev(values):.2f}"


if __name__ == "__main__":
    main()
