"""Stage-2 distillation methods against hand computations, and the method registry."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from splicer.errors import SplicerError
from splicer.spec.schema import DistillSpec
from splicer.training.methods import base as method_base
from splicer.training.methods import DistillMethod, create_method, register_method

STUDENT = [[1.0, 2.0, 0.0], [0.0, 1.0, 0.5]]
TEACHER = [[3.0, 0.0, 1.0], [0.5, 2.0, -1.0]]
TARGETS = [1, 2]
SHAPES = [(2, 4, 4), (3, 2, 2)]


def softmax(row: list[float], tau: float = 1.0) -> list[float]:
    exps = [math.exp(v / tau) for v in row]
    return [e / sum(exps) for e in exps]


def batch_kl(target_logits: list[list[float]], input_logits: list[list[float]], tau: float) -> float:
    """Mean over the batch of KL(softmax(target/tau) || softmax(input/tau)), by definition."""
    rows = []
    for t, i in zip(target_logits, input_logits):
        p, q = softmax(t, tau), softmax(i, tau)
        rows.append(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q)))
    return sum(rows) / len(rows)


def batch_ce(logits: list[list[float]], targets: list[int]) -> float:
    return sum(-math.log(softmax(z)[y]) for z, y in zip(logits, targets)) / len(targets)


def features(shapes: list[tuple[int, int, int]], batch: int = 2, seed: int = 0) -> list[Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, *shape, generator=generator) for shape in shapes]


def logits(values: list[list[float]], grad: bool = False) -> Tensor:
    return torch.tensor(values, requires_grad=grad)


def test_kd_matches_hand_computation_with_t_squared():
    spec = DistillSpec(ce_weight=0.1, kd_weight=0.9, kd_tau=4.0)
    method = create_method("kd", spec, SHAPES, SHAPES)
    terms = method(logits(STUDENT), logits(TEACHER), [], [], torch.tensor(TARGETS))
    assert terms["ce"].item() == pytest.approx(0.1 * batch_ce(STUDENT, TARGETS))
    assert terms["kd"].item() == pytest.approx(0.9 * 16.0 * batch_kl(TEACHER, STUDENT, tau=4.0))
    assert terms["total"].item() == pytest.approx(terms["ce"].item() + terms["kd"].item())
    assert set(terms) == {"ce", "kd", "total"}


def test_kd_weights_and_temperature_change_the_terms():
    base = create_method("kd", DistillSpec(), SHAPES, SHAPES)(
        logits(STUDENT), logits(TEACHER), [], [], torch.tensor(TARGETS)
    )
    doubled = create_method("kd", DistillSpec(ce_weight=0.2, kd_weight=1.8), SHAPES, SHAPES)(
        logits(STUDENT), logits(TEACHER), [], [], torch.tensor(TARGETS)
    )
    hotter = create_method("kd", DistillSpec(kd_tau=2.0), SHAPES, SHAPES)(
        logits(STUDENT), logits(TEACHER), [], [], torch.tensor(TARGETS)
    )
    assert doubled["total"].item() == pytest.approx(2 * base["total"].item())
    assert hotter["kd"].item() == pytest.approx(0.9 * 4.0 * batch_kl(TEACHER, STUDENT, tau=2.0))


def test_kd_is_a_pure_logit_method_without_parameters():
    method = create_method("kd", DistillSpec(), SHAPES, SHAPES)
    assert not method.needs_features
    assert list(method.parameters()) == []


def test_feature_methods_need_features():
    assert create_method("fitnets", DistillSpec(), SHAPES, SHAPES).needs_features
    assert create_method("at", DistillSpec(), SHAPES, SHAPES).needs_features


def test_teacher_inputs_need_no_gradient():
    student_features = [f.requires_grad_() for f in features(SHAPES)]
    with torch.no_grad():
        teacher_features = features(SHAPES, seed=1)
        teacher_logits = logits(TEACHER)
    student_logits = logits(STUDENT, grad=True)
    for name in ("kd", "fitnets", "at"):
        method = create_method(name, DistillSpec(), SHAPES, SHAPES)
        terms = method(student_logits, teacher_logits, student_features, teacher_features, torch.tensor(TARGETS))
        terms["total"].backward()
    assert student_logits.grad is not None and student_logits.grad.abs().sum() > 0
    assert all(f.grad is not None for f in student_features)


@pytest.mark.parametrize(
    ("student_shape", "teacher_shape"),
    [((4, 8, 8), (6, 4, 4)), ((4, 2, 2), (6, 4, 4)), ((4, 6, 6), (6, 4, 4)), ((8, 4, 4), (6, 4, 4))],
)
def test_fitnets_regressor_maps_student_to_teacher_shape(student_shape, teacher_shape):
    spec = DistillSpec(hint_block=1)
    method = create_method("fitnets", spec, [teacher_shape, (3, 2, 2)], [student_shape, (3, 2, 2)])
    student = features([student_shape])[0]
    assert method.regressor(student).shape == (2, *teacher_shape)

    terms = method(
        logits(STUDENT),
        logits(TEACHER),
        [student, torch.zeros(2, 3, 2, 2)],
        [features([teacher_shape], seed=1)[0], torch.zeros(2, 3, 2, 2)],
        torch.tensor(TARGETS),
    )
    terms["total"].backward()
    grads = [p.grad for p in method.parameters()]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_fitnets_hint_matches_hand_computation():
    """Student (2, 4, 4) is average-pooled to 2x2, mapped by a known 1x1 conv, then BN in eval mode."""
    spec = DistillSpec(hint_block=1, ce_weight=0.0, kd_weight=0.0)
    method = create_method("fitnets", spec, [(3, 2, 2), (3, 2, 2)], [(2, 4, 4), (3, 2, 2)]).eval()
    weight = [[1.0, 0.0], [0.0, 2.0], [1.0, -1.0]]
    with torch.no_grad():
        method.regressor.conv.weight.copy_(torch.tensor(weight).view(3, 2, 1, 1))

    student = [[[float(c * 16 + 4 * y + x) for x in range(4)] for y in range(4)] for c in range(2)]
    teacher = [[[float(k - i + j) for j in range(2)] for i in range(2)] for k in range(3)]
    def pool(c: int, i: int, j: int) -> float:
        return sum(student[c][2 * i + dy][2 * j + dx] for dy in range(2) for dx in range(2)) / 4

    bn_scale = 1 / math.sqrt(1 + 1e-5)  # running mean 0, running var 1, affine identity
    squares = [
        (sum(weight[k][c] * pool(c, i, j) for c in range(2)) * bn_scale - teacher[k][i][j]) ** 2
        for k in range(3)
        for i in range(2)
        for j in range(2)
    ]
    expected = 100.0 * sum(squares) / len(squares)

    terms = method(
        logits(STUDENT),
        logits(TEACHER),
        [torch.tensor([student]), torch.zeros(1, 3, 2, 2)],
        [torch.tensor([teacher]), torch.zeros(1, 3, 2, 2)],
        torch.tensor(TARGETS),
    )
    assert terms["feature"].item() == pytest.approx(expected, rel=1e-5)
    assert terms["total"].item() == pytest.approx(expected, rel=1e-5)


def test_fitnets_uses_the_chosen_hint_block_and_weight():
    shapes_t, shapes_s = [(8, 4, 4), (16, 2, 2)], [(2, 4, 4), (4, 2, 2)]
    method = create_method("fitnets", DistillSpec(hint_block=2, feature_weight=5.0), shapes_t, shapes_s)
    assert (method.regressor.conv.in_channels, method.regressor.conv.out_channels) == (4, 16)
    assert method.feature_weight == 5.0
    assert create_method("fitnets", DistillSpec(), shapes_t, shapes_s).feature_weight == 100.0


def test_fitnets_hint_block_out_of_range_is_a_user_error():
    with pytest.raises(SplicerError, match="hint_block 3 is out of range.*1..2"):
        create_method("fitnets", DistillSpec(hint_block=3), SHAPES, SHAPES)


def test_at_matches_hand_computation_on_every_block_pair():
    """Pair 1: teacher 4x4 pooled to the student's 2x2. Pair 2: student 4x4 pooled to the teacher's 2x2."""
    student_1 = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])  # a_s = [1, 0, 0, 0]
    teacher_1 = torch.ones(1, 2, 4, 4)  # pooled: ones; a_t = [1/2, 1/2, 1/2, 1/2]
    # Pair 1: (a_s - a_t)^2 = 1/4 everywhere, mean 1/4.
    student_2 = torch.zeros(1, 1, 4, 4)
    student_2[0, 0, 0, 0] = 4.0  # top-left 2x2 cell pools to 1 ...
    student_2[0, 0, 0:2, 2:4] = 1.0  # ... and so does the top-right one: a_s = [1/sqrt2, 1/sqrt2, 0, 0]
    teacher_2 = torch.tensor([[[[0.0, 0.0], [0.0, 3.0]]]])  # a_t = [0, 0, 0, 1]
    # Pair 2: squares 1/2, 1/2, 0, 1, mean 1/2. Pairs are summed: 3/4.
    shapes_s, shapes_t = [(1, 2, 2), (1, 4, 4)], [(2, 4, 4), (1, 2, 2)]
    method = create_method("at", DistillSpec(ce_weight=0.0, kd_weight=0.0), shapes_t, shapes_s)
    terms = method(
        logits(STUDENT), logits(TEACHER), [student_1, student_2], [teacher_1, teacher_2], torch.tensor(TARGETS)
    )
    assert terms["feature"].item() == pytest.approx(1000.0 * 0.75)
    assert terms["total"].item() == pytest.approx(1000.0 * 0.75)


def test_at_is_zero_for_equal_features_and_ignores_channel_count():
    same = features(SHAPES)
    method = create_method("at", DistillSpec(), SHAPES, SHAPES)
    terms = method(logits(STUDENT), logits(TEACHER), same, same, torch.tensor(TARGETS))
    assert terms["feature"].item() == pytest.approx(0.0, abs=1e-12)

    widened = [torch.cat([f, f], dim=1) for f in same]  # same attention maps, twice the channels
    wide_shapes = [(2 * c, h, w) for c, h, w in SHAPES]
    method = create_method("at", DistillSpec(), wide_shapes, SHAPES)
    terms = method(logits(STUDENT), logits(TEACHER), same, widened, torch.tensor(TARGETS))
    assert terms["feature"].item() == pytest.approx(0.0, abs=1e-9)


def test_unknown_method_lists_valid_names_with_a_suggestion():
    with pytest.raises(SplicerError, match=r"'fitnet'; did you mean 'fitnets'.*\? Valid methods: .*at.*fitnets.*kd"):
        create_method("fitnet", DistillSpec(), SHAPES, SHAPES)
    with pytest.raises(SplicerError, match=r"'zzz'\. Valid methods"):
        create_method("zzz", DistillSpec(), SHAPES, SHAPES)


def test_block_count_mismatch_is_a_user_error():
    with pytest.raises(SplicerError, match="same number of blocks"):
        create_method("kd", DistillSpec(), SHAPES, SHAPES[:1])


def test_a_new_method_registers_without_touching_other_code(monkeypatch):
    monkeypatch.setattr(method_base, "METHODS", dict(method_base.METHODS))

    @register_method("mean_gap")
    class MeanGap(DistillMethod):
        needs_features = True

        def feature_terms(self, student_features, teacher_features):
            gap = sum((s.mean() - t.mean()).abs() for s, t in zip(student_features, teacher_features))
            return {"gap": 2.0 * gap}

    with pytest.raises(ValueError, match="already registered"):
        register_method("mean_gap")(MeanGap)

    method = create_method("mean_gap", DistillSpec(), SHAPES, SHAPES)
    assert isinstance(method, MeanGap) and method.needs_features
    student, teacher = features(SHAPES), [f + 1.0 for f in features(SHAPES)]
    terms = method(logits(STUDENT), logits(TEACHER), student, teacher, torch.tensor(TARGETS))
    assert terms["gap"].item() == pytest.approx(2.0 * len(SHAPES))
    assert terms["total"].item() == pytest.approx(terms["ce"].item() + terms["kd"].item() + terms["gap"].item())


def test_method_options_are_validated_by_the_method(monkeypatch):
    monkeypatch.setattr(method_base, "METHODS", dict(method_base.METHODS))

    class ScaledOptions(method_base.MethodOptions):
        scale: float = 2.0

    @register_method("scaled")
    class Scaled(DistillMethod):
        Options = ScaledOptions

    assert create_method("scaled", DistillSpec(), SHAPES, SHAPES).options.scale == 2.0
    chosen = DistillSpec(options={"scaled": {"scale": 5.0}})
    assert create_method("scaled", chosen, SHAPES, SHAPES).options.scale == 5.0
    with pytest.raises(SplicerError, match=r"distill\.options\.scaled\.scal: .*valid fields of scaled: scale"):
        create_method("scaled", DistillSpec(options={"scaled": {"scal": 1.0}}), SHAPES, SHAPES)
    with pytest.raises(SplicerError, match=r"distill\.options: 'scaledd' is not a distillation method; did you mean 'scaled'"):
        create_method("kd", DistillSpec(options={"scaledd": {}}), SHAPES, SHAPES)
