"""Online and curriculum baselines (table 4) on the synthetic task: DML, KDCL-Naive and RCO
each train a student above chance with their own loss terms, each loss matches an explicit
computation, and RCO follows the standard teacher's anchors in order."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from splicer.spec import spec_from_dict
from splicer.cli.main import app
from splicer.training.anchors import equal_intervals, list_anchors
from splicer.training.checkpoint import load_checkpoint
from splicer.training.engine import Runtime
from splicer.training.online import rco, train_baseline
from splicer.training.online.dml import dml_terms
from splicer.training.online.kdcl import kdcl_terms
from splicer.training.stage1 import train_teacher
from tests.conftest import toy_spec

CHANCE = 10.0


pytestmark = pytest.mark.usefixtures("one_thread")


def small_spec(epochs: int = 4, lr: float = 0.05):
    return spec_from_dict(
        toy_spec(
            data={"dataset": "synthetic", "synthetic_train": 512, "synthetic_test": 256},
            train={"epochs": epochs, "batch_size": 32, "lr": lr, "milestones": [3], "device": "cpu"},
        )
    )


def _log_softmax(row: list[float], tau: float) -> list[float]:
    scaled = [v / tau for v in row]
    top = max(scaled)
    log_sum = top + math.log(sum(math.exp(v - top) for v in scaled))
    return [v - log_sum for v in scaled]


def explicit_kl(target: torch.Tensor, inputs: torch.Tensor, tau: float = 1.0) -> float:
    """mean over rows of sum_c p_c (log p_c - log q_c), p from target, q from inputs, in plain Python."""
    total = 0.0
    for t_row, i_row in zip(target.tolist(), inputs.tolist()):
        log_p, log_q = _log_softmax(t_row, tau), _log_softmax(i_row, tau)
        total += sum(math.exp(lp) * (lp - lq) for lp, lq in zip(log_p, log_q))
    return total / len(target)


def explicit_ce(logits: torch.Tensor, labels: torch.Tensor) -> float:
    rows = logits.tolist()
    return -sum(_log_softmax(row, 1.0)[y] for row, y in zip(rows, labels.tolist())) / len(rows)


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(6, 5, generator=g) * 3, torch.randn(6, 5, generator=g) * 3, torch.randint(0, 5, (6,), generator=g)


def test_dml_terms_match_an_explicit_computation_and_each_kl_moves_only_its_network():
    student, teacher, labels = _batch()
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    terms = dml_terms(student, teacher, labels)
    expected = {
        "student_ce": explicit_ce(student, labels),
        "student_kl": explicit_kl(teacher, student),
        "teacher_ce": explicit_ce(teacher, labels),
        "teacher_kl": explicit_kl(student, teacher),
    }
    for name, value in expected.items():
        assert terms[name].item() == pytest.approx(value, rel=1e-5)
    assert terms["total"].item() == pytest.approx(sum(expected.values()), rel=1e-5)
    terms["student_kl"].backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0


def test_kdcl_terms_match_an_explicit_computation_against_the_averaged_logits():
    student, teacher, labels = _batch(1)
    tau = 4.0
    terms = kdcl_terms(student, teacher, labels, tau)
    ensemble = (student + teacher) / 2
    expected = {
        "student_ce": explicit_ce(student, labels),
        "student_kd": tau**2 * explicit_kl(ensemble, student, tau),
        "teacher_ce": explicit_ce(teacher, labels),
        "teacher_kd": tau**2 * explicit_kl(ensemble, teacher, tau),
    }
    for name, value in expected.items():
        assert terms[name].item() == pytest.approx(value, rel=1e-5)
    assert terms["total"].item() == pytest.approx(sum(expected.values()), rel=1e-5)


@pytest.mark.parametrize(
    ("name", "terms"),
    [("dml", {"student_ce", "student_kl", "teacher_ce", "teacher_kl"}), ("kdcl", {"student_ce", "student_kd", "teacher_ce", "teacher_kd"})],
)
def test_online_baselines_train_a_student_and_its_teacher_above_chance(tmp_path: Path, name: str, terms: set[str]):
    summary = train_baseline(name, small_spec(), tmp_path / name, quiet=True)
    history = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    assert set(history[0]["terms"]) == terms
    assert history[-1]["loss"] < history[0]["loss"]
    assert summary["final"]["top1"] > 2.5 * CHANCE and summary["teacher_final"]["top1"] > 2.5 * CHANCE
    assert summary["meta"]["method"] == name and load_checkpoint(tmp_path / name / "last.pt")["kind"] == "distill"
    assert set(load_checkpoint(tmp_path / name / "last.pt")["extra"]) == {"teacher"}


@pytest.fixture(scope="module")
def anchored(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`splicer train --standard --anchors 2`, through the CLI."""
    folder = tmp_path_factory.mktemp("anchored")
    spec_file = folder / "toy.yaml"
    spec_file.write_text(yaml.safe_dump(small_spec().model_dump(mode="json"), sort_keys=False))
    out = folder / "standard"
    result = CliRunner().invoke(app, ["train", str(spec_file), "--standard", "--anchors", "2", "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    return out


def test_anchored_teacher_saves_equal_interval_anchors_and_ends_as_the_plain_teacher(anchored: Path, tmp_path: Path):
    assert equal_intervals(240, 4) == [60, 120, 180, 240] and equal_intervals(3, 4) == [1, 2, 3]
    anchors = list_anchors(anchored)
    assert [epoch for epoch, _ in anchors] == [2, 4]
    states = [load_checkpoint(path) for _, path in anchors]
    assert [s["epoch"] for s in states] == [2, 4] and all(s["kind"] == "standard" for s in states)
    plain = tmp_path / "plain"
    train_teacher(small_spec(), True, plain, quiet=True)
    final, reference = load_checkpoint(anchored / "last.pt")["model"], load_checkpoint(plain / "last.pt")["model"]
    assert all(torch.equal(final[key], reference[key]) for key in reference)  # anchors do not change the teacher
    assert any(not torch.equal(states[0]["model"][k], reference[k]) for k in reference)


def test_rco_follows_the_anchors_in_order_and_learns(anchored: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    loaded: list[str] = []
    original = rco.load_anchor

    def spy(path: Path, spec):  # type: ignore[no-untyped-def]
        loaded.append(Path(path).name)
        return original(path, spec)

    monkeypatch.setattr(rco, "load_anchor", spy)
    # KD at tau 1: at tau 4 (gradients x16) the jump from the toy's half-trained first anchor to the next
    # leaves the student at chance or near it depending on float rounding alone (measured at lr 0.05 and
    # 0.01: 10.2 %, or 19.5 % with channels-last, 29.7 % contiguous); at tau 1 it learns in both layouts
    # (35.5 % / 29.7 %). The loss at the default tau is checked by the next test.
    spec = small_spec()
    spec = spec.model_copy(update={"distill": spec.distill.model_copy(update={"kd_tau": 1.0})})
    summary = train_baseline("rco", spec, tmp_path / "rco", quiet=True, teacher=anchored)
    assert loaded == ["epoch-0002.pt", "epoch-0004.pt"]
    assert [(s["first_epoch"], s["last_epoch"], s["anchor_epoch"]) for s in summary["route"]] == [(1, 2, 2), (3, 4, 4)]
    history = [json.loads(line) for line in (tmp_path / "rco" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2, 3, 4] and set(history[0]["terms"]) == {"ce", "kd"}
    assert summary["epochs"] == 4 and summary["final"]["top1"] > 2 * CHANCE
    assert load_checkpoint(tmp_path / "rco" / "last.pt")["meta"]["anchor"].endswith("epoch-0004.pt")


def test_rco_loss_is_kd_to_the_anchor_it_is_given(anchored: Path):
    spec = small_spec()
    images = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3])
    for epoch, path in list_anchors(anchored):
        stage = rco.anchor_stage(spec, path, epoch, Runtime(torch.device("cpu")))
        stage.train_mode()
        terms, student_logits = stage.loss(images, labels)
        # Independent teacher: the anchor's weights loaded into a freshly built network.
        teacher = rco.load_anchor(path, spec).eval()
        with torch.no_grad():
            teacher_logits = teacher(images)
        d = spec.distill
        assert terms["ce"].item() == pytest.approx(d.ce_weight * explicit_ce(student_logits, labels), rel=1e-4)
        kd = d.kd_weight * d.kd_tau**2 * explicit_kl(teacher_logits, student_logits.detach(), d.kd_tau)
        assert terms["kd"].item() == pytest.approx(kd, rel=1e-4)


def test_rco_without_anchors_says_how_to_get_them(tmp_path: Path):
    from splicer.errors import SplicerError

    with pytest.raises(SplicerError, match="--anchors"):
        train_baseline("rco", small_spec(), tmp_path / "rco", teacher=tmp_path)
