"""Prove it on real images: students distilled from an SFTN vs from a standard teacher.

Drives splicer's own spec, data pipeline and trainer (``splicer run``) on the real CIFAR-10
in ``../shared/data`` and stores, per configuration, a markdown and a JSON table in
``benchmarks/results/``: teacher accuracy (standard, SFTN), student accuracy (alone, by KD
from each), the paper's table-8 similarity (KL, CKA), wall time per stage, the SFTN step
time relative to the standard teacher's, the data pipeline's img/s relative to the model's, and
the teachers' training and held-out accuracy per epoch (table, JSON and an SVG figure), and
with two SFTNs (issue 26) their paired differences to the standard teacher and to each other.

    python benchmarks/proof.py --config cpu --seeds 0,1,2          # about 25 min a seed on 2 cores
    python benchmarks/proof.py --config cpu --validation --seeds 0 # choose settings on a val split
    python benchmarks/proof.py --config cpu-overfit --seeds 0,1,2  # 150 epochs on 5,000 images: about an hour a seed
    python benchmarks/proof.py --config gpu --seeds 0 --fit-minutes 9   # both paper pairs, sized to 9 min
    python benchmarks/proof.py --config cpu-overfit-finetune --seeds 0,1,2 --methods kd,dkd,sskd,crd,fitnets
        # issue 26: standard / full SFTN / SFTN fine-tuned from the standard teacher (--sftn-from scratch,standard)
    python benchmarks/proof.py --config cpu-overfit-finetune --seeds 1 --methods kd --tag seed1
    python benchmarks/proof.py --config cpu-overfit-finetune \
        --combine benchmarks/results/proof_cpu_overfit_finetune_seed0.json,...seed1.json
        # seeds run apart (one per session or machine), then one table over all of them

Finished runs are reused (the experiment folder is resumed), so an interrupted proof
continues where it stopped and a finished one only re-writes its tables. ``--combine`` trains
nothing: it rebuilds the tables from stored results of single seeds (each keeps every run's
score, time and similarity per seed, and the teachers' curves), as one run over all the seeds.
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
    "cpu-overfit": ["proof_cpu_overfit.yaml"],
    "cpu-overfit-finetune": ["proof_cpu_overfit_finetune.yaml"],
    "gpu": ["proof_gpu_resnet32x4_resnet8x4.yaml", "proof_gpu_wrn40_2_wrn16_2.yaml"],
}
VALIDATION_IMAGES = 5000
SFTN_FROM = {"cpu-overfit-finetune": "scratch,standard"}
"""How each configuration's SFTN teachers start by default (``splicer run --sftn-from``): else scratch."""
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
    parser.add_argument(
        "--sftn-from",
        help="how the SFTN teachers start, as splicer run --sftn-from: scratch, standard or scratch,standard "
        "(default: scratch,standard for cpu-overfit-finetune, else scratch)",
    )
    parser.add_argument("--tag", default="", help="suffix for the run folder and result files (for variants)")
    parser.add_argument("--data-root", type=Path, help="CIFAR-10 ImageFolder root (default: unpack ../shared/data)")
    parser.add_argument("--runs", type=Path, default=REPO / "runs", help="where run folders go (default: runs/)")
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help="folder for the result tables (default: benchmarks/results/)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--combine",
        metavar="JSON,JSON",
        help="train nothing: one table from the stored results (JSON) of proofs of the same configuration, "
        "methods and schedule run apart on different seeds (each seed once); --seeds and --methods are "
        "taken from them",
    )
    return parser.parse_args(argv)


def started(folder: Path) -> bool:
    """Whether an experiment folder holds work to continue: `splicer run --resume` refuses a missing or empty one."""
    return folder.is_dir() and any(folder.iterdir())


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


def load_proof_spec(name: str, args: argparse.Namespace, root: Path | None):
    """The configuration's spec with the command's settings; ``root``: where the images are (None: as the
    spec says, for --combine, which reads no image)."""
    from splicer.spec import load_spec
    from splicer.training.overrides import apply_overrides

    overrides = [*([f"data.root={root}"] if root is not None else []), *args.set]
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
    """Every finished run's summary (as the report keeps it), by run kind, one per seed."""
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for runs in report["seed_results"].values():
        for kind, summary in runs.items():
            if "error" not in summary:
                by_kind.setdefault(kind, []).append(summary)
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
    sftn = "sftn" if "sftn" in numbers else "sftn-finetuned"
    sftn_step = numbers[sftn]["step_seconds"] / numbers["standard"]["step_seconds"]
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


CURVE_ROWS = 16  # the markdown table shows at most this many evaluated epochs (the JSON keeps all)


def teacher_curves(report: dict[str, Any]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Per teacher kind and seed, every epoch's training accuracy and (where evaluated) eval top-1.

    Training accuracy is the running accuracy over the epoch's augmented batches in train mode,
    as the trainer logs it; eval top-1 is on the held-out split (test, or val with --validation).
    """
    from splicer.training.logging import read_metrics
    from splicer.training.runs import RunDir

    teachers = report.get("teachers", ["standard", "sftn"])
    curves: dict[str, dict[str, list[dict[str, Any]]]] = {kind: {} for kind in teachers}
    for seed, runs in report["runs"].items():
        for kind in teachers:
            records = read_metrics(RunDir(Path(runs[kind])).metrics)
            curves[kind][str(seed)] = [
                {"epoch": r["epoch"], "train_acc": r["train_acc"], "eval_top1": r.get("eval_top1")} for r in records
            ]
    return curves


def curve_table(curves: dict[str, dict[str, list[dict[str, Any]]]], split: str) -> list[str]:
    """Markdown rows: at evaluated epochs (thinned to CURVE_ROWS, the last always kept), each
    teacher's training and eval accuracy, mean over seeds, and its gap (train - eval)."""
    from splicer.experiments.experiment import TEACHER_TITLES

    def at(kind: str, epoch: int, key: str) -> float:
        return statistics.fmean(
            r[key] for records in curves[kind].values() for r in records if r["epoch"] == epoch
        )

    first = next(iter(curves["standard"].values()))
    evaluated = [r["epoch"] for r in first if r["eval_top1"] is not None]
    step = max(1, math.ceil(len(evaluated) / CURVE_ROWS))
    shown = evaluated[::step] + ([evaluated[-1]] if (len(evaluated) - 1) % step else [])
    titles = [TEACHER_TITLES[kind] for kind in curves]
    lines = [
        "| Epoch | " + " | ".join(f"{t} train | {t} {split} | {t} gap" for t in titles) + " |",
        "|--:|" + "--:|--:|--:|" * len(titles),
    ]
    for epoch in shown:
        cells = []
        for kind in curves:
            scored = [r for records in curves[kind].values() for r in records if r["epoch"] == epoch]
            if not scored or any(r["eval_top1"] is None for r in scored):  # a shorter (fine-tuning) run
                cells += ["", "", ""]
                continue
            train, held_out = at(kind, epoch, "train_acc"), at(kind, epoch, "eval_top1")
            cells += [f"{train:.2f}", f"{held_out:.2f}", f"{train - held_out:+.2f}"]
        lines.append(f"| {epoch} | " + " | ".join(cells) + " |")
    return lines


PAIRS = (("sftn", "standard"), ("sftn-finetuned", "standard"), ("sftn-finetuned", "sftn"))
"""The three comparisons of issue 26: each SFTN against the standard teacher, and fine-tuned against full."""


def paired_differences(report: dict[str, Any]) -> dict[str, dict[str, Any]] | None:
    """Seed by seed, each comparison of :data:`PAIRS` for the teachers and every method finished with all
    three, and their mean over those methods per seed: the spread a difference must beat is the std of
    these per-seed values. None unless the report has both SFTNs."""
    from splicer.experiments.experiment import seed_stats

    teachers = report.get("teachers", [])
    if not all(kind in teachers for pair in PAIRS for kind in pair):
        return None

    def differences(row: dict[str, Any]) -> dict[str, list[float]]:
        return {
            f"{a} - {b}": [x - y for x, y in zip(row[a]["values"], row[b]["values"], strict=True)] for a, b in PAIRS
        }

    rows = {"teacher": differences(report["teacher"])}
    methods = [m for m, row in report["methods"].items() if all(row[kind] is not None for kind in teachers)]
    rows.update({m: differences(report["methods"][m]) for m in methods})
    if methods:
        rows["mean over methods"] = {
            key: [statistics.fmean(seeds) for seeds in zip(*(rows[m][key] for m in methods))] for key in rows["teacher"]
        }
    return {name: {key: seed_stats(values) for key, values in row.items()} for name, row in rows.items()}


def paired_table(paired: dict[str, dict[str, Any]], seeds: list[int]) -> list[str]:
    """Markdown: per row, each comparison as mean ± std over the seeds, then the per-seed values."""
    from splicer.experiments.experiment import method_title

    short = {"standard": "standard", "sftn": "full SFTN", "sftn-finetuned": "fine-tuned SFTN"}

    def title(key: str) -> str:
        a, b = key.split(" - ")
        return f"{short[a]} - {short[b]}"

    def cell(stats: dict[str, Any]) -> str:
        per_seed = ", ".join(f"{v:+.2f}" for v in stats["values"])
        return f"{stats['mean']:+.2f} ± {stats['std']:.2f} ({per_seed})" if len(seeds) > 1 else f"{stats['mean']:+.2f}"

    keys = [f"{a} - {b}" for a, b in PAIRS]
    names = {"teacher": "Teacher", "mean over methods": "Mean over methods"}
    lines = [
        f"| | {' | '.join(title(k) for k in keys)} |",
        "|:--|" + "--:|" * len(keys),
    ]
    for name, row in paired.items():
        lines.append(f"| {names.get(name) or method_title(name)} | {' | '.join(cell(row[k]) for k in keys)} |")
    return lines


def plot_teacher_curves(pairs: dict[str, Any], split: str, path: Path, commit: str) -> None:
    """One row per pair: training and eval accuracy per epoch, a thin line per seed, standard vs SFTN.
    SVG (text, with the commit in its metadata) so that the stored figure is checked like the tables."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(pairs), 2, figsize=(11, 3.8 * len(pairs)), squeeze=False)
    colours = {"standard": "tab:blue", "sftn": "tab:orange", "sftn-finetuned": "tab:green"}
    for row, (pair, result) in enumerate(pairs.items()):
        for kind, by_seed in result["curves"].items():
            for index, records in enumerate(by_seed.values()):
                label = kind if index == 0 else None
                axes[row][0].plot([r["epoch"] for r in records], [r["train_acc"] for r in records],
                                  color=colours[kind], linewidth=1, label=label)
                scored = [r for r in records if r["eval_top1"] is not None]
                axes[row][1].plot([r["epoch"] for r in scored], [r["eval_top1"] for r in scored],
                                  color=colours[kind], linewidth=1, label=label)
        axes[row][0].set(title=f"{pair}: teacher training accuracy (%)", xlabel="epoch")
        axes[row][1].set(title=f"{pair}: teacher {split} top-1 (%)", xlabel="epoch")
        for ax in axes[row]:
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, format="svg", metadata={"Description": f"commit {commit}", "Date": None})
    plt.close(fig)


def probe(args: argparse.Namespace, root: Path, methods: list[str], seeds: list[int], name: str) -> float:
    """Seconds that one epoch of every run of the proof takes, summed (from the runs' own timings)."""
    from splicer.experiments.experiment import run_experiment

    probe_args = argparse.Namespace(**{**vars(args), "epochs": 1})
    seconds = 0.0
    for spec_file in CONFIGS[args.config]:
        spec = load_proof_spec(spec_file, probe_args, root)
        pipeline_rate(spec)  # decode and cache the images first: that is not training time
        report = run_experiment(
            spec, methods, seeds, out=args.runs / spec.name / f"{name}_probe",
            resume=started(args.runs / spec.name / f"{name}_probe"), quiet=True,
            sftn_from=sftn_from(args),
        )
        seconds += sum(s["wall_seconds"] for runs in summaries(report).values() for s in runs)
    return seconds


def sftn_from(args: argparse.Namespace) -> tuple[str, ...]:
    text = args.sftn_from or SFTN_FROM.get(args.config, "scratch")
    return tuple(part.strip() for part in text.split(",") if part.strip())


def portable_report(report: dict[str, Any]) -> dict[str, Any]:
    """The experiment report with its folders relative to the repository, as results are stored."""
    runs = {
        seed: {kind: repo_relative(folder) for kind, folder in kinds.items()} for seed, kinds in report["runs"].items()
    }
    seed_results = {
        seed: {kind: {**summary, "run": repo_relative(summary["run"])} for kind, summary in kinds.items()}
        for seed, kinds in report["seed_results"].items()
    }
    return {**report, "folder": repo_relative(report["folder"]), "runs": runs, "seed_results": seed_results}


def combined_pair(spec, parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One pair's report, curves and timing over the seeds of ``parts`` (stored proof results run apart)."""
    from splicer.experiments.experiment import merge_reports

    stored = [part["pairs"].get(spec.name) for part in parts]
    if any(pair is None for pair in stored):
        sys.exit(f"proof.py: --combine: a stored result has no {spec.name}; combine results of the same --config")
    report = merge_reports(spec, [pair["report"] for pair in stored])
    report["folder"] = ", ".join(pair["report"]["folder"] for pair in stored)
    curves: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for pair in stored:
        for kind, by_seed in pair["curves"].items():
            curves.setdefault(kind, {}).update(by_seed)
    pipeline = statistics.fmean(pair["timing"]["pipeline_img_per_s"] for pair in stored)
    return {"report": report, "curves": curves, "pipeline": pipeline}


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


def load_stored(path: Path) -> dict[str, Any]:
    """A proof's stored results (JSON), for --combine; says which file when it cannot be read."""
    try:
        stored = json.loads(path.read_text())
        return {**stored, "file": repo_relative(path)}
    except (OSError, json.JSONDecodeError) as exc:
        sys.exit(f"proof.py: --combine: cannot read {path}: {exc}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from splicer.errors import SplicerError
    from splicer.experiments.experiment import render_markdown, run_experiment

    parts = [load_stored(Path(path)) for path in args.combine.split(",")] if args.combine else []
    if parts and args.fit_minutes is not None:
        sys.exit("proof.py: --combine trains nothing: give the --epochs and --set its parts ran with, not --fit-minutes")
    root = None if parts else cifar10_root(args.data_root)
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    split = "val" if args.validation else "test"
    name = f"proof_{args.config.replace('-', '_')}{'_val' if args.validation else ''}{'_' + args.tag if args.tag else ''}"
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
    if parts:
        if any(part["split"] != split for part in parts):
            sys.exit(
                f"proof.py: --combine: every part must be scored on the {split} split, as this command is "
                f"({'with' if args.validation else 'without'} --validation); got {', '.join(p['split'] for p in parts)}"
            )
        results["parts"] = [{key: part[key] for key in ("file", "commit", "command", "machine")} for part in parts]
        sections[4:4] = [
            "Combined from proofs run apart (each trained its seeds; this command trained nothing):",
            "",
            *[f"- `{part['file']}`: `{part['command']}`, commit {part['commit']}, {part['machine']}" for part in parts],
            "",
        ]
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
            if parts:
                pair = combined_pair(spec, parts)
                report, curves, pipeline = pair["report"], pair["curves"], pair["pipeline"]
            else:
                out = args.runs / spec.name / name
                report = run_experiment(
                    spec, methods, seeds, out=out, resume=started(out), quiet=args.quiet, sftn_from=sftn_from(args)
                )
                curves, pipeline = teacher_curves(report), pipeline_rate(spec)
                report = portable_report(report)
            lines, timing = timing_table(report, pipeline)
            body = render_markdown(report).replace("# ", "## ", 1)
            fit = [
                f"### The teachers' fit: training vs {split} accuracy (%), mean over seeds",
                "",
                "Training accuracy: the running accuracy over each epoch's augmented batches in train mode. "
                f"Every epoch's values, per seed, are in the JSON and in `{name}_curves.svg`.",
                "",
                *curve_table(curves, split),
                "",
            ]
            sections += [body, *fit, "### Time", "", *lines, ""]
            results["pairs"][spec.name] = {"report": report, "timing": timing, "curves": curves}
            paired = paired_differences(report)
            if paired is not None:
                sections += [
                    "### Paired differences: each SFTN against the standard teacher, fine-tuned against full",
                    "",
                    f"Top-1 differences ({split} split), "
                    + (
                        f"mean ± std over seeds {', '.join(map(str, report['seeds']))} of the per-seed differences, "
                        "then each seed's. Mean over methods: the methods' mean difference per seed, then over seeds."
                        if len(report["seeds"]) > 1
                        else f"seed {report['seeds'][0]}. Mean over methods: the methods' mean difference."
                    ),
                    "",
                    *paired_table(paired, report["seeds"]),
                    "",
                ]
                results["pairs"][spec.name]["paired_differences"] = paired
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
    plot_teacher_curves(results["pairs"], split, args.out / f"{name}_curves.svg", commit)
    print("\n".join(sections))
    print(f"wrote {args.out / (name + '.md')} and .json")


if __name__ == "__main__":
    main()
