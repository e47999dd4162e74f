"""benchmarks/methods_benchmark.py end to end on a tiny synthetic configuration (its real run
on the CPU proof configuration takes hours: see benchmarks/README.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

from splicer.training import plots
from tests.conftest import REPO, toy_spec
from tests.test_proof_benchmark import benchmark_module


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_help_names_the_validation_split():
    shown = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "methods_benchmark.py"), "--help"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "--val-split" in shown.stdout and "never the test set" in shown.stdout


def test_every_method_from_both_teachers_on_a_validation_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    spec = tmp_path / "toy.yaml"
    spec.write_text(
        yaml.safe_dump(
            toy_spec(
                data={"dataset": "synthetic", "synthetic_train": 64, "synthetic_test": 16},
                train={"epochs": 1, "batch_size": 32, "device": "cpu"},
            ),
            sort_keys=False,
        )
    )
    monkeypatch.setattr(plots, "plot_curves", lambda *args, **kwargs: None)  # each run's PNG: not the point here
    monkeypatch.setattr(sys, "argv", ["benchmarks/methods_benchmark.py"])  # as the command line names the script
    benchmark = benchmark_module("methods_benchmark")
    argv = ["--spec", str(spec), "--methods", "kd,sp,dkd", "--val-split", "16", "--runs", str(tmp_path / "runs"),
            "--out", str(tmp_path / "results"), "--name", "methods_toy", "--quiet"]  # fmt: skip
    benchmark.main(argv)

    stored = json.loads((tmp_path / "results" / "methods_toy.json").read_text())
    assert stored["report"]["eval_split"] == "val" and stored["val_split"] == 16
    assert stored["command"].startswith("python benchmarks/methods_benchmark.py --spec ")
    assert list(stored["methods"]) == ["kd", "sp", "dkd"]
    folders = [stored["report"]["folder"], *stored["report"]["runs"]["0"].values()]
    assert len(folders) == 10 and not any(folder.startswith("/") for folder in folders)  # stored relative
    for method, row in stored["methods"].items():
        assert all(0 <= row["top1"][kind] <= 100 for kind in ("standard", "sftn")), method
        assert row["delta"] == pytest.approx(row["top1"]["sftn"] - row["top1"]["standard"])
        assert all(row["step_relative_to_kd"][kind] > 0 for kind in ("standard", "sftn"))
    assert stored["methods"]["kd"]["step_relative_to_kd"] == {"standard": 1.0, "sftn": 1.0}
    markdown = (tmp_path / "results" / "methods_toy.md").read_text()
    rows = ("| Teacher |", "| Student alone |", "| KD |", "| SP |", "| DKD |", "| Best |", "| Mean Δ over 3 methods |")
    for row in rows:
        assert row in markdown, row
    assert "1.00x" in markdown and "validation split (val)" in markdown

    # A second call reuses every finished run: nothing is trained again.
    before = {p: p.stat().st_mtime for p in (tmp_path / "runs").rglob("last.pt")}
    benchmark.main(argv)
    assert {p: p.stat().st_mtime for p in (tmp_path / "runs").rglob("last.pt")} == before


def test_refuses_to_score_on_the_test_set():
    benchmark = benchmark_module("methods_benchmark")
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--val-split", "0"])
