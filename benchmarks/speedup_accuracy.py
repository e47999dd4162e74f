"""What each stage-2 speed-up costs in accuracy (issue 27), on the CPU proof configuration.

Per seed: a standard teacher (``benchmarks/specs/proof_cpu.yaml``: resnet20 -> narrow resnet8,
real CIFAR-10 at 16x16, 10 epochs), then KD students that differ only in how the frozen teacher
is run: as trained (no BatchNorm folding, contiguous layout, fp32: what the peers do), folded +
channels-last (splicer's default on CPUs without AMX), compiled (``distill.teacher_compile``), from soft
labels computed once (``distill.soft_labels.views=K``, no teacher pass while the student trains), all with an
fp32 teacher; and, where bf16 runs natively (CPUs with AMX: pick them with ``--only``), the folded teacher
in bf16 (splicer's default there), with the student's step in bf16 too (``train.precision=bf16``), and soft
labels from the bf16 teacher with a bf16 student step.
Stores ``benchmarks/results/speedup_accuracy.{md,json}``: each student's test top-1, its paired
difference to the student of the teacher as trained, how far its test logits are from that
student's (max |difference| and the share of equal predictions), the same after only 8 training
steps, and each run's time. The reference run is repeated once, so that the logit distances can be
read against what two identical runs give.

    python benchmarks/speedup_accuracy.py --seeds 0,1,2             # all of it, one run at a time
    python benchmarks/speedup_accuracy.py --seeds 1 --no-table      # one seed (e.g. two in parallel) ...
    python benchmarks/speedup_accuracy.py --seeds 0,1,2             # ... then the table from finished runs
    python benchmarks/speedup_accuracy.py --only kd-bf16,kd-bf16-student,kd-soft10-bf16 --name speedup_accuracy_bf16

Finished runs in ``--runs`` are reused and interrupted ones resumed.
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

from proof import REPO, RESULTS, SPECS, cifar10_root  # noqa: E402
from provenance import provenance, repo_relative  # noqa: E402
from sftn_ablation import finished_summary, mean_sd  # noqa: E402

REFERENCE = "kd-as-trained"
FIRST_STEPS = ("data.train_subset=1024", "train.epochs=1", "train.milestones=[1]")
"""The short runs that show each variant's numerics before training amplifies them: 8 steps of batch 128."""


@dataclass(frozen=True)
class Variant:
    """One way of running the frozen teacher in stage 2; ``folder`` names its run, so it is found again."""

    folder: str
    label: str
    sets: tuple[str, ...]


def variants(views: int) -> list[Variant]:
    fp32, bf16 = "distill.teacher_precision=fp32", "distill.teacher_precision=bf16"
    as_trained = ("distill.teacher_fold_bn=false", "distill.teacher_channels_last=false", fp32)
    soft = f"distill.soft_labels.views={views}"
    return [
        Variant(REFERENCE, "Teacher as trained (no folding, contiguous, fp32)", as_trained),
        Variant(
            f"{REFERENCE}-again", "Teacher as trained, the same run again (how far two identical runs drift)", as_trained
        ),
        Variant("kd-folded", "Folded BatchNorm + channels-last, fp32 (default on CPUs without AMX)", (fp32,)),
        Variant("kd-compiled", "Folded + channels-last + torch.compile, fp32", ("distill.teacher_compile=true", fp32)),
        Variant(f"kd-soft{views}", f"Soft labels computed once, {views} views, fp32 teacher", (soft, fp32)),
        Variant("kd-bf16", "Folded + channels-last, bf16 teacher (default on CPUs with AMX and on CUDA)", (bf16,)),
        Variant("kd-bf16-student", "Folded bf16 teacher, bf16 student step", (bf16, "train.precision=bf16")),
        Variant(
            f"kd-soft{views}-bf16",
            f"Soft labels computed once, {views} views, bf16 teacher, bf16 student step",
            (soft, bf16, "train.precision=bf16"),
        ),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default: 0,1,2)")
    parser.add_argument("--views", type=int, default=10, help="soft-label views per image (default: 10, the spec's)")
    parser.add_argument(
        "--only", help="comma-separated variant folders to run (default: all); the reference always runs"
    )
    parser.add_argument("--no-table", action="store_true", help="train only; write no table (for parallel seeds)")
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "proof_cpu_speedups", help="run folders")
    parser.add_argument("--data-root", type=Path, help="CIFAR-10 ImageFolder root (default: unpack ../shared/data)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="change a spec field of every run (repeatable)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the tables (default: benchmarks/results/)")
    parser.add_argument("--name", default="speedup_accuracy", help="the tables' file name (default: speedup_accuracy)")
    args = parser.parse_args(argv)
    seeds = [int(seed) for seed in args.seeds.split(",")]
    chosen = variants(args.views)
    if args.only:
        names = set(args.only.split(",")) | {REFERENCE}
        unknown = sorted(names - {v.folder for v in chosen})
        if unknown:
            parser.error(f"--only: unknown {', '.join(unknown)}; choose from {', '.join(v.folder for v in chosen)}")
        chosen = [v for v in chosen if v.folder in names]

    from splicer.spec import load_spec
    from splicer.training.overrides import apply_overrides

    root = cifar10_root(args.data_root)
    base = load_spec(SPECS / "proof_cpu.yaml")

    def spec_for(seed: int, extra: tuple[str, ...] = ()):
        return apply_overrides(base, assignments=[f"data.root={root}", f"train.seed={seed}", *args.set, *extra])

    from splicer.errors import SplicerError

    try:
        rows = {seed: run_seed(seed, chosen, spec_for, args.runs / f"seed{seed}") for seed in seeds}
    except SplicerError as exc:
        sys.exit(f"speedup_accuracy.py: {exc}")
    if not args.no_table:
        write_table(rows, chosen, spec_for(seeds[0]), args, argv)


def run_seed(seed: int, chosen: list[Variant], spec_for, folder: Path) -> dict[str, Any]:
    """Train (or reuse) the seed's standard teacher and its students; their summaries and logit distances."""
    from splicer.training.stage1 import train_teacher
    from splicer.training.stage2 import distill

    teacher_folder = folder / "standard"
    teacher = finished_summary(teacher_folder) or train_teacher(
        spec_for(seed), True, teacher_folder, resume=(teacher_folder / "last.pt").is_file(), quiet=True
    )
    print(f"seed {seed}: standard teacher {teacher['final']['top1']:.2f}", flush=True)
    students = {}
    for variant in chosen:
        out = folder / variant.folder
        students[variant.folder] = finished_summary(out) or distill(
            spec_for(seed, variant.sets), teacher_folder, "kd", out, resume=(out / "last.pt").is_file(), quiet=True
        )
        print(f"seed {seed}: {variant.folder} {students[variant.folder]['final']['top1']:.2f}", flush=True)
    early = folder / "first-steps"
    for variant in chosen:
        out = early / variant.folder
        if not finished_summary(out):
            resume = (out / "last.pt").is_file()
            distill(spec_for(seed, (*variant.sets, *FIRST_STEPS)), teacher_folder, "kd", out, resume=resume, quiet=True)
    return {
        "teacher": teacher,
        "students": students,
        "distances": {v.folder: logit_distance(folder / REFERENCE, folder / v.folder) for v in chosen},
        "first_steps": {v.folder: logit_distance(early / REFERENCE, early / v.folder) for v in chosen},
    }


def logit_distance(reference: Path, other: Path) -> dict[str, float]:
    """Max |difference| of two students' test logits and the share of test images they classify alike."""
    import torch

    from splicer.data import build_data
    from splicer.spec import spec_from_dict
    from splicer.training.checkpoint import load_checkpoint, network_from_checkpoint
    from splicer.training.distributed import Distributed
    from splicer.training.engine import Runtime

    runtime = Runtime.create("cpu", Distributed.from_env())
    states = [load_checkpoint(run / "last.pt") for run in (reference, other)]
    nets = [
        runtime.place(network_from_checkpoint(state, run / "last.pt")).eval()
        for state, run in zip(states, (reference, other))
    ]
    spec = spec_from_dict(states[0]["spec"], source=str(reference / "last.pt"))
    data = build_data(spec.data, spec.input_size, spec.num_classes, spec.train.batch_size, runtime.device, 0)
    worst, same, total = 0.0, 0, 0
    with torch.no_grad():
        for images, _ in data.eval:
            logits = [net(runtime.inputs(images)) for net in nets]
            worst = max(worst, (logits[0] - logits[1]).abs().max().item())
            same += (logits[0].argmax(1) == logits[1].argmax(1)).sum().item()
            total += images.shape[0]
    return {"max_abs_logit_difference": worst, "same_prediction": same / total}


def write_table(rows: dict[int, dict[str, Any]], chosen: list[Variant], spec, args, argv) -> None:
    """One line per variant: mean ± standard deviation over seeds; differences paired by seed."""
    seeds = list(rows)
    meta = provenance(argv, int(os.environ.get("OMP_NUM_THREADS", "0")) or 2)
    teachers = [rows[s]["teacher"]["final"]["top1"] for s in seeds]
    lines = [
        "# What each stage-2 speed-up costs: KD students of one teacher, its stage-2 numerics varied",
        "",
        f"CPU proof configuration (`benchmarks/specs/proof_cpu.yaml`: {spec.teacher.model} -> {spec.student.model} "
        f"{spec.student.kwargs}, real CIFAR-10 at {spec.input_size[1]}x{spec.input_size[2]}, "
        f"{spec.train.epochs} epochs each stage), seeds {args.seeds}: per seed one standard teacher "
        f"(test top-1 {mean_sd(teachers)}) and KD students (tau {spec.distill.kd_tau}) that differ only in how the "
        "frozen teacher runs. Test top-1 (%), mean ± standard deviation over seeds; differences to the student "
        "of the teacher as trained are paired by seed. Logits: the largest |difference| between a student's "
        "test logits and the reference student's (same seed), over all test images and seeds, and the share "
        "of test images both classify alike; after 8 steps: the same for students trained 8 steps of batch 128 "
        "(1,024 images, one epoch), before training amplifies differences in the last digits. Time: the "
        "student's training wall time, mean over seeds (soft labels: + the one-off precompute of the teacher's "
        "logits); the runs shared the machine unevenly, so time is measured in `peer_throughput.md`, not here.",
        "",
        *(f"- {key}: {value}" for key, value in meta.items()),
        "",
        "| Teacher in stage 2 | Student top-1 | Minus as-trained | Max logit difference | Same prediction "
        "| Max logit difference after 8 steps | Training (s) | Precompute (s) |",
        "|:--|--:|--:|--:|--:|--:|--:|--:|",
    ]
    summary: dict[str, Any] = {}
    for variant in chosen:
        students = [rows[s]["students"][variant.folder] for s in seeds]
        top1 = [r["final"]["top1"] for r in students]
        minus = [t - rows[s]["students"][REFERENCE]["final"]["top1"] for t, s in zip(top1, seeds)]
        distances = [rows[s]["distances"][variant.folder] for s in seeds]
        worst = max(d["max_abs_logit_difference"] for d in distances)
        same = statistics.fmean(d["same_prediction"] for d in distances)
        early = max(rows[s]["first_steps"][variant.folder]["max_abs_logit_difference"] for s in seeds)
        wall = statistics.fmean(r["wall_seconds"] for r in students)
        soft = [r["meta"].get("soft_labels") for r in students]
        precompute = statistics.fmean(x["precompute_seconds"] for x in soft) if all(soft) else None
        reference = variant.folder == REFERENCE
        lines.append(
            f"| {variant.label} | {mean_sd(top1)} | {'' if reference else mean_sd(minus, signed=True)} "
            f"| {'' if reference else f'{worst:.2e}'} | {'' if reference else f'{100 * same:.2f} %'} "
            f"| {'' if reference else f'{early:.2e}'} | {wall:.0f} | {'' if precompute is None else f'{precompute:.0f}'} |"
        )
        summary[variant.folder] = {
            "label": variant.label,
            "sets": list(variant.sets),
            "top1": top1,
            "minus_as_trained": minus,
            "max_abs_logit_difference": worst,
            "same_prediction": same,
            "max_abs_logit_difference_after_8_steps": early,
            "wall_seconds": wall,
            "precompute_seconds": precompute,
            "teacher_inference": [r["meta"].get("teacher_inference") for r in students],
        }
    lines += ["", "Runs: " + ", ".join(f"`{repo_relative(args.runs / f'seed{s}')}`" for s in seeds), ""]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.md").write_text("\n".join(lines))
    payload = {"meta": meta, "seeds": seeds, "teacher_top1": teachers, "variants": summary}
    (args.out / f"{args.name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
