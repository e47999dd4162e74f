"""The proof benchmark's own plumbing (its real runs take minutes to hours: see benchmarks/)."""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
from types import ModuleType

import pytest
import torch

import splicer
from splicer.spec import load_spec
from splicer.training.distributed import Distributed
from splicer.training.engine import Runtime
from splicer.training.overrides import apply_overrides
from splicer.training.stage1 import train_teacher
from splicer.training.stage2 import distill
from tests.conftest import REPO


def benchmark_module(name: str) -> ModuleType:
    """A script of benchmarks/ imported as a module (they import each other by file name)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


PROOF_SPECS = sorted((REPO / "benchmarks" / "specs").glob("proof_*.yaml"))


@pytest.mark.parametrize("path", PROOF_SPECS, ids=[p.stem for p in PROOF_SPECS])
def test_proof_specs_compile(path):
    result = splicer.compile_spec(path, verify=False)
    assert result.spec.num_classes == 10
    assert [p.kind for p in result.transforms] == ["equal"] * (len(result.transforms))


def test_proof_help_and_missing_data(tmp_path):
    script = REPO / "benchmarks" / "proof.py"
    shown = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, check=True)
    assert "--validation" in shown.stdout and "--config" in shown.stdout
    missing = subprocess.run(
        [
            sys.executable,
            str(script),
            "--data-root",
            str(tmp_path / "nowhere"),
            "--seeds",
            "0",
            "--runs",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
    )
    assert missing.returncode != 0
    assert "proof.py:" in missing.stderr and "nowhere" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_bf16_is_the_default_only_on_cuda_channels_last_on_both_and_either_can_be_forced():
    dist = Distributed.from_env()
    plain = Runtime.create("cpu", dist)
    assert (plain.bf16, plain.channels_last) == (False, True)
    contiguous = Runtime.create("cpu", dist, memory_format="contiguous")
    assert not contiguous.channels_last
    forced = Runtime.create("cpu", dist, precision="bf16", memory_format="channels_last")
    conv = forced.place(torch.nn.Conv2d(3, 4, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and conv.weight.dtype == torch.float32
    with forced.autocast():
        out = conv(forced.inputs(torch.randn(2, 3, 8, 8)))
    assert out.dtype == torch.bfloat16


GPU_SPECS = [p for p in PROOF_SPECS if "gpu" in p.stem]


@pytest.mark.parametrize("path", GPU_SPECS, ids=[p.stem for p in GPU_SPECS])
def test_gpu_configuration_trains_both_stages_with_its_numerics_on_cpu(path, tmp_path):
    """The GPU proof's pairs, bf16 autocast and channels-last, one short epoch on synthetic images."""
    spec = load_spec(path)
    assert spec.train.device == "cuda" and spec.input_size == (3, 32, 32)
    tiny = apply_overrides(
        spec,
        assignments=[
            "train.device=cpu",
            "train.precision=bf16",
            "train.memory_format=channels_last",
            "train.epochs=1",
            "train.milestones=[1]",
            "train.batch_size=8",
            "data.dataset=synthetic",
            "data.synthetic_train=16",
            "data.synthetic_test=16",
        ],
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        teacher = train_teacher(tiny, out=tmp_path / "sftn", quiet=True)
        student = distill(tiny, tmp_path / "sftn", "kd", tmp_path / "kd", quiet=True)
    finally:
        torch.set_num_threads(threads)
    assert teacher["epochs"] == student["epochs"] == 1
    for run, terms in (("sftn", {"teacher_ce", "branch_kl", "branch_ce"}), ("kd", {"ce", "kd"})):
        (record,) = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        assert set(record["terms"]) == terms and math.isfinite(record["loss"]) and record["loss"] > 0
    weights = torch.load(tmp_path / "kd" / "last.pt", weights_only=True)["model"]
    assert all(t.dtype == torch.float32 for t in weights.values() if t.is_floating_point())


def test_epochs_override_keeps_the_milestones_fractions():
    scaled_schedule = benchmark_module("proof").scaled_schedule
    assert scaled_schedule(10, [6, 9], 40) == ["train.epochs=40", "train.milestones=[24, 36]"]
    assert scaled_schedule(15, [9, 13], 1) == ["train.epochs=1", "train.milestones=[1]"]


def test_gpu_proof_script_sizes_the_schedule_and_runs_from_an_archive_alone(tmp_path):
    """benchmarks/gpu_proof.sh as on a bare GPU machine (here the CPU pair on a tiny archive): it
    unpacks the images, trains every run for one epoch, picks the epochs that fit the budget and
    runs the proof with them."""
    from tests.test_data import write_image_folder

    write_image_folder(tmp_path / "cifar10", classes=10, per_class=4, side=16)
    archive = tmp_path / "images.tar.gz"
    subprocess.run(["tar", "-czf", str(archive), "-C", str(tmp_path), "cifar10"], check=True)
    script = REPO / "benchmarks" / "gpu_proof.sh"
    flags = ["--config", "cpu", "--set", "train.batch_size=20", "--set", "train.device=cpu"]
    env = {**os.environ, "PYTHON": sys.executable, "SPLICER_RUNS": str(tmp_path / "runs"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        ["bash", str(script), str(archive), "0.05", str(tmp_path / "results"), "--", *flags],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "cuda False" in done.stdout
    fit = json.loads((tmp_path / "results" / "proof_cpu.json").read_text())["fit"]
    assert fit["minutes"] == 0.05 and fit["epochs"] == max(1, int(3.0 // fit["probe_seconds"]))
    runs = tmp_path / "runs" / "proof_cpu"
    probe_runs = list((runs / "proof_cpu_probe").rglob("summary.json"))
    assert len(probe_runs) == 5 and all(json.loads(p.read_text())["epochs"] == 1 for p in probe_runs)
    for kind in ("standard", "sftn", "student", "kd-from-standard", "kd-from-sftn"):
        assert json.loads((runs / "proof_cpu" / "seed0" / kind / "summary.json").read_text())["epochs"] == fit["epochs"]
    assert f"**{fit['epochs']} epochs**" in (tmp_path / "results" / "proof_cpu.md").read_text()
    missing = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    assert missing.returncode != 0 and "usage: bash benchmarks/gpu_proof.sh ARCHIVE" in missing.stderr


def test_ablation_table_pairs_differences_by_seed_and_schedule(tmp_path, monkeypatch):
    sftn_ablation = benchmark_module("sftn_ablation")
    monkeypatch.setattr(sftn_ablation, "RESULTS", tmp_path)
    monkeypatch.setattr(sftn_ablation, "provenance", lambda argv, threads: {})

    def row(folder: str, stage1: int | None, teacher: float | None, student: float, stage2: int = 10) -> dict:
        return {
            "variant": folder,
            "folder": folder,
            "stage1_epochs": stage1,
            "stage2_epochs": stage2,
            "teacher_top1": teacher,
            "kd_student_top1": student,
        }

    rows = {
        0: [
            row("student-alone", None, None, 50.0),
            row("standard-e40", 40, 70.0, 55.0),
            row("sftn-e40", 40, 60.0, 56.0),
        ],
        1: [
            row("student-alone", None, None, 52.0),
            row("standard-e40", 40, 72.0, 58.0),
            row("sftn-e40", 40, 62.0, 57.0),
        ],
    }
    spec = load_spec(REPO / "benchmarks" / "specs" / "proof_cpu.yaml")
    args = sftn_ablation.argparse.Namespace(seeds="0,1", train_subset=100)
    sftn_ablation.write_table(rows, spec, args, [], "table")
    lines = (tmp_path / "table.md").read_text().splitlines()
    assert "| standard-e40 | 40 | 10 | 71.00 ± 1.41 | 56.50 ± 2.12 |  | +5.50 ± 0.71 |" in lines
    assert "| sftn-e40 | 40 | 10 | 61.00 ± 1.41 | 56.50 ± 0.71 | +0.00 ± 1.41 | +5.50 ± 0.71 |" in lines
    with pytest.raises(SystemExit):
        sftn_ablation.main(["--only", "no-such-variant"])


def test_teacher_curves_table_and_figure_from_the_runs_metrics(tmp_path):
    """The over-fitting proof's curves: every epoch read back per seed, the table at evaluated
    epochs (thinned, the last kept) with means over seeds and the train - eval gap, an SVG
    figure that records its commit."""
    proof = benchmark_module("proof")
    runs = {}
    for seed in (0, 1):
        runs[str(seed)] = {}
        for kind in ("standard", "sftn"):
            folder = tmp_path / f"seed{seed}" / kind
            folder.mkdir(parents=True)
            records = [
                {"epoch": e, "train_acc": 50.0 + e + seed, "eval_top1": (40.0 + e if e % 5 == 0 else None)}
                for e in range(1, 101)
            ]
            (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
            runs[str(seed)][kind] = str(folder)
    curves = proof.teacher_curves({"runs": runs})
    assert len(curves["sftn"]["1"]) == 100 and curves["standard"]["0"][4] == {
        "epoch": 5, "train_acc": 55.0, "eval_top1": 45.0
    }
    lines = proof.curve_table(curves, "test")
    rows = [line.split(" | ") for line in lines[2:]]
    assert [int(r[0].strip("| ")) for r in rows] == [5, 15, 25, 35, 45, 55, 65, 75, 85, 95, 100]
    assert rows[0][1:4] == ["55.50", "45.00", "+10.50"]  # mean train over seeds 0, 1; gap train - test
    svg = tmp_path / "curves.svg"
    proof.plot_teacher_curves({"pair": {"curves": curves}}, "test", svg, "commit-abc")
    assert "commit commit-abc" in svg.read_text() and svg.read_text().lstrip().startswith("<?xml")


def test_seeds_run_apart_combine_into_the_table_of_one_run_over_them(tmp_path):
    """A proof too long for one session runs a seed at a time (--tag seedN); --combine then writes the
    table a single run over all the seeds gives (runs are deterministic on the CPU), training nothing."""
    from tests.test_data import write_image_folder

    proof = benchmark_module("proof")
    write_image_folder(tmp_path / "cifar10", classes=10, per_class=4, side=16)
    results = tmp_path / "results"
    common = ["--config", "cpu", "--epochs", "1", "--set", "train.batch_size=20", "--out", str(results), "--quiet"]
    data = ["--data-root", str(tmp_path / "cifar10"), "--runs", str(tmp_path / "runs")]
    for seeds, tag in (("0", "seed0"), ("1", "seed1"), ("0,1", "joint")):
        proof.main([*common, *data, "--seeds", seeds, "--tag", tag])
    parts = ",".join(str(results / f"proof_cpu_seed{seed}.json") for seed in (0, 1))
    proof.main([*common, "--combine", parts, "--tag", "combined", "--runs", str(tmp_path / "nowhere")])
    assert not (tmp_path / "nowhere").exists()
    joint, combined = (json.loads((results / f"proof_cpu_{tag}.json").read_text()) for tag in ("joint", "combined"))
    joint_report, combined_report = (r["pairs"]["proof_cpu"]["report"] for r in (joint, combined))
    for key in ("seeds", "teacher", "student_alone", "best", "mean_delta", "similarity"):
        assert combined_report[key] == joint_report[key], key
    for kind in ("standard", "sftn", "delta_seeds"):
        assert combined_report["methods"]["kd"][kind] == joint_report["methods"]["kd"][kind], kind
    assert combined["pairs"]["proof_cpu"]["curves"] == joint["pairs"]["proof_cpu"]["curves"]
    names = [part["file"].rsplit("/", 1)[-1] for part in combined["parts"]]
    assert names == ["proof_cpu_seed0.json", "proof_cpu_seed1.json"]
    assert "Combined from proofs run apart" in (results / "proof_cpu_combined.md").read_text()
    with pytest.raises(SystemExit, match="seed 0's kd-from-standard is in two of the reports"):
        proof.main([*common, "--combine", f"{parts},{results / 'proof_cpu_seed0.json'}", "--tag", "twice"])


def test_paired_differences_compare_both_sftns_seed_by_seed_over_the_methods_finished_with_all_three():
    """Issue 26's answer: full - standard, fine-tuned - standard and fine-tuned - full per seed, their
    spread, and the methods' mean per seed; a method that failed with one teacher is left out of the mean."""
    proof = benchmark_module("proof")

    def scores(*values: float) -> dict:
        return {"values": list(values)}

    report = {
        "teachers": ["standard", "sftn", "sftn-finetuned"],
        "teacher": {"standard": scores(69.0, 70.0), "sftn": scores(68.0, 71.0), "sftn-finetuned": scores(69.5, 70.0)},
        "methods": {
            "kd": {"standard": scores(64.0, 65.0), "sftn": scores(65.0, 65.0), "sftn-finetuned": scores(63.0, 64.0)},
            "fitnets": {"standard": scores(60.0, 62.0), "sftn": scores(61.0, 61.0), "sftn-finetuned": scores(62.0, 62.0)},
            "dkd": {"standard": scores(63.0, 63.0), "sftn": None, "sftn-finetuned": scores(50.0, 50.0)},
        },
    }
    paired = proof.paired_differences(report)
    assert list(paired) == ["teacher", "kd", "fitnets", "mean over methods"]
    assert paired["teacher"]["sftn - standard"]["values"] == [-1.0, 1.0]
    assert paired["kd"]["sftn-finetuned - sftn"]["values"] == [-2.0, -1.0]
    assert paired["fitnets"]["sftn-finetuned - standard"]["values"] == [2.0, 0.0]
    mean = paired["mean over methods"]["sftn-finetuned - standard"]
    assert mean["values"] == [0.5, -0.5] and mean["mean"] == 0.0 and math.isclose(mean["std"], math.sqrt(0.5))
    lines = proof.paired_table(paired, [0, 1])
    assert lines[0] == "| | full SFTN - standard | fine-tuned SFTN - standard | fine-tuned SFTN - full SFTN |"
    assert lines[3].startswith("| KD | +0.50 ± 0.71 (+1.00, +0.00) | -1.00 ± 0.00 (-1.00, -1.00) |")
    assert proof.paired_differences({**report, "teachers": ["standard", "sftn"]}) is None
