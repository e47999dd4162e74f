"""Transfer by linear probe (table 7) on a second synthetic task, and ``splicer run`` with the
baselines of table 4 and the probe column, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from splicer.cli.main import app
from splicer.errors import SplicerError
from splicer.spec import spec_from_dict
from splicer.training.checkpoint import load_checkpoint
from splicer.experiments.probe import load_probe_data, linear_probe, pooled_features
from splicer.training.stage2 import train_student
from tests.conftest import toy_spec

runner = CliRunner()
SECOND_TASK = {  # another synthetic task: 4 classes, other patterns
    "num_classes": 4,
    "data": {"dataset": "synthetic", "synthetic_train": 256, "synthetic_test": 128},
}


pytestmark = pytest.mark.usefixtures("one_thread")


def small_spec_dict(epochs: int = 3) -> dict:
    return toy_spec(
        data={"dataset": "synthetic", "synthetic_train": 256, "synthetic_test": 128},
        train={"epochs": epochs, "batch_size": 32, "lr": 0.05, "milestones": [2], "device": "cpu"},
    )


def test_probe_of_a_frozen_student_on_a_second_synthetic_task(tmp_path: Path):
    data_file = tmp_path / "probe.yaml"
    data_file.write_text(yaml.safe_dump(SECOND_TASK))
    run = tmp_path / "student"
    train_student(spec_from_dict(small_spec_dict()), run, quiet=True)
    before = load_checkpoint(run / "last.pt")["model"]
    result = linear_probe(run, load_probe_data(data_file), "cpu")
    assert result["kind"] == "student" and result["num_classes"] == 4 and result["feature_dim"] == 16
    assert (result["num_train"], result["num_eval"]) == (256, 128)
    assert result["top1"] > 2 * 25.0  # chance is 25% on 4 classes
    after = load_checkpoint(run / "last.pt")["model"]
    assert all(torch.equal(before[k], after[k]) for k in before)  # frozen: the run is not changed

    cli = runner.invoke(app, ["probe", str(run), "--data", str(data_file), "--device", "cpu", "--json"])
    assert cli.exit_code == 0, cli.output
    assert json.loads(cli.output)["top1"] == pytest.approx(result["top1"])


def test_pooled_features_are_the_mean_of_the_last_block():
    from splicer.assembly.build import build_student
    from splicer.training.engine import Runtime

    student = build_student(spec_from_dict(small_spec_dict()))
    images = torch.randn(3, 3, 16, 16)
    features, labels = pooled_features(student, [(images, torch.tensor([0, 1, 2]))], Runtime(torch.device("cpu")))
    x = images
    with torch.no_grad():
        for block in student.blocks:
            x = block(x)
    assert torch.allclose(features, x.mean(dim=(2, 3))) and labels.tolist() == [0, 1, 2]


def test_probe_data_errors_name_the_file_and_field(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"num_classes": 4, "data": {"dataset": "synthetic", "sythetic_train": 5}}))
    with pytest.raises(SplicerError, match=r"bad.yaml: data.sythetic_train: unknown field.*synthetic_train"):
        load_probe_data(bad)
    with pytest.raises(SplicerError, match="no such file"):
        load_probe_data(tmp_path / "missing.yaml")


def test_run_with_baselines_and_probe_adds_tables_4_and_7(tmp_path: Path):
    spec_file = tmp_path / "toy.yaml"
    spec_file.write_text(yaml.safe_dump(small_spec_dict(2), sort_keys=False))
    data_file = tmp_path / "probe.yaml"
    data_file.write_text(yaml.safe_dump(SECOND_TASK))
    out = tmp_path / "exp"
    args = ["run", str(spec_file), "--methods", "kd,dml,kdcl,rco", "--anchors", "2", "--probe", str(data_file)]
    result = runner.invoke(app, [*args, "--probe-device", "cpu", "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert list(report["baselines"]["rows"]) == ["Standard", "DML", "KDCL-Naive", "RCO-one-stage-EEI", "SFTN"]
    for name in ("dml", "kdcl", "rco"):
        summary = json.loads((out / "seed0" / name / "summary.json").read_text())
        assert summary["meta"]["method"] == name and summary["epochs"] == 2
    assert [p.name for p in sorted((out / "seed0" / "standard" / "anchors").iterdir())] == ["epoch-0001.pt", "epoch-0002.pt"]
    rows = report["transfer"]["rows"]
    assert set(rows) == {"standard", "sftn", "student", "kd-from-standard", "kd-from-sftn"}
    markdown = (out / "report.md").read_text()
    assert "## Online and curriculum baselines (table 4)" in markdown and "| RCO-one-stage-EEI |" in markdown
    assert "## Transfer by linear probe (table 7)" in markdown and "| KD |" in markdown
