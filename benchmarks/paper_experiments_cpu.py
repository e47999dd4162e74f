"""The paper's other experiments, small, on real CIFAR-10 (CPU proof pair, validation split,
one seed): table 4 (DML, KDCL-Naive, RCO one-stage EEI next to KD from the standard teacher
and from the SFTN), table 7 (linear probe), table 6 (a two-value sweep of loss.branch_kl) and
table 9 (a branch student wider than the distilled student).

Every step is one `splicer` command, run as a subprocess exactly as printed and stored; the
tables are read from the commands' report.json files. Finished runs are reused, so an
interrupted benchmark continues where it stopped.

    python benchmarks/paper_experiments_cpu.py                     # about 40 min on 2 busy cores
    python benchmarks/paper_experiments_cpu.py --epochs 10 --train-subset 45000   # the full proof schedule

The probe data: no second real data set is on this machine (the paper's STL10 and
TinyImageNet are not), so the probe fits and scores its linear classifier on the CIFAR-10
*test* images (8000 to fit, 2000 to score), which no network here trained or was evaluated
on: a linear evaluation of the frozen features on unseen images, not a transfer across data sets.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
from provenance import provenance  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
CIFAR_TOOL = REPO.parent / "shared" / "tools" / "cifar10-root"
WORK = Path("runs") / "paper_experiments_cpu"  # relative to the repository
CLI = ["python", "-c", "from splicer.cli.main import app; app()"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4, help="epochs of every run (default 4)")
    parser.add_argument("--milestones", default="3", help="LR milestones, comma-separated (default 3)")
    parser.add_argument("--train-subset", type=int, default=4000, help="training images (default 4000)")
    parser.add_argument("--val", type=int, default=2000, help="validation images carved from train (default 2000)")
    parser.add_argument("--anchors", type=int, default=4, help="RCO anchors (default 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", default="baselines,branch,sweep", help="which steps (default: all)")
    return parser.parse_args(argv)


def run(command: list[str], log: list[dict[str, Any]], root: str) -> None:
    """Run one splicer command (the cifar root substituted), record it with its wall time."""
    shown = shlex.join(command).replace(root, "$(../shared/tools/cifar10-root)")
    actual = [sys.executable, *command[1:]]
    started = time.time()
    print(f"$ {shown}", flush=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(actual, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise SystemExit(f"step failed: {shown}")
    log.append({"command": "PYTHONPATH=. OMP_NUM_THREADS=1 " + shown, "wall_seconds": round(time.time() - started, 1)})


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(1)
    root = subprocess.run([str(CIFAR_TOOL)], capture_output=True, text=True, check=True).stdout.strip()
    steps = args.steps.split(",")
    common = [
        "--set", f"data.root={root}",
        "--set", f"data.val_split={args.val}",
        "--set", f"data.train_subset={args.train_subset}",
        "--set", f"train.epochs={args.epochs}",
        "--set", f"train.milestones=[{args.milestones}]",
        "--set", f"train.seed={args.seed}",
        "-q",
    ]  # fmt: skip
    (REPO / WORK).mkdir(parents=True, exist_ok=True)
    probe_root = REPO / WORK / "probe-data"
    (probe_root).mkdir(exist_ok=True)
    if not (probe_root / "train").exists():
        (probe_root / "train").symlink_to(Path(root) / "test")
    probe_file = WORK / "probe_cifar10_test.yaml"
    (REPO / probe_file).write_text(
        "# CIFAR-10 test images as the probe's data: 8000 fit the linear classifier, 2000 score it\n"
        f"num_classes: 10\ndata: {{dataset: imagefolder, root: {WORK / 'probe-data'}, resize: 16, val_split: 2000}}\n"
    )
    log: list[dict[str, Any]] = []
    result: dict[str, Any] = {"settings": vars(args), "steps": log}
    if "baselines" in steps:
        out = WORK / "table4"
        cmd = [*CLI, "run", "benchmarks/specs/proof_cpu.yaml", "--methods", "kd,dml,kdcl,rco", "--anchors"]
        cmd += [str(args.anchors), "--probe", str(probe_file), "--probe-device", "cpu", "--out", str(out), "--resume"]
        run([*cmd, *common], log, root)
        result["table4"] = json.loads((REPO / out / "report.json").read_text())
        store(result)
    if "branch" in steps:
        out = WORK / "branch"
        spec_file = "benchmarks/specs/proof_cpu_branch.yaml"
        sftn, student = out / "sftn", out / "kd-from-sftn"
        if not (REPO / sftn / "summary.json").is_file():
            resume = ["--resume"] if (REPO / sftn / "last.pt").is_file() else []
            run([*CLI, "train", spec_file, "--out", str(sftn), *resume, *common], log, root)
        if not (REPO / student / "summary.json").is_file():
            resume = ["--resume"] if (REPO / student / "last.pt").is_file() else []
            cmd = [*CLI, "distill", spec_file, "--teacher", str(sftn), "--method", "kd", "--out", str(student)]
            run([*cmd, *resume, *common], log, root)
        result["branch"] = {
            name: json.loads((REPO / folder / "summary.json").read_text())
            for name, folder in (("sftn", sftn), ("kd-from-sftn", student))
        }
        store(result)
    if "sweep" in steps:
        out = WORK / "sweep"
        cmd = [*CLI, "run", "benchmarks/specs/proof_cpu.yaml", "--sweep", "loss.branch_kl=1,3", "--out", str(out)]
        run([*cmd, *common], log, root)
        result["sweep"] = json.loads((REPO / out / "report.json").read_text())
        store(result)


def _relative(value: Any) -> Any:
    """Run paths as stored in reports, relative to the repository."""
    if isinstance(value, dict):
        return {k: _relative(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_relative(v) for v in value]
    if isinstance(value, str) and value.startswith(str(REPO) + "/"):
        return value[len(str(REPO)) + 1 :]
    return value


def store(result: dict[str, Any]) -> None:
    """benchmarks/results/paper_experiments_cpu.{md,json}, rewritten after every step.

    Steps run by earlier invocations with the same settings are kept (steps can run as separate
    processes); a command's wall time is the longest recorded, the one that trained (a rerun
    reuses the finished runs and only re-reads their reports).
    """
    result = _relative({**result, "provenance": provenance(None, 1)})
    stored = RESULTS / "paper_experiments_cpu.json"
    if stored.is_file():
        previous = json.loads(stored.read_text())
        if previous.get("settings", {}) | {"steps": None} == result["settings"] | {"steps": None}:
            times: dict[str, float] = {}
            for step in [*previous["steps"], *result["steps"]]:
                times[step["command"]] = max(times.get(step["command"], 0.0), step["wall_seconds"])
            steps = [{"command": command, "wall_seconds": seconds} for command, seconds in times.items()]
            result = {**previous, **result, "steps": steps}
    lines = render(result)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "paper_experiments_cpu.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "paper_experiments_cpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def render(result: dict[str, Any]) -> list[str]:
    s = result["settings"]
    p = result["provenance"]
    lines = [
        "# The paper's other experiments on real CIFAR-10 (CPU proof pair, small)",
        "",
        f"Command: `{p['command']}`  ",
        f"Date: {p['date']}; {p['machine']}; torch {p['torch']}; load average at end {p['load average at end (1/5/15 min)']}",
        "",
        f"Pair: cifar:resnet20 teacher, narrow cifar:resnet8 student (benchmarks/specs/proof_cpu.yaml), CIFAR-10 "
        f"average-pooled to 16x16, {s['train_subset']} training images, final top-1 (%) on a {s['val']}-image "
        f"validation split carved from the training set, {s['epochs']} epochs (LR milestones {s['milestones']}), "
        f"seed {s['seed']}. One seed and a short schedule: differences of a point or two are within noise.",
        "",
    ]
    if "table4" in result:
        r = result["table4"]
        b = r["baselines"]
        lines += [
            "## Table 4: online and curriculum baselines",
            "",
            f"Standard teacher {r['teacher']['standard']['mean']:.2f}, SFTN teacher {r['teacher']['sftn']['mean']:.2f}; "
            f"student w/o KD {b['student_alone']['mean']:.2f}. Standard / SFTN: KD from that pretrained teacher. "
            f"RCO: KD along {s['anchors']} anchors of the standard teacher (one-stage EEI).",
            "",
            "| Method | Student | Δ vs w/o KD |",
            "|:--|--:|--:|",
        ]
        lines += [f"| {t} | {row['mean']:.2f} | {row['delta']:+.2f} |" for t, row in b["rows"].items()]
        t = r["transfer"]["rows"]
        lines += [
            "",
            "## Table 7 layout: linear probe of the frozen networks (CIFAR-10 test images, see below)",
            "",
            "| Network | Standard | SFTN | Δ |",
            "|:--|--:|--:|--:|",
            f"| Teacher | {t['standard']['mean']:.2f} | {t['sftn']['mean']:.2f} | {t['sftn']['mean'] - t['standard']['mean']:+.2f} |",
            f"| Student w/o KD | {t['student']['mean']:.2f} | | |",
            f"| KD | {t['kd-from-standard']['mean']:.2f} | {t['kd-from-sftn']['mean']:.2f} | "
            f"{t['kd-from-sftn']['mean'] - t['kd-from-standard']['mean']:+.2f} |",
            "",
            "The probe fits a linear classifier on 8000 CIFAR-10 test images and scores it on the other 2000; no "
            "network trained or was evaluated on them. No second real data set is on this machine, so this is a "
            "linear evaluation on unseen images, not the paper's transfer to STL10/TinyImageNet.",
            "",
        ]
    if "branch" in result:
        r = result["branch"]
        base = result.get("table4")
        lines += [
            "## Table 9 question: a branch student wider than the distilled student",
            "",
            "Stage 2 distils the same narrow resnet8 (8/8/16/32) in both rows; only the SFTN's branches differ "
            "(benchmarks/specs/proof_cpu_branch.yaml).",
            "",
            "| SFTN branches | SFTN teacher | Student by KD from the SFTN |",
            "|:--|--:|--:|",
        ]
        if base:
            lines.append(
                f"| resnet8 8/8/16/32 (= the student) | {base['teacher']['sftn']['mean']:.2f} | "
                f"{base['methods']['kd']['sftn']['mean']:.2f} |"
            )
        lines += [
            f"| resnet8 16/16/32/64 (branch_student) | {r['sftn']['final']['top1']:.2f} | "
            f"{r['kd-from-sftn']['final']['top1']:.2f} |",
            "",
        ]
    if "sweep" in result:
        r = result["sweep"]
        lines += ["## Table 6 layout: sweep of loss.branch_kl", "", "| Setting | Teacher | Student by KD |", "|:--|--:|--:|"]
        for row in r["cells"]:
            label = ", ".join(f"{k}={v}" for k, v in row["assignment"].items())
            lines.append(f"| SFTN, {label} | {row['sftn']['mean']:.2f} | {row['students']['kd']['mean']:.2f} |")
        for ref in r["references"].values():
            lines.append(f"| Standard | {ref['standard']['mean']:.2f} | {ref['students']['kd']['mean']:.2f} |")
        lines.append("")
    lines += ["## Commands (from the repository root)", ""]
    lines += [f"- `{step['command']}` ({step['wall_seconds'] / 60:.1f} min)" for step in result["steps"]]
    return lines


if __name__ == "__main__":
    main()
