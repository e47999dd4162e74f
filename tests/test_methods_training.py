"""Every method in training: gradients reach only the student and the method's own
parameters, each one distils through `splicer distill` on the synthetic task, and the trainer
tells methods the epoch (DKD's warm-up), also after a resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from splicer.assembly.build import build, build_student
from splicer.cli.main import app
from splicer.spec import spec_from_dict
from splicer.training.methods import create_method
from splicer.training.methods.dkd import DKD
from splicer.training.stage1 import train_teacher
from splicer.training.stage2 import block_shapes, distill_loss
from tests.conftest import toy_spec

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
METHOD_TERMS = {
    "kd": {"ce", "kd"},
    "fitnets": {"ce", "kd", "feature"},
    "at": {"ce", "kd", "feature"},
    "sp": {"ce", "kd", "feature"},
    "vid": {"ce", "kd", "feature"},
    "rkd": {"ce", "kd", "distance", "angle"},
    "pkt": {"ce", "kd", "feature"},
    "dkd": {"ce", "kd"},
}
WITH_PARAMETERS = {"fitnets", "vid"}


def tiny_spec() -> dict:
    return toy_spec(
        data={"dataset": "synthetic", "synthetic_train": 64, "synthetic_test": 32},
        train={"epochs": 1, "batch_size": 32, "lr": 0.05, "device": "cpu"},
    )


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("spec") / "toy.yaml"
    path.write_text(yaml.safe_dump(tiny_spec(), sort_keys=False))
    return path


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("teacher") / "sftn"
    train_teacher(spec_from_dict(tiny_spec()), out=out, quiet=True)
    return out


@pytest.mark.parametrize("name", sorted(METHOD_TERMS))
def test_gradients_reach_only_the_student_and_the_methods_own_parameters(name: str):
    spec = spec_from_dict(tiny_spec())
    torch.manual_seed(0)
    teacher_net, student = build(spec).teacher.eval(), build_student(spec).train()
    method = create_method(name, spec.distill, block_shapes(teacher_net, spec), block_shapes(student, spec))
    before = {key: value.clone() for key, value in teacher_net.state_dict().items()}
    images, labels = torch.randn(8, 3, 16, 16), torch.arange(8) % 10

    terms, logits = distill_loss(student, teacher_net, method)(images, labels)
    terms["total"].backward()

    assert set(terms) == METHOD_TERMS[name] | {"total"}
    assert all(p.requires_grad and p.grad is None for p in teacher_net.parameters())
    assert all(torch.equal(before[key], value) for key, value in teacher_net.state_dict().items())
    assert all(p.grad is not None for p in student.parameters())
    assert sum(p.grad.abs().sum().item() for p in student.parameters()) > 0
    own = list(method.parameters())
    assert bool(own) == (name in WITH_PARAMETERS)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in own)
    assert logits.shape == (8, 10)


@pytest.mark.parametrize("name", sorted(METHOD_TERMS))
def test_each_method_distils_through_the_cli(name: str, spec_file: Path, teacher: Path, tmp_path: Path):
    out = tmp_path / name
    result = runner.invoke(
        app, ["distill", str(spec_file), "--teacher", str(teacher), "--method", name, "--out", str(out), "-q"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["meta"]["method"] == name and summary["final"]["top1"] is not None
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert set(record["terms"]) == METHOD_TERMS[name]
    assert math.isfinite(record["loss"]) and record["loss"] > 0
    checkpoint = torch.load(out / "last.pt", weights_only=True)
    assert bool(checkpoint["extra"]["method"]) == (name in WITH_PARAMETERS)


def test_methods_are_told_each_epoch_also_after_a_resume(
    spec_file: Path, teacher: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    told: list[int] = []
    real = DKD.set_epoch

    def record(self: DKD, epoch: int) -> None:
        told.append(epoch)
        real(self, epoch)

    monkeypatch.setattr(DKD, "set_epoch", record)
    out = tmp_path / "dkd"
    common = ["distill", str(spec_file), "--teacher", str(teacher), "--method", "dkd", "--out", str(out), "-q"]
    assert runner.invoke(app, [*common, "--epochs", "2"]).exit_code == 0
    assert told == [0, 1]
    told.clear()
    result = runner.invoke(app, [*common, "--epochs", "3", "--resume"])
    assert result.exit_code == 0, result.output
    assert told == [2]


def test_dkd_warmup_scales_the_trained_dkd_term(spec_file: Path, teacher: Path, tmp_path: Path):
    """Two runs that differ only in the warm-up length take the same first step: its loss is
    the first batch's, so the DKD terms of that step are in the ratio of the warm-up factors."""
    first_terms = {}
    for warmup in (1, 4):
        out = tmp_path / f"warmup{warmup}"
        result = runner.invoke(
            app,
            [
                "distill", str(spec_file), "--teacher", str(teacher), "--method", "dkd", "--out", str(out), "-q",
                "--batch-size", "64", "--set", f"distill.options.dkd.warmup_epochs={warmup}",
            ],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        first_terms[warmup] = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["terms"]
    assert first_terms[4]["kd"] == pytest.approx(first_terms[1]["kd"] / 4, rel=1e-5)
    assert first_terms[4]["ce"] == pytest.approx(first_terms[1]["ce"], rel=1e-6)
