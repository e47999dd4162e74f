"""The emitted train_sftn.py trains the emitted SFTN without splicer, and splicer distils from its checkpoint."""

from __future__ import annotations

import importlib.util
import json
import re
import sys

import torch
from typer.testing import CliRunner

from splicer.cli.main import app
from tests.conftest import toy_spec
from tests.image_folders import write_colour_folder
from tests.standalone import run_without_splicer

runner = CliRunner()


def test_emitted_trainer_trains_without_splicer_and_distill_uses_its_checkpoint(tmp_path, write_spec):
    data = write_colour_folder(tmp_path / "images", classes=4, per_class=16, side=16)
    spec = toy_spec(num_classes=4, data={"dataset": "imagefolder", "root": str(data), "workers": 0})
    spec["train"] = {"epochs": 1, "batch_size": 8, "lr": 0.05, "device": "cpu"}
    spec_path = write_spec(spec)
    built = runner.invoke(app, ["build", str(spec_path), "--out", str(tmp_path / "build")])
    assert built.exit_code == 0, built.output
    trainer = tmp_path / "build" / "train_sftn.py"
    assert trainer.is_file() and "import splicer" not in trainer.read_text()

    checkpoint = tmp_path / "trained.pt"
    done = run_without_splicer(
        trainer, str(data), "--epochs", "1", "--workers", "0", "--log-every", "1", "--out", str(checkpoint),
        cwd=tmp_path,
    )
    losses = [float(x) for x in re.findall(r"step \d+/8 loss ([\d.]+)", done.stdout)]
    assert len(losses) == 8, done.stdout
    assert sum(losses[-2:]) < sum(losses[:2]), f"loss did not go down: {losses}"
    trainer_top1 = float(re.search(r"teacher test top-1 ([\d.]+)%", done.stdout).group(1))

    # splicer's own evaluation of the checkpoint (its data pipeline and normalisation) agrees with the trainer's.
    scored = runner.invoke(app, ["eval", str(checkpoint), "--device", "cpu", "--json"])
    assert scored.exit_code == 0, scored.output
    assert abs(json.loads(scored.stdout)["last"]["top1"] - trainer_top1) < 1e-6, (scored.output, done.stdout)

    state = torch.load(checkpoint, weights_only=True)
    assert state["kind"] == "sftn" and state["spec"]["name"] == "toy" and state["epoch"] == 1
    command = ["distill", str(spec_path), "--teacher", str(checkpoint), "--method", "kd", "--out", str(tmp_path / "kd")]
    distilled = runner.invoke(app, [*command, "--quiet"])
    assert distilled.exit_code == 0, distilled.output
    student_run = torch.load(tmp_path / "kd" / "last.pt", weights_only=True)
    assert student_run["kind"] == "distill" and student_run["meta"]["teacher"] == str(checkpoint)


def test_trainer_loss_matches_splicer_stage1_loss(tmp_path, write_spec, monkeypatch):
    """The emitted loss function gives splicer's sftn_loss on the same logits, for both KL directions."""
    from splicer.assembly.build import compile_spec
    from splicer.emission.artifacts import emit_artifacts
    from splicer.spec.schema import LossSpec
    from splicer.training.losses import sftn_loss

    monkeypatch.setattr(sys, "path", list(sys.path))  # the trainer puts its folder first on the path
    generator = torch.Generator().manual_seed(0)
    teacher, labels = torch.randn(6, 4, generator=generator), torch.randint(0, 4, (6,), generator=generator)
    branches = [torch.randn(6, 4, generator=generator) for _ in range(2)]
    for direction in ("teacher_branch", "branch_teacher"):
        loss = {"teacher_ce": 0.5, "branch_kl": 3.0, "branch_ce": 2.0, "tau": 2.0, "kl_direction": direction}
        written = emit_artifacts(compile_spec(write_spec(toy_spec(loss=loss))), tmp_path / direction)
        monkeypatch.delitem(sys.modules, "sftn", raising=False)  # each build has its own sftn.py
        module_spec = importlib.util.spec_from_file_location(f"train_{direction}", written["trainer"])
        trainer = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(trainer)
        expected = sftn_loss(teacher, branches, labels, LossSpec(**loss)).total
        assert torch.allclose(trainer.sftn_loss(teacher, branches, labels), expected)
    monkeypatch.delitem(sys.modules, "sftn", raising=False)


def test_emitted_trainer_stops_on_a_non_finite_loss_and_writes_no_checkpoint(tmp_path, write_spec):
    data = write_colour_folder(tmp_path / "images", classes=4, per_class=16, side=16)
    spec = toy_spec(num_classes=4, data={"dataset": "imagefolder", "root": str(data), "workers": 0})
    built = runner.invoke(app, ["build", str(write_spec(spec)), "--out", str(tmp_path / "build")])
    assert built.exit_code == 0, built.output
    checkpoint = tmp_path / "trained.pt"
    done = run_without_splicer(
        tmp_path / "build" / "train_sftn.py", str(data), "--epochs", "1", "--workers", "0", "--batch-size", "8",
        "--lr", "1e30", "--log-every", "2", "--out", str(checkpoint), cwd=tmp_path, check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert re.search(r"epoch 1/1: the loss became NaN/inf between steps \d+ and \d+; stopped without writing", done.stderr)
    assert not checkpoint.exists() and not checkpoint.with_name("trained.pt.tmp").exists()


def test_emitted_trainer_names_non_finite_weights(tmp_path, write_spec, monkeypatch):
    from splicer.assembly.build import compile_spec
    from splicer.emission.artifacts import emit_artifacts

    monkeypatch.setattr(sys, "path", list(sys.path))  # the trainer puts its folder first on the path
    written = emit_artifacts(compile_spec(write_spec(toy_spec())), tmp_path)
    monkeypatch.delitem(sys.modules, "sftn", raising=False)
    module_spec = importlib.util.spec_from_file_location("train_nonfinite", written["trainer"])
    trainer = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(trainer)
    state = {"a": torch.ones(2), "b": torch.tensor([1.0, float("nan")]), "n": torch.tensor(3), "c": torch.tensor([float("inf")])}
    assert trainer.non_finite_tensors(state) == ["b", "c"]
    sys.modules.pop("sftn", None)  # not monkeypatch.delitem: its teardown would put this build's sftn back
