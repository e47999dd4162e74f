"""--resume refuses a spec that changes what the run trains, names each changed setting, and lets
through what only says where, how long or on what hardware it trains."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from splicer.cli.main import app
from splicer.spec import spec_from_dict
from splicer.training.spec_changes import changed_settings
from tests.conftest import records, toy_spec

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()


def resolved(**changes: object) -> dict:
    """A full spec as a run stores it, with some sections replaced."""
    settings = toy_spec(
        data={"dataset": "synthetic", "synthetic_train": 32, "synthetic_test": 16},
        train={"epochs": 1, "batch_size": 16, "device": "cpu"},
        distill={"options": {"dkd": {"beta": 6.0}}},
    )
    return spec_from_dict({**settings, **changes}).model_dump(mode="json")


def test_a_changed_setting_of_the_objective_is_named_with_both_values():
    started = resolved()
    now = resolved(train={**started["train"], "lr": 0.1}, loss={**started["loss"], "branch_kl": 1.0})
    assert changed_settings(started, now, "sftn", None) == ["loss.branch_kl: was 3.0, now 1.0", "train.lr: was 0.05, now 0.1"]
    assert changed_settings(started, now, "standard", None) == ["train.lr: was 0.05, now 0.1"]  # no branches, no loss


def test_where_how_long_and_on_what_a_run_trains_may_change():
    started = resolved()
    train = {**started["train"], "epochs": 9, "device": "auto", "compile": "auto", "eval_every": 3}
    now = resolved(name="renamed", train=train, data={**started["data"], "root": "/elsewhere", "workers": 0})
    for kind in ("sftn", "standard", "student", "distill", "phase"):
        assert changed_settings(started, now, kind, "kd") == []


def test_a_distillation_depends_on_its_own_methods_options_only():
    started = resolved()
    now = resolved(distill={"methods": ["kd", "dkd"], "options": {"dkd": {"beta": 2.0}, "sskd": {"head_epochs": 3}}})
    assert changed_settings(started, now, "distill", "kd") == []
    assert changed_settings(started, now, "distill", "dkd") == ["distill.options.dkd.beta: was 6.0, now 2.0"]
    assert changed_settings(started, now, "phase", "sskd") == ["distill.options.sskd.head_epochs: was (default), now 3"]
    assert changed_settings(started, now, "sftn", None) == []  # a teacher does not distil


def test_a_model_keyword_added_or_removed_is_a_change():
    started = resolved()
    student = {**started["student"], "kwargs": {}}
    assert changed_settings(started, resolved(student=student), "student", None) == [
        "student.kwargs.width: was 4, now (default)"
    ]


def test_settings_added_to_splicer_after_a_run_started_take_their_defaults():
    started = resolved()
    del started["transforms"]["activation"], started["train"]["sync_bn"]  # as a run written before they existed
    assert changed_settings(started, resolved(), "sftn", None) == []
    now = resolved(transforms={"activation": False})
    assert changed_settings(started, now, "sftn", None) == ["transforms.activation: was True, now False"]


def test_train_resume_refuses_another_learning_rate_and_continues_with_more_epochs(tmp_path: Path):
    spec_file = tmp_path / "toy.yaml"
    spec_file.write_text(yaml.safe_dump(toy_spec(**{k: v for k, v in resolved().items() if k in ("data", "train")})))
    out = tmp_path / "run"
    first = runner.invoke(app, ["train", str(spec_file), "--standard", "--out", str(out), "-q"])
    assert first.exit_code == 0, first.output
    before = (out / "last.pt").read_bytes()

    refused = runner.invoke(app, ["train", str(spec_file), "--standard", "--out", str(out), "--resume", "--lr", "0.1"])
    message = " ".join(refused.output.split())
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    assert "train.lr: was 0.05, now 0.1" in message and f"({out / 'spec.yaml'})" in message
    assert (out / "last.pt").read_bytes() == before and yaml.safe_load((out / "spec.yaml").read_text())["train"]["lr"] == 0.05

    longer = ["train", str(spec_file), "--standard", "--out", str(out), "--resume", "--epochs", "2", "-q"]
    extended = runner.invoke(app, longer)
    assert extended.exit_code == 0, extended.output
    assert [r["epoch"] for r in records(out)] == [1, 2]
