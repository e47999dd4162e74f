"""Prove it on real images: students distilled from an SFTN vs from a standard teacher.

Drives splicer's own spec, data pipeline and trainer (``splicer run``) on the real CIFAR-10
in ``../shared/data`` and stores, per configuration, a markdown and a JSON table in
``benchmarks/results/``: teacher accuracy (standard, SFTN), student accuracy (alone, by KD
from each), the paper's table-8 similarity (KL, CKA), wall time per stage, the SFTN step
time relative to the standard teacher's, and the data pipeline's img/s relative to the model's.

    python benchmarks/proof.py --config cpu --seeds 0,1,2          # about 25 min a seed on 2 cores
    python benchmarks/proof.py --config cpu --validation --seeds 0 # choose settings on a val split
    python benchmarks/proof.py --config gpu --seeds 0 --fit-minutes 9   # both paper pairs, sized to 9 min

Finished runs are reused (the experiment folder is resumed), so an interrupted proof
continues where it stopped and a finished one only re-writes its tables.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

# benchmarks/ is on sys.path when run as a script
from provenance import REPO, git_commit, portable_command, repo_relative

SPECS = REPO / "benchmarks" / "specs"
RESULTS = REPO / "benchmarks" / "results"
CIFAR_TOOL = REPO.parent / "shared" / "tools" / "cifar10-root"
CONFIGS = {
    "cpu": ["proof_cpu.yaml"],
    "gpu": ["proof_gpu_resnet32x4_resnet8x4.yaml", "proof_gpu_wrn40_2_wrn16_2.yaml"],
}
VALIDATION_IMAGES = 5000
STAGES = ("standard", "sftn", "student")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="cpu", help="which experiment (default: cpu)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default: 0,1,2)")
    parser.add_argument("--methods", default="kd", help="distillation methods, e.g. kd,fitnets,at (default: kd)")
    parser.add_argument(
        "--epochs", type=int, help="override every run's epochs (milestones keep their fraction of training)"
    )
    parser.add_argument(
        "--fit-minutes",
        type=float,
        metavar="M",
        help="size the schedule to this machine: train every run for one epoch first (a probe, in its own "
        "run folders), then choose --epochs so that the whole proof takes at most M minutes",
    )
    parser.add_argument(
        "--validation",
        action="store_true",
        help=f"hold out {VALIDATION_IMAGES} training images and score on them instead of the test set "
        "(for choosing settings; never tune on the test set)",
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="change a spec field (repeatable)"
    )
    parser.add_argument("--tag", default="", help="suffix for the run folder and result files (for variants)")
    parser.add_argument("--data-root", type=Path, help="CIFAR-10 ImageFolder root (default: unpack ../shared/data)")
    parser.add_argument("--runs", type=Path, default=REPO / "runs", help="where run folders go (default: runs/)")
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help="folder for the result tables (default: benchmarks/results/)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def cifar10_root(given: Path | None) -> Path:
    """The ImageFolder root of the real CIFAR-10: given, or unpacked from ../shared/data once."""
    if given is not None:
        return given
    if not CIFAR_TOOL.is_file():
        sys.exit(
            f"proof.py: the CIFAR-10 archive tool {CIFAR_TOOL} is missing; this benchmark needs the real "
            "CIFAR-10 images (../shared/data/cifar10-jpg.tar.gz) or --data-root pointing at an ImageFolder "
            "root with train/ and test/"
        )
    done = subprocess.run(["bash", str(CIFAR_TOOL)], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"proof.py: {CIFAR_TOOL} failed: {done.stderr.strip()}")
    return Path(done.stdout.strip())


def load_proof_spec(name: str, args: argparse.Namespace, root: Path):
    from splicer.spec import load_spec
    from splicer.training.overrides import apply_overrides

    overrides = [f"data.root={root}", *args.set]
    if args.validation:
        overrides.append(f"data.val_split={VALIDATION_IMAGES}")
    spec = load_spec(SPECS / name)
    if args.epochs is not None:
        overrides += scaled_schedule(spec.train.epochs, spec.train.milestones, args.epochs)
    return apply_overrides(spec, assignments=overrides)


def scaled_schedule(epochs: int, milestones: list[int], new_epochs: int) -> list[str]:
    """``new_epochs`` with the milestones at the same fractions of training as in the spec."""
    scaled = sorted({max(1, round(m * new_epochs / epochs)) for m in milestones})
    return [f"train.epochs={new_epochs}", f"train.milestones={scaled}"]


def summaries(report: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Every run's summary.json, by run kind, one per seed."""
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for runs in report["runs"].values():
        for kind, folder in runs.items():
            by_kind.setdefault(kind, []).append(json.loads((Path(folder) / "summary.json").read_text()))
    return by_kind


def pipeline_rate(spec) -> float:
    """Training images per second of the data pipeline alone, on the spec's device."""
    from splicer.data import build_data, measure_pipeline_throughput
    from splicer.training.distributed import Distributed
    from splicer.training.engine import Runtime

    runtime = Runtime.for_spec(spec, Distributed.from_env())
    data = build_data(spec.data, spec.input_size, spec.num_classes, spec.train.batch_size, runtime.device, 0)
    return measure_pipeline_throughput(data, batches=50)


def timing_table(report: dict[str, Any], pipeline: float) -> tuple[list[str], dict[str, Any]]:
    runs = summaries(report)

    def mean(kind: str, key: str) -> float:
        return statistics.fmean(s[key] for s in runs[kind])

    numbers = {
        kind: {
            "wall_seconds": mean(kind, "wall_seconds"),
            "step_seconds": mean(kind, "step_seconds_median"),
            "img_per_s": mean(kind, "img_per_s_median"),
        }
        for kind in runs
    }
    sftn_step = numbers["sftn"]["step_seconds"] / numbers["standard"]["step_seconds"]
    slowest_model = min(n["img_per_s"] for n in numbers.values())
    lines = [
        "| Run | Wall time (s, mean over seeds) | Step time (ms, median) | Model img/s |",
        "|:--|--:|--:|--:|",
    ]
    for kind, n in numbers.items():
        lines.append(f"| {kind} | {n['wall_seconds']:.0f} | {1000 * n['step_seconds']:.1f} | {n['img_per_s']:.0f} |")
    lines += [
        "",
        f"- SFTN step time relative to the standard teacher's: **{sftn_step:.2f}x**",
        f"- Data pipeline alone: **{pipeline:.0f} img/s**, {pipeline / slowest_model:.0f}x the slowest run's model "
        f"({slowest_model:.0f} img/s): loading is not the bottleneck"
        if pipeline > slowest_model
        else f"- Data pipeline alone: **{pipeline:.0f} img/s**, slower than the slowest model ({slowest_model:.0f} img/s)",
    ]
    return lines, {"runs": numbers, "sftn_step_relative": sftn_step, "pipeline_img_per_s": pipeline}


def probe(args: argparse.Namespace, root: Path, methods: list[str], seeds: list[int], name: str) -> float:
    """Seconds that one epoch of every run of the proof takes, summed (from the runs' own timings)."""
    from splicer.training.experiment import run_experiment

    probe_args = argparse.Namespace(**{**vars(args), "epochs": 1})
    seconds = 0.0
    for spec_file in CONFIGS[args.config]:
        spec = load_proof_spec(spec_file, probe_args, root)
        pipeline_rate(spec)  # decode and cache the images first: that is not training time
        report = run_experiment(
            spec, methods, seeds, out=args.runs / spec.name / f"{name}_probe", resume=True, quiet=True
        )
        seconds += sum(s["wall_seconds"] for runs in summaries(report).values() for s in runs)
    return seconds


def portable_report(report: dict[str, Any]) -> dict[str, Any]:
    """The experiment report with its folders relative to the repository, as results are stored."""
    runs = {
        seed: {kind: repo_relative(folder) for kind, folder in kinds.items()} for seed, kinds in report["runs"].items()
    }
    return {**report, "folder": repo_relative(report["folder"]), "runs": runs}


def stored_seconds(results: dict[str, Any]) -> float:
    """Wall seconds of every run in the proof's tables, from the runs' own summaries."""
    return sum(
        n["wall_seconds"] * len(pair["report"]["seeds"])
        for pair in results["pairs"].values()
        for n in pair["timing"]["runs"].values()
    )


def machine() -> str:
    import torch

    if torch.cuda.is_available():
        processes = int(os.environ.get("WORLD_SIZE", "1"))
        gpus = f"{processes} x " if processes > 1 else ""
        return f"GPU {gpus}{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"CPU only, {os.cpu_count()} cores ({platform.processor() or platform.machine()}), torch {torch.__version__}"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from splicer.errors import SplicerError
    from splicer.training.experiment import render_markdown, run_experiment

    root = cifar10_root(args.data_root)
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    split = "val" if args.validation else "test"
    name = f"proof_{args.config}{'_val' if args.validation else ''}{'_' + args.tag if args.tag else ''}"
    command = portable_command("benchmarks/proof.py", argv if argv is not None else sys.argv[1:])
    commit = git_commit()
    sections = [
        f"# Proof ({args.config}): students from an SFTN vs from a standard teacher, real CIFAR-10 ({split} split)",
        "",
        f"Command: `{command}`  ",
        f"Commit: {commit}  ",
        f"Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {machine()}",
        "",
    ]
    results: dict[str, Any] = {
        "command": command, "commit": commit, "machine": machine(), "split": split, "pairs": {}
    }
    try:
        if args.fit_minutes is not None:
            if args.epochs is not None:
                sys.exit("proof.py: give --epochs or --fit-minutes, not both")
            probe_seconds = probe(args, root, methods, seeds, name)
            args.epochs = max(1, math.floor(60 * args.fit_minutes / probe_seconds))
            note = (
                f"Schedule sized by `--fit-minutes {args.fit_minutes:g}`: one epoch of every run took "
                f"{probe_seconds:.1f} s in all (a probe, build and first-epoch warm-up included), so "
                f"**{args.epochs} epochs** (rerun exactly with `--epochs {args.epochs}`)."
            )
            print(note, flush=True)
            sections += [note, ""]
            results["fit"] = {"minutes": args.fit_minutes, "probe_seconds": probe_seconds, "epochs": args.epochs}
        for spec_file in CONFIGS[args.config]:
            spec = load_proof_spec(spec_file, args, root)
            out = args.runs / spec.name / name
            report = run_experiment(spec, methods, seeds, out=out, resume=True, quiet=args.quiet)
            lines, timing = timing_table(report, pipeline_rate(spec))
            report = portable_report(report)
            body = render_markdown(report).replace("# ", "## ", 1)
            sections += [body, "### Time", "", *lines, ""]
            results["pairs"][spec.name] = {"report": report, "timing": timing}
    except SplicerError as exc:
        sys.exit(f"proof.py: {exc}")
    from splicer.training.distributed import Distributed

    if not Distributed.from_env().is_main:  # under torchrun (gpu_proof.sh --nproc N) rank 0 writes the tables
        return
    total = stored_seconds(results)
    sections += [f"Training and evaluation time of every run together: **{total / 60:.1f} min**.", ""]
    results["total_run_seconds"] = total
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.md").write_text("\n".join(sections))
    (args.out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    print("\n".join(sections))
    print(f"wrote {args.out / (name + '.md')} and .json")


if __name__ == "__main__":
    main()
