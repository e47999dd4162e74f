"""The stage-1 SFTN loss against hand computations on small explicit tensors."""

from __future__ import annotations

import math

import pytest
import torch

from splicer.spec.schema import LossSpec
from splicer.training.losses import sftn_loss

TEACHER = [[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]]
BRANCH_A = [[0.5, 1.5, 0.0], [1.0, -1.0, 0.5]]
BRANCH_B = [[-1.0, 0.0, 2.0], [2.0, 2.0, 0.0]]
TARGETS = [0, 2]


def softmax(row: list[float], tau: float = 1.0) -> list[float]:
    exps = [math.exp(v / tau) for v in row]
    return [e / sum(exps) for e in exps]


def kl(p: list[float], q: list[float]) -> float:
    """KL(p || q) by its definition."""
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def batch_kl(target_logits: list[list[float]], input_logits: list[list[float]], tau: float = 1.0) -> float:
    """Mean over the batch of KL(softmax(target/tau) || softmax(input/tau))."""
    rows = [kl(softmax(t, tau), softmax(i, tau)) for t, i in zip(target_logits, input_logits)]
    return sum(rows) / len(rows)


def batch_ce(logits: list[list[float]], targets: list[int]) -> float:
    rows = [-math.log(softmax(z)[y]) for z, y in zip(logits, targets)]
    return sum(rows) / len(rows)


def run(spec: LossSpec, teacher=TEACHER, branches=(BRANCH_A, BRANCH_B), grad: bool = False):
    teacher_logits = torch.tensor(teacher, dtype=torch.float64, requires_grad=grad)
    branch_logits = [torch.tensor(b, dtype=torch.float64, requires_grad=grad) for b in branches]
    loss = sftn_loss(teacher_logits, branch_logits, torch.tensor(TARGETS), spec)
    return loss, teacher_logits, branch_logits


def test_teacher_and_branch_cross_entropy_match_hand_computation():
    loss, _, _ = run(LossSpec())
    assert loss.teacher_ce.item() == pytest.approx(batch_ce(TEACHER, TARGETS))
    expected = (batch_ce(BRANCH_A, TARGETS) + batch_ce(BRANCH_B, TARGETS)) / 2
    assert loss.branch_ce.item() == pytest.approx(expected)


def test_teacher_branch_direction_is_kl_of_teacher_to_branch():
    loss, _, _ = run(LossSpec(kl_direction="teacher_branch"))
    expected = (batch_kl(TEACHER, BRANCH_A) + batch_kl(TEACHER, BRANCH_B)) / 2
    assert loss.branch_kl.item() == pytest.approx(expected)


def test_branch_teacher_direction_is_kl_of_branch_to_teacher():
    loss, _, _ = run(LossSpec(kl_direction="branch_teacher"))
    expected = (batch_kl(BRANCH_A, TEACHER) + batch_kl(BRANCH_B, TEACHER)) / 2
    assert loss.branch_kl.item() == pytest.approx(expected)


def test_kl_directions_differ_for_asymmetric_inputs():
    forward, _, _ = run(LossSpec(kl_direction="teacher_branch"))
    reverse, _, _ = run(LossSpec(kl_direction="branch_teacher"))
    assert abs(forward.branch_kl.item() - reverse.branch_kl.item()) > 1e-3


def test_tau_softens_both_distributions_without_tau_squared():
    loss, _, _ = run(LossSpec(tau=2.0))
    expected = (batch_kl(TEACHER, BRANCH_A, tau=2.0) + batch_kl(TEACHER, BRANCH_B, tau=2.0)) / 2
    assert loss.branch_kl.item() == pytest.approx(expected)
    assert abs(loss.branch_kl.item() - run(LossSpec(tau=1.0))[0].branch_kl.item()) > 1e-3


def test_total_is_the_weighted_sum_of_the_terms():
    spec = LossSpec(teacher_ce=0.5, branch_kl=3.0, branch_ce=2.0)
    loss, _, _ = run(spec)
    expected = 0.5 * loss.teacher_ce + 3.0 * loss.branch_kl + 2.0 * loss.branch_ce
    assert loss.total.item() == pytest.approx(expected.item())


@pytest.mark.parametrize("weight", ["teacher_ce", "branch_kl", "branch_ce"])
def test_each_weight_scales_only_its_own_term(weight: str):
    alone = {"teacher_ce": 0.0, "branch_kl": 0.0, "branch_ce": 0.0}
    once, _, _ = run(LossSpec(**{**alone, weight: 1.0}))
    thrice, _, _ = run(LossSpec(**{**alone, weight: 3.0}))
    assert once.total.item() == pytest.approx(getattr(once, weight).item())
    assert thrice.total.item() == pytest.approx(3.0 * once.total.item())


@pytest.mark.parametrize("direction", ["teacher_branch", "branch_teacher"])
def test_kl_gradient_reaches_teacher_and_branch_logits(direction: str):
    spec = LossSpec(teacher_ce=0.0, branch_kl=1.0, branch_ce=0.0, kl_direction=direction)
    loss, teacher_logits, branch_logits = run(spec, grad=True)
    loss.total.backward()
    assert teacher_logits.grad is not None and teacher_logits.grad.abs().sum() > 0
    for logits in branch_logits:
        assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_a_single_branch_is_its_own_mean():
    loss, _, _ = run(LossSpec(), branches=(BRANCH_A,))
    assert loss.branch_kl.item() == pytest.approx(batch_kl(TEACHER, BRANCH_A))
    assert loss.branch_ce.item() == pytest.approx(batch_ce(BRANCH_A, TARGETS))


def test_no_branches_is_an_error():
    with pytest.raises(ValueError, match="at least one student branch"):
        run(LossSpec(), branches=())
