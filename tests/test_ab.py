"""AB (Heo et al., 2019) against explicit sums on fixed tensors, which parameters its
initialisation phase and its main distillation train, and end to end through `splicer distill`
(the phase folder, resume inside the phase, the error for a block end without a ReLU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from typer.testing import CliRunner

from splicer.assembly.build import build, build_student
from splicer.cli.main import app
from splicer.spec import spec_from_dict
from splicer.spec.schema import DistillSpec
from splicer.training.methods import create_method
from splicer.training.phases import phase_training
from splicer.training.stage1 import train_teacher
from splicer.training.stage2 import block_shapes, distill, distill_loss
from tests.conftest import records, toy_spec
from tests.test_phases import Interrupted, assert_same_checkpoint, interrupt_at_checkpoint

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------- the loss, written out


def explicit_boundary_loss(source: list, target: list, margin: float) -> float:
    """Sum over n, c, h, w: (s + m)^2 if the teacher is off (t <= 0) and s > -m; (s - m)^2 if on and s <= m."""
    total = 0.0
    for n in range(len(source)):
        for c in range(len(source[n])):
            for h in range(len(source[n][c])):
                for w in range(len(source[n][c][h])):
                    s, t = source[n][c][h][w], target[n][c][h][w]
                    if t <= 0:
                        if s > -margin:
                            total += (s + margin) ** 2
                    elif s <= margin:
                        total += (s - margin) ** 2
    return total


SHAPES_T = [(3, 4, 4), (4, 2, 2), (5, 2, 2)]
SHAPES_S = [(2, 4, 4), (4, 2, 2), (2, 2, 2)]  # block 1 already has the teacher's shape: identity connector


@pytest.mark.parametrize("margin", [1.0, 0.5])
def test_ab_loss_matches_explicit_sums_with_the_authors_scale(margin: float):
    spec = DistillSpec(feature_weight=2.0, options={"ab": {"margin": margin}})
    method = create_method("ab", spec, SHAPES_T, SHAPES_S)
    assert isinstance(method.connectors[1], nn.Identity)
    assert all(isinstance(method.connectors[i].conv, nn.Conv2d) for i in (0, 2))
    method.eval()  # the connectors' BN with running statistics: the same output in both computations
    generator = torch.Generator().manual_seed(0)
    batch = 2
    student = [2 * torch.randn(batch, *shape, generator=generator) for shape in SHAPES_S]
    teacher = [torch.randn(batch, *shape, generator=generator) for shape in SHAPES_T]
    teacher[1][0, 0, 0, 0] = 0.0  # exactly zero counts as off
    logits_s, logits_t = torch.randn(batch, 5, generator=generator), torch.randn(batch, 5, generator=generator)
    terms = method(logits_s, logits_t, student, teacher, torch.tensor([1, 3]))

    expected = 0.0
    for i, weight in enumerate([0.25, 0.5, 1.0]):  # 2^(i - N + 1)
        source = method.connectors[i](student[i]).tolist()
        expected += weight * explicit_boundary_loss(source, teacher[i].tolist(), margin)
    expected = expected / batch / 1000 * 3
    assert expected > 0
    assert terms["feature"].item() == pytest.approx(2.0 * expected, rel=1e-5)
    assert terms["total"].item() == pytest.approx((terms["ce"] + terms["kd"]).item() + 2.0 * expected, rel=1e-5)


def test_boundary_loss_on_a_hand_case_including_the_edges():
    method = create_method("ab", DistillSpec(), [(1, 1, 6)], [(1, 1, 6)])  # equal shapes: identity connector
    student = torch.tensor([[[[-1.0, -0.5, 2.0, 1.0, 0.5, -3.0]]]])
    teacher = torch.tensor([[[[-2.0, 0.0, -1.0, 3.0, 0.1, 1.0]]]])
    # off, s = -1 = -m: no loss; off (t = 0), s = -0.5: (0.5)^2; off, s = 2: 3^2;
    # on, s = 1 = m: (0)^2; on, s = 0.5: (0.5)^2; on, s = -3: 4^2.
    loss = method.feature_loss([student], [teacher])
    assert loss.item() == pytest.approx((0.25 + 9 + 0 + 0.25 + 16) * 3 / 1000, rel=1e-6)


def test_defaults_are_the_benchmarks():
    method = create_method("ab", DistillSpec(), SHAPES_T, SHAPES_S)
    assert method.feature_weight == 0.0 and method.options.margin == 1.0
    assert not any(p.requires_grad for p in method.connectors.parameters())  # trained in the phase only
    generator = torch.Generator().manual_seed(1)
    features = [torch.randn(2, *shape, generator=generator) for shape in SHAPES_S]
    targets = [torch.randn(2, *shape, generator=generator) for shape in SHAPES_T]
    terms = method(torch.randn(2, 5), torch.randn(2, 5), features, targets, torch.tensor([0, 1]))
    assert set(terms) == {"ce", "kd", "total"}  # no AB term in the main distillation by default

    student, teacher = build_pair()[1:3]
    (phase,) = method.phases(student, teacher, main_epochs=240)
    assert (phase.name, phase.epochs, phase.lr, phase.milestones) == ("init", 30, 0.05, [])
    assert phase.lr_setting == "distill.options.ab.init_lr"
    assert set(phase.trains) == {"connectors", "student_blocks"} and phase.trains["student_blocks"] is student.blocks
    (short,) = method.phases(student, teacher, main_epochs=8)
    assert short.epochs == 1
    chosen = create_method("ab", DistillSpec(options={"ab": {"init_epochs": 3, "init_lr": 0.1}}), SHAPES_T, SHAPES_S)
    (phase,) = chosen.phases(student, teacher, main_epochs=240)
    assert (phase.epochs, phase.lr) == (3, 0.1)


# ---------------------------------------------------------------- what trains


def build_pair(feature_weight: float | None = None):
    spec = spec_from_dict(toy_spec(distill={"feature_weight": feature_weight}))
    torch.manual_seed(0)
    teacher, student = build(spec, verify=False).teacher.requires_grad_(False), build_student(spec)
    method = create_method("ab", spec.distill, block_shapes(teacher, spec), block_shapes(student, spec))
    return spec, student, teacher, method


def test_init_phase_trains_only_the_connectors_and_the_students_blocks():
    _, student, teacher, method = build_pair()
    teacher_state = {key: value.clone() for key, value in teacher.state_dict().items()}
    (phase,) = method.phases(student, teacher, main_epochs=240)
    images = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with phase_training(phase, [student, teacher, method]):
        assert student.blocks.training and not student.head.training and not teacher.training
        terms, logits = phase.loss(images, torch.tensor([0, 1, 2, 3]))
        terms["total"].backward()
    assert logits is None and set(terms) == {"boundary", "total"} and terms["boundary"].item() > 0
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(teacher_state[key], value) for key, value in teacher.state_dict().items())
    assert all(p.grad is None for p in student.head.parameters())
    connectors = list(method.connectors.parameters())
    assert connectors and all(p.grad is not None and p.grad.abs().sum() > 0 for p in connectors)
    convs = [p for name, p in student.blocks.named_parameters() if "conv" in name and name.endswith("weight")]
    assert convs and all(p.grad is not None and p.grad.abs().sum() > 0 for p in convs)
    # afterwards the connectors are frozen again for the main distillation, the student is not
    assert not any(p.requires_grad for p in method.connectors.parameters())
    assert all(p.requires_grad for p in student.parameters())


@pytest.mark.parametrize("feature_weight", [None, 1.0])
def test_main_distillation_trains_the_student_and_the_connectors_only_when_weighted(feature_weight: float | None):
    _, student, teacher, method = build_pair(feature_weight)
    student.train(), method.train()
    terms, _ = distill_loss(student, teacher, method)(torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3]))
    terms["total"].backward()
    assert set(terms) == ({"ce", "kd", "total"} if feature_weight is None else {"ce", "kd", "feature", "total"})
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    connectors = list(method.connectors.parameters())
    if feature_weight is None:
        assert all(p.grad is None for p in connectors)
    else:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in connectors)


# ---------------------------------------------------------------- end to end


def dropout_spec(**distill: object) -> dict:
    """The toy teacher and a dropout student (its steps draw from the RNG that resume restores)."""
    student = {"model": "python:tests.tiny_models:dropout_net", "kwargs": {"width": 4}, "blocks": ["layer1", "layer2", "layer3"]}
    return toy_spec(
        student=student,
        data={"dataset": "synthetic", "synthetic_train": 64, "synthetic_test": 32},
        train={"epochs": 2, "batch_size": 16, "lr": 0.05, "milestones": [1], "device": "cpu"},
        distill=dict(distill),
    )


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("spec") / "toy.yaml"
    path.write_text(yaml.safe_dump(dropout_spec(), sort_keys=False))
    return path


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("teacher") / "standard"
    train_teacher(spec_from_dict(dropout_spec()), standard=True, out=out, quiet=True)
    return out


def test_ab_distils_through_the_cli_with_its_init_phase(spec_file: Path, teacher: Path, tmp_path: Path):
    out = tmp_path / "run"
    result = runner.invoke(
        app,
        ["distill", str(spec_file), "--teacher", str(teacher), "--method", "ab", "--out", str(out), "-q",
         "--set", "distill.options.ab.init_epochs=3"],
    )
    assert result.exit_code == 0, result.output
    phase = out / "phases" / "init"
    for artifact in ("spec.yaml", "metrics.jsonl", "last.pt", "curves.png", "summary.json"):
        assert (out / artifact).is_file() and (phase / artifact).is_file(), artifact
    phase_records = records(phase)
    assert [r["epoch"] for r in phase_records] == [1, 2, 3]
    assert all(set(r["terms"]) == {"boundary"} for r in phase_records)
    losses = [r["loss"] for r in phase_records]
    assert losses[-1] < losses[0]  # the student's boundaries move towards the teacher's
    recipe = yaml.safe_load((phase / "spec.yaml").read_text())["train"]
    assert recipe["epochs"] == 3 and recipe["lr"] == 0.05 and recipe["milestones"] == []

    main_records = records(out)
    assert [r["epoch"] for r in main_records] == [1, 2] and main_records[-1]["eval_top1"] is not None
    assert all(set(r["terms"]) == {"ce", "kd"} for r in main_records)
    phase_state = torch.load(phase / "last.pt", weights_only=True)
    main_state = torch.load(out / "last.pt", weights_only=True)
    assert any(key.startswith("student_blocks.") for key in phase_state["model"])
    connectors = {k: v for k, v in phase_state["model"].items() if k.startswith("connectors.")}
    assert connectors and all(torch.equal(main_state["extra"]["method"][k], v) for k, v in connectors.items())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["meta"]["method"] == "ab"


@pytest.fixture(scope="module")
def resume_spec():
    # Phase of 2 epochs, main run of 2: checkpoint writes 1-2 are the phase's, 3-4 the main run's.
    return spec_from_dict(dropout_spec(options={"ab": {"init_epochs": 2}}))


@pytest.fixture(scope="module")
def uninterrupted(resume_spec, teacher: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("straight") / "ab"
    distill(resume_spec, teacher, "ab", out=out, quiet=True)
    return out


@pytest.mark.parametrize("failing_write", [2, 3, 4], ids=["inside-the-phase", "after-the-phase", "inside-the-main-run"])
def test_resume_after_an_interruption_anywhere_equals_an_uninterrupted_run(
    resume_spec, teacher: Path, uninterrupted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    failing_write: int,
):
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        interrupt_at_checkpoint(patch, failing_write)
        with pytest.raises(Interrupted):
            distill(resume_spec, teacher, "ab", out=out, quiet=True)
    assert torch.load(out / "phases" / "init" / "last.pt", weights_only=True)["epoch"] == min(failing_write - 1, 2)

    with monkeypatch.context() as patch:
        writes = interrupt_at_checkpoint(patch, None)
        distill(resume_spec, teacher, "ab", out=out, resume=True, quiet=True)
    assert len(writes) == 5 - failing_write  # only the epochs not yet checkpointed are trained again
    for folder in (Path("phases") / "init", Path(".")):
        assert_same_checkpoint(uninterrupted / folder / "last.pt", out / folder / "last.pt")
        assert [r["loss"] for r in records(out / folder)] == [r["loss"] for r in records(uninterrupted / folder)]


def test_a_student_block_end_without_a_relu_is_refused_before_creating_a_run(tmp_path: Path):
    network = {"model": "python:tests.toy_nets:preact_start", "blocks": ["stage1", "stage2"]}
    spec = {
        "name": "noact",
        "num_classes": 10,
        "input_size": [3, 16, 16],
        "teacher": {"model": "python:tests.toy_nets:batch_size_reader", "blocks": ["stage1", "stage2"]},
        "student": network,
        "data": {"dataset": "synthetic", "synthetic_train": 32, "synthetic_test": 16},
        "train": {"epochs": 1, "batch_size": 16, "device": "cpu"},
    }
    spec_file = tmp_path / "noact.yaml"
    spec_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    teacher_run = tmp_path / "teacher"
    result = runner.invoke(app, ["train", str(spec_file), "--standard", "--out", str(teacher_run), "-q"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "ab"
    result = runner.invoke(app, ["distill", str(spec_file), "--teacher", str(teacher_run), "--method", "ab", "--out", str(out)])
    message = " ".join(result.output.split())
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "distill method 'ab'" in message and "student block end 'stage1' ends with Conv2d" in message
    assert not out.exists()
