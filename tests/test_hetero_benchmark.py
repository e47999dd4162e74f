"""benchmarks/hetero_cpu.py end to end on synthetic images (its real run on CIFAR-10 is sized for
40 minutes on 2 cores: see benchmarks/README.md)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from splicer.training import plots
from tests.test_proof_benchmark import benchmark_module


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_both_directions_from_both_teachers_with_the_skipped_methods(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The stored specs as they are (ViT -> resnet8, resnet20 -> ViT) on synthetic 32x32 images: AT runs on
    both pairs, OH (no ReLU at a ViT block end) is skipped with its reason, and the tables are stored."""
    monkeypatch.setattr(plots, "plot_curves", lambda *args, **kwargs: None)  # each run's PNG: not the point here
    monkeypatch.setattr(sys, "argv", ["benchmarks/hetero_cpu.py"])
    benchmark = benchmark_module("hetero_cpu")
    monkeypatch.setattr(benchmark, "cifar10_root", lambda given: pytest.fail("synthetic data needs no CIFAR-10"))
    synthetic = ["data.dataset=synthetic", "data.synthetic_train=48", "data.synthetic_test=16"]
    argv = ["--methods", "all", "--train-subset", "32", "--val-split", "16", "--epochs", "1",
            *(f"--set={s}" for s in [*synthetic, "train.batch_size=16"]),
            "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "results"), "--name", "hetero_toy", "--quiet"]  # fmt: skip
    from splicer.training.methods import METHODS

    for name in set(METHODS) - {"at", "oh"}:  # `all` would be every method: the smoke in the README ran those
        monkeypatch.delitem(METHODS, name)
    benchmark.main(argv)

    stored = json.loads((tmp_path / "results" / "hetero_toy.json").read_text())
    assert stored["command"].startswith("python benchmarks/hetero_cpu.py --methods all ")
    assert stored["specs"] == ["benchmarks/specs/hetero_vit_resnet8_cpu.yaml", "benchmarks/specs/hetero_resnet20_vit_cpu.yaml"]
    for report in stored["reports"]:
        assert report["eval_split"] == "val" and list(report["methods"]) == ["at"]
        assert report["methods"]["at"]["delta"] is not None
        assert list(report["skipped"]) == ["oh"] and "not a ReLU" in report["skipped"]["oh"]
        assert not any(path.startswith("/") for path in report["runs"]["0"].values())
    markdown = (tmp_path / "results" / "hetero_toy.md").read_text()
    assert markdown.count("\n## ") == 2 and "### Skipped methods" in markdown and "| AT |" in markdown
