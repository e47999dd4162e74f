"""Training end to end on the synthetic task: both stages, the experiment report, resume,
divergence, checkpoints and evaluation.

One small experiment (`splicer run`, 9 runs of 8 epochs) is shared by most tests. Torch
runs on one thread here: on a shared 2-core machine two intra-op threads can be slowed
down a hundredfold by any other busy process.
"""

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
from splicer.training import stage1
from splicer.training.checkpoint import load_checkpoint, teacher_state, weights_digest
from splicer.training.evaluate import LinearCKA
from splicer.training.overrides import apply_overrides
from splicer.training.stage1 import train_teacher
from splicer.training.hardware import native_bf16
from splicer.training.stage2 import distill
from tests.conftest import flatten, records, toy_spec

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
CHANCE = 10.0  # percent, 10 classes
METHODS = ("kd", "fitnets", "at")
RUNS = ("standard", "sftn", "student", *(f"{m}-from-{k}" for m in METHODS for k in ("standard", "sftn")))


def training_spec(**train: object) -> dict:
    spec = toy_spec(
        data={"dataset": "synthetic", "synthetic_train": 512, "synthetic_test": 256},
        train={"epochs": 8, "batch_size": 32, "lr": 0.05, "device": "cpu", **train},
        distill={"methods": list(METHODS)},
    )
    return spec


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("spec") / "toy.yaml"
    path.write_text(yaml.safe_dump(training_spec(), sort_keys=False))
    return path


@pytest.fixture(scope="module")
def experiment(spec_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`splicer run` with the three methods and one seed, through the CLI."""
    out = tmp_path_factory.mktemp("experiment")
    result = runner.invoke(
        app, ["run", str(spec_file), "--methods", "kd,fitnets,at", "--seeds", "0", "--out", str(out), "-q"]
    )
    assert result.exit_code == 0, result.output
    return out


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


@pytest.mark.parametrize("kind", ["standard", "sftn"])
def test_teachers_learn_the_task_well_above_chance(experiment: Path, kind: str):
    result = summary(experiment / "seed0" / kind)
    assert result["kind"] == kind and result["epochs"] == 8 and result["eval_split"] == "test"
    assert result["final"]["top1"] > 5 * CHANCE
    assert result["best"]["top1"] >= result["final"]["top1"]


@pytest.mark.parametrize("teacher", ["standard", "sftn"])
@pytest.mark.parametrize("method", METHODS)
def test_students_distil_from_each_teacher(experiment: Path, method: str, teacher: str):
    run = experiment / "seed0" / f"{method}-from-{teacher}"
    history = records(run)
    assert history[-1]["loss"] < 0.7 * history[0]["loss"]
    assert history[-1]["terms"]["kd"] < history[0]["terms"]["kd"]
    assert set(history[0]["terms"]) == ({"ce", "kd"} if method == "kd" else {"ce", "kd", "feature"})
    assert history[-1]["train_acc"] > 2 * CHANCE
    assert summary(run)["best"]["top1"] > 2.5 * CHANCE
    teacher_file = experiment / "seed0" / teacher / "last.pt"
    meta = summary(run)["meta"]
    features = meta.pop("features")  # how the method read the block ends: none for KD
    assert (features is None) == (method == "kd")
    inference = meta.pop("teacher_inference")  # the frozen teacher as stage 2 ran it, checked against the trained one
    assert inference["batchnorms_folded"] > 0 and inference["batchnorms_left"] == []
    assert inference["precision"] == ("bf16" if native_bf16(torch.device("cpu")) else "fp32")  # auto, this CPU's
    bound = {"fp32": 1e-3, "bf16": 0.5}[inference["precision"]]  # bf16 keeps ~3 significant digits
    assert max(inference["max_abs_diff"].values()) < bound
    assert meta == {
        "method": method,
        "teacher": str(teacher_file),
        "teacher_digest": weights_digest(teacher_state(load_checkpoint(teacher_file))),
        "teacher_kind": teacher,
    }


def test_run_folders_hold_every_artifact(experiment: Path):
    for name in RUNS:
        run = experiment / "seed0" / name
        for artifact in ("spec.yaml", "metrics.jsonl", "last.pt", "best.pt", "curves.png", "summary.json"):
            assert (run / artifact).is_file(), f"{name}/{artifact}"
    sftn_epoch = records(experiment / "seed0" / "sftn")[0]
    assert set(sftn_epoch) == {
        "epoch",
        "lr",
        "loss",
        "terms",
        "train_acc",
        "eval_top1",
        "eval_top5",
        "img_per_s",
        "step_seconds",
        "seconds",
    }
    assert set(sftn_epoch["terms"]) == {"teacher_ce", "branch_kl", "branch_ce"}
    resolved = yaml.safe_load((experiment / "seed0" / "sftn" / "spec.yaml").read_text())
    assert resolved["teacher"]["blocks"] == ["layer1", "layer2", "layer3"] and resolved["train"]["seed"] == 0


def test_checkpoints_load_with_weights_only(experiment: Path):
    kinds = {"standard": "standard", "sftn": "sftn", "student": "student", "kd-from-sftn": "distill"}
    for name, kind in kinds.items():
        for file in ("last.pt", "best.pt"):
            state = torch.load(experiment / "seed0" / name / file, weights_only=True)
            assert state["kind"] == kind
            assert {"model", "optimizer", "scheduler", "rng", "epoch", "best", "spec"} <= set(state)
    sftn = torch.load(experiment / "seed0" / "sftn" / "last.pt", weights_only=True)
    assert any(key.startswith("branches.") for key in sftn["model"]) and sftn["epoch"] == 8
    fitnets = torch.load(experiment / "seed0" / "fitnets-from-sftn" / "last.pt", weights_only=True)
    assert any("regressor" in key for key in fitnets["extra"]["method"])


def test_report_has_the_rows_of_tables_1_and_2(experiment: Path):
    report = json.loads((experiment / "report.json").read_text())
    assert report["seeds"] == [0] and report["eval_split"] == "test"
    assert set(report["methods"]) == set(METHODS)
    assert report["teacher"]["sftn"]["values"] == [summary(experiment / "seed0" / "sftn")["final"]["top1"]]
    kd = report["methods"]["kd"]
    assert kd["delta"] == pytest.approx(kd["sftn"]["mean"] - kd["standard"]["mean"])
    for method in METHODS:
        for kind in ("standard", "sftn"):
            scores = report["similarity"][method][kind]
            assert scores["kl"]["mean"] >= 0 and 0 <= scores["cka"]["mean"] <= 1 + 1e-9
    markdown = (experiment / "report.md").read_text()
    for row in (
        "| Teacher training method | Standard | SFTN | Δ |",
        "| Teacher accuracy |",
        "| Student accuracy w/o KD |",
        "| KD |",
        "| FitNets |",
        "| AT |",
        "| Best |",
        "| Method | KL Standard | KL SFTN | CKA Standard | CKA SFTN |",
    ):
        assert row in markdown, row
    assert "seed 0" in markdown
    assert (experiment / "curves.png").is_file()


def test_eval_command_scores_and_compares_with_the_teacher(experiment: Path):
    student, teacher = experiment / "seed0" / "kd-from-sftn", experiment / "seed0" / "sftn"
    result = runner.invoke(app, ["eval", str(student), "--teacher", str(teacher), "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.output)
    assert scores["last"]["top1"] == pytest.approx(summary(student)["final"]["top1"])
    assert scores["best"]["top1"] == pytest.approx(summary(student)["best"]["top1"])
    assert scores["similarity"]["kl"] >= 0 and 0 <= scores["similarity"]["cka"] <= 1 + 1e-9
    text = runner.invoke(app, ["eval", str(teacher)])
    assert text.exit_code == 0 and "top-1" in text.output and "top-5" in text.output


@pytest.mark.parametrize("stage", ["sftn", "fitnets"])
def test_resume_ends_with_exactly_the_uninterrupted_weights(experiment: Path, tmp_path: Path, stage: str):
    # The trained network has dropout: its steps draw from the global RNG, which the resume must restore too.
    role = "teacher" if stage == "sftn" else "student"
    dropout = {
        "model": "python:tests.tiny_models:dropout_net",
        "kwargs": {"width": 4},
        "blocks": ["layer1", "layer2", "layer3"],
    }
    spec = spec_from_dict({**training_spec(epochs=2, milestones=[1]), role: dropout})
    teacher = experiment / "seed0" / "sftn"

    def train(out: Path, epochs: int, resume: bool) -> dict:
        run_spec = apply_overrides(spec, {"epochs": epochs})
        if stage == "sftn":
            return train_teacher(run_spec, out=out, resume=resume, quiet=True)
        return distill(run_spec, teacher, "fitnets", out=out, resume=resume, quiet=True)

    train(tmp_path / "straight", 2, resume=False)
    train(tmp_path / "resumed", 1, resume=False)
    train(tmp_path / "resumed", 2, resume=True)
    straight = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    for part in ("model", "extra"):
        flat_a, flat_b = flatten(straight[part]), flatten(resumed[part])
        assert flat_a.keys() == flat_b.keys()
        for key in flat_a:
            assert torch.equal(flat_a[key], flat_b[key]), key
    assert straight["optimizer"]["param_groups"][0]["lr"] == resumed["optimizer"]["param_groups"][0]["lr"]
    for index, buffers in straight["optimizer"]["state"].items():
        assert torch.equal(buffers["momentum_buffer"], resumed["optimizer"]["state"][index]["momentum_buffer"])
    assert straight["scheduler"] == resumed["scheduler"]
    assert [r["epoch"] for r in records(tmp_path / "resumed")] == [1, 2]
    assert [r["loss"] for r in records(tmp_path / "resumed")] == [r["loss"] for r in records(tmp_path / "straight")]


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(
    spec_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    out = tmp_path / "run"
    first = runner.invoke(app, ["train", str(spec_file), "--epochs", "1", "--out", str(out), "-q"])
    assert first.exit_code == 0, first.output
    good = (out / "last.pt").read_bytes()
    real_loss = stage1.sftn_loss
    calls = []

    def poisoned(*args, **kwargs):
        parts = real_loss(*args, **kwargs)
        calls.append(1)
        if len(calls) == 3:  # the third step of epoch 2
            return parts._replace(total=parts.total * float("nan"), branch_kl=parts.branch_kl * float("nan"))
        return parts

    monkeypatch.setattr(stage1, "sftn_loss", poisoned)
    result = runner.invoke(app, ["train", str(spec_file), "--epochs", "3", "--out", str(out), "--resume", "-q"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    message = " ".join(result.output.split())
    assert "NaN/inf at epoch 2, step 3/16" in message and "branch_kl" in message
    assert f"{out / 'last.pt'}, is kept unchanged" in message
    assert (out / "last.pt").read_bytes() == good
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 1
    assert [r["epoch"] for r in records(out)] == [1]


def test_user_errors(experiment: Path, spec_file: Path, tmp_path: Path):
    student = experiment / "seed0" / "student"
    result = runner.invoke(
        app, ["distill", str(spec_file), "--teacher", str(student), "--method", "kd", "--out", str(tmp_path / "a")]
    )
    assert result.exit_code == 2 and "is a student run, not a teacher" in result.output
    result = runner.invoke(
        app, ["distill", str(spec_file), "--teacher", str(experiment / "seed0" / "sftn"), "--method", "kdd"]
    )
    assert result.exit_code == 2 and "unknown distillation method 'kdd'" in result.output and "'kd'" in result.output
    result = runner.invoke(app, ["train", str(spec_file), "--out", str(experiment / "seed0" / "sftn")])
    assert result.exit_code == 2 and "already holds a run" in result.output and "--resume" in result.output
    result = runner.invoke(app, ["train", str(spec_file), "--out", str(tmp_path / "empty"), "--resume"])
    assert result.exit_code == 2 and "no last.pt to resume from" in result.output
    result = runner.invoke(app, ["train", str(spec_file), "--set", "data.resise=16", "--out", str(tmp_path / "b")])
    assert result.exit_code == 2 and "data.resise: unknown field" in result.output and "'resize'" in result.output


def test_overrides_change_train_fields_and_any_dotted_field():
    spec = spec_from_dict(training_spec())
    changed = apply_overrides(spec, {"epochs": 3, "lr": None}, ["data.synthetic_train=64", "train.milestones=[1, 2]"])
    assert changed.train.epochs == 3 and changed.train.lr == spec.train.lr
    assert changed.data.synthetic_train == 64 and changed.train.milestones == [1, 2]
    with pytest.raises(SplicerError, match=r"KEY\.PATH=VALUE"):
        apply_overrides(spec, None, ["data.resize"])


def test_a_new_recipe_brings_its_own_defaults_but_keeps_explicit_values():
    spec = spec_from_dict({**training_spec(), "train": {"recipe": "cifar"}})
    imagenet = apply_overrides(spec, {"epochs": 7}, ["train.recipe=imagenet", "train.batch_size=32"])
    assert (imagenet.train.lr, imagenet.train.weight_decay, imagenet.train.milestones) == (0.1, 1e-4, [30, 60, 90])
    assert (imagenet.train.epochs, imagenet.train.batch_size) == (7, 32)
    tuned = spec_from_dict({**training_spec(), "train": {"recipe": "cifar", "lr": 0.2}})
    assert apply_overrides(tuned, None, ["train.recipe=imagenet"]).train.lr == 0.2  # the user's own value stays


def test_linear_cka_matches_its_definition_and_invariances():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(200, 12, generator=generator, dtype=torch.float64)
    y = x @ torch.randn(12, 7, generator=generator, dtype=torch.float64) + 0.5 * torch.randn(
        200, 7, generator=generator, dtype=torch.float64
    )

    def cka(a: torch.Tensor, b: torch.Tensor, chunks: int = 1) -> float:
        meter = LinearCKA()
        for part_a, part_b in zip(a.chunk(chunks), b.chunk(chunks), strict=True):
            meter.update(part_a, part_b)
        return meter.value()

    xc, yc = x - x.mean(0), y - y.mean(0)
    direct = ((yc.T @ xc).norm() ** 2 / ((xc.T @ xc).norm() * (yc.T @ yc).norm())).item()
    assert cka(x, y) == pytest.approx(direct, rel=1e-9)
    assert cka(x, y, chunks=7) == pytest.approx(direct, rel=1e-9)
    assert cka(x, x) == pytest.approx(1.0)
    rotation, _ = torch.linalg.qr(torch.randn(12, 12, generator=generator, dtype=torch.float64))
    assert cka(3.0 * x @ rotation + 1.0, y) == pytest.approx(direct, rel=1e-9)
