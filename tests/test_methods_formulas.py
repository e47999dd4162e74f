"""SP, VID, RKD, PKT and DKD against independent computations of their formulas.

Each reference is written from the paper's (and the authors' code's) definition with Python
loops over plain lists, sharing nothing with the implementation; the fixed inputs are drawn
once from a seeded generator.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from splicer.spec.schema import DistillSpec
from splicer.training.methods import create_method, kd_loss
from splicer.training.methods.dkd import dkd_loss

NO_LOGITS = {"ce_weight": 0.0, "kd_weight": 0.0}


def fixed(*shape: int, seed: int) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def logit_pair(batch: int, classes: int = 5) -> tuple[Tensor, Tensor, Tensor]:
    return fixed(batch, classes, seed=90), fixed(batch, classes, seed=91), torch.arange(batch) % classes


def flat(sample: list) -> list[float]:
    """One sample's nested C x H x W list, flattened in C, H, W order."""
    if not isinstance(sample, list):
        return [sample]
    return [value for part in sample for value in flat(part)]


def spatial_mean(sample: list[list[list[float]]]) -> list[float]:
    """One sample's C x H x W list averaged over H and W: its globally pooled feature vector."""
    return [sum(sum(row) for row in channel) / (len(channel) * len(channel[0])) for channel in sample]


def dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def huber(x: float) -> float:
    """Smooth L1 with threshold 1 (torch's default, the authors' F.smooth_l1_loss)."""
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def run(name: str, student: list[Tensor], teacher: list[Tensor], spec: DistillSpec | None = None, method=None):
    spec = spec or DistillSpec(**NO_LOGITS)
    if method is None:
        method = create_method(name, spec, [tuple(t.shape[1:]) for t in teacher], [tuple(s.shape[1:]) for s in student])
    s_logits, t_logits, targets = logit_pair(len(student[0]))
    return method(s_logits, t_logits, student, teacher, targets)


# SP: Tung & Mori, G = F F^T row-normalised, ||G_T - G_S||_F^2 / b^2, on the last block.


def sp_reference(student: list, teacher: list) -> float:
    def normalised_gram(batch: list) -> list[list[float]]:
        vectors = [flat(sample) for sample in batch]
        gram = [[dot(a, b) for b in vectors] for a in vectors]
        return [[g / math.sqrt(sum(x * x for x in row)) for g in row] for row in gram]

    g_s, g_t = normalised_gram(student), normalised_gram(teacher)
    b = len(student)
    return sum((g_t[i][j] - g_s[i][j]) ** 2 for i in range(b) for j in range(b)) / b**2


def test_sp_matches_its_formula_on_the_last_block_only():
    student = [fixed(3, 2, 4, 4, seed=1), fixed(3, 2, 2, 2, seed=2)]
    teacher = [fixed(3, 5, 4, 4, seed=3), fixed(3, 4, 1, 1, seed=4)]
    expected = 3000.0 * sp_reference(student[-1].tolist(), teacher[-1].tolist())
    terms = run("sp", student, teacher)
    assert terms["feature"].item() == pytest.approx(expected, rel=1e-5)
    assert terms["total"].item() == pytest.approx(expected, rel=1e-5)
    earlier_changed = run("sp", [student[0] * 3 + 1, student[1]], [teacher[0] - 2, teacher[1]])
    assert earlier_changed["feature"].item() == pytest.approx(expected, rel=1e-6)


# VID: Ahn et al., -log N(t | mu(s), sigma^2) up to a constant, sigma_c^2 = softplus(alpha_c) + eps.


def vid_reference(student: list, teacher: list, weights: list[list[list[float]]], log_scale: list[float]) -> float:
    """Mean over b, c, h, w of 0.5 ((t - mu)^2 / var_c + log var_c), mu = W3 relu(W2 relu(W1 s))."""
    variances = [math.log(1 + math.exp(a)) + 1e-5 for a in log_scale]

    def linear(matrix: list[list[float]], vector: list[float]) -> list[float]:
        return [dot(row, vector) for row in matrix]

    total, count = 0.0, 0
    for s_sample, t_sample in zip(student, teacher):
        height, width = len(t_sample[0]), len(t_sample[0][0])
        for y in range(height):
            for x in range(width):
                hidden = [max(v, 0.0) for v in linear(weights[0], [channel[y][x] for channel in s_sample])]
                hidden = [max(v, 0.0) for v in linear(weights[1], hidden)]
                mean = linear(weights[2], hidden)
                for c, variance in enumerate(variances):
                    total += 0.5 * ((t_sample[c][y][x] - mean[c]) ** 2 / variance + math.log(variance))
                    count += 1
    return total / count


def pool2(sample: list) -> list:
    """Average-pool a C x 2H x 2W list to C x H x W (2 x 2 windows)."""
    return [
        [
            [
                sum(channel[2 * y + dy][2 * x + dx] for dy in (0, 1) for dx in (0, 1)) / 4
                for x in range(len(channel[0]) // 2)
            ]
            for y in range(len(channel) // 2)
        ]
        for channel in sample
    ]


def test_vid_matches_its_formula_on_every_block_and_pools_the_larger_feature():
    student = [fixed(2, 2, 2, 2, seed=5), fixed(2, 3, 4, 4, seed=6)]  # block 2: the student is pooled to 2x2
    teacher = [fixed(2, 3, 2, 2, seed=7), fixed(2, 4, 2, 2, seed=8)]
    method = create_method("vid", DistillSpec(**NO_LOGITS), [(3, 2, 2), (4, 2, 2)], [(2, 2, 2), (3, 4, 4)])
    references = []
    for index, regressor in enumerate(method.regressors):
        with torch.no_grad():
            for layer, seed in zip((0, 2, 4), (10, 11, 12)):
                conv = regressor.mean[layer]
                conv.weight.copy_(fixed(*conv.weight.shape, seed=seed + 10 * index) * 0.7)
            regressor.log_scale.copy_(fixed(len(regressor.log_scale), seed=20 + index))
        weights = [regressor.mean[layer].weight[:, :, 0, 0].tolist() for layer in (0, 2, 4)]
        s_batch = student[index].tolist()
        if index == 1:
            s_batch = [pool2(sample) for sample in s_batch]
        references.append(vid_reference(s_batch, teacher[index].tolist(), weights, regressor.log_scale.tolist()))
    terms = run("vid", student, teacher, method=method)
    assert terms["feature"].item() == pytest.approx(sum(references), rel=1e-5)


def test_vid_variance_starts_at_the_authors_init_and_is_an_option():
    method = create_method("vid", DistillSpec(), [(3, 2, 2)], [(2, 2, 2)])
    assert torch.allclose(method.regressors[0].variance(), torch.full((3,), 5.0))
    chosen = create_method("vid", DistillSpec(options={"vid": {"init_variance": 2.0}}), [(3, 2, 2)], [(2, 2, 2)])
    assert torch.allclose(chosen.regressors[0].variance(), torch.full((3,), 2.0))
    assert [m.mean[0].in_channels for m in method.regressors] == [2]
    assert [m.mean[4].out_channels for m in method.regressors] == [3]


# RKD: Park et al., Huber losses between normalised distances and between angles, pooled features.


def rkd_reference(student: list, teacher: list) -> tuple[float, float]:
    def distances(vectors: list[list[float]]) -> list[list[float]]:
        d = [[math.sqrt(sum((a - b) ** 2 for a, b in zip(u, v))) for v in vectors] for u in vectors]
        positive = [x for row in d for x in row if x > 0]
        mean = sum(positive) / len(positive)
        return [[x / mean for x in row] for row in d]

    def unit(u: list[float], v: list[float]) -> list[float]:
        diff = [b - a for a, b in zip(u, v)]
        norm = math.sqrt(sum(x * x for x in diff))
        return [x / norm for x in diff] if norm > 0 else [0.0] * len(diff)

    def cosines(vectors: list[list[float]]) -> list[float]:
        return [dot(unit(o, j), unit(o, k)) for o in vectors for j in vectors for k in vectors]

    s_vectors, t_vectors = [spatial_mean(x) for x in student], [spatial_mean(x) for x in teacher]
    d_s, d_t = distances(s_vectors), distances(t_vectors)
    n = len(student)
    distance = sum(huber(d_s[i][j] - d_t[i][j]) for i in range(n) for j in range(n)) / n**2
    a_s, a_t = cosines(s_vectors), cosines(t_vectors)
    angle = sum(huber(x - y) for x, y in zip(a_s, a_t)) / n**3
    return distance, angle


def test_rkd_matches_its_formula_on_the_pooled_last_features():
    student = [fixed(4, 2, 2, 2, seed=30), fixed(4, 3, 2, 2, seed=31) * 3]  # large enough for both Huber regimes
    teacher = [fixed(4, 2, 2, 2, seed=32), fixed(4, 5, 2, 2, seed=33)]
    distance, angle = rkd_reference(student[-1].tolist(), teacher[-1].tolist())
    terms = run("rkd", student, teacher)
    assert terms["distance"].item() == pytest.approx(25.0 * distance, rel=1e-5)
    assert terms["angle"].item() == pytest.approx(50.0 * angle, rel=1e-5)
    assert terms["total"].item() == pytest.approx(25.0 * distance + 50.0 * angle, rel=1e-5)
    no_angle = DistillSpec(**NO_LOGITS, feature_weight=2.0, options={"rkd": {"angle_weight": 0.0}})
    weighted = run("rkd", student, teacher, no_angle)
    assert weighted["total"].item() == pytest.approx(2.0 * 25.0 * distance, rel=1e-5)


# PKT: Passalis & Tefas, KL between conditional distributions of cosine similarities.


def pkt_reference(student: list, teacher: list) -> float:
    eps = 1e-7

    def distribution(batch: list) -> list[list[float]]:
        vectors = [spatial_mean(x) for x in batch]
        units = [[v / (math.sqrt(sum(x * x for x in u)) + eps) for v in u] for u in vectors]
        similarity = [[(dot(a, b) + 1) / 2 for b in units] for a in units]
        return [[x / sum(row) for x in row] for row in similarity]

    p_s, p_t = distribution(student), distribution(teacher)
    n = len(student)
    return sum(p_t[i][j] * math.log((p_t[i][j] + eps) / (p_s[i][j] + eps)) for i in range(n) for j in range(n)) / n**2


def test_pkt_matches_its_formula_on_the_pooled_last_features():
    student = [fixed(5, 2, 2, 2, seed=40), fixed(5, 3, 2, 2, seed=41)]
    teacher = [fixed(5, 2, 2, 2, seed=42), fixed(5, 6, 1, 1, seed=43)]
    expected = 30000.0 * pkt_reference(student[-1].tolist(), teacher[-1].tolist())
    terms = run("pkt", student, teacher)
    assert terms["feature"].item() == pytest.approx(expected, rel=1e-4)
    assert run("pkt", teacher, teacher)["feature"].item() == pytest.approx(0.0, abs=1e-3)


# DKD: Zhao et al., T^2 (alpha TCKD + beta NCKD), warmed up linearly, plus CE weight 1.


def softmax(row: list[float], tau: float) -> list[float]:
    exps = [math.exp(v / tau) for v in row]
    return [e / sum(exps) for e in exps]


def kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def dkd_reference(student: list, teacher: list, targets: list[int], alpha: float, beta: float, tau: float) -> float:
    total = 0.0
    for z_s, z_t, y in zip(student, teacher, targets):
        p_s, p_t = softmax(z_s, tau), softmax(z_t, tau)
        tckd = kl([p_t[y], 1 - p_t[y]], [p_s[y], 1 - p_s[y]])
        others = [c for c in range(len(z_s)) if c != y]
        nckd = kl(softmax([z_t[c] for c in others], tau), softmax([z_s[c] for c in others], tau))
        total += tau**2 * (alpha * tckd + beta * nckd)
    return total / len(targets)


def cross_entropy(student: list, targets: list[int]) -> float:
    return sum(-math.log(softmax(z, 1.0)[y]) for z, y in zip(student, targets)) / len(targets)


@pytest.mark.parametrize(("epoch", "warmup"), [(0, 1 / 20), (9, 10 / 20), (19, 1.0), (150, 1.0)])
def test_dkd_matches_its_formula_with_the_linear_warmup(epoch: int, warmup: float):
    s_logits, t_logits, targets = logit_pair(4)
    method = create_method("dkd", DistillSpec(), [(2, 2, 2)], [(2, 2, 2)])
    method.set_epoch(epoch)
    terms = method(s_logits, t_logits, [], [], targets)
    expected = warmup * dkd_reference(s_logits.tolist(), t_logits.tolist(), targets.tolist(), 1.0, 8.0, 4.0)
    assert set(terms) == {"ce", "kd", "total"}
    assert terms["kd"].item() == pytest.approx(expected, rel=1e-5)
    assert terms["ce"].item() == pytest.approx(cross_entropy(s_logits.tolist(), targets.tolist()), rel=1e-5)
    assert terms["total"].item() == pytest.approx(terms["ce"].item() + expected, rel=1e-5)


def test_dkd_options_and_that_kd_decomposes_into_tckd_and_nckd():
    s_logits, t_logits, targets = logit_pair(3)
    options = {"dkd": {"alpha": 2.0, "beta": 3.0, "temperature": 2.0, "warmup_epochs": 1, "ce_weight": 0.5}}
    terms = create_method("dkd", DistillSpec(options=options), [(2, 2, 2)], [(2, 2, 2)])(
        s_logits, t_logits, [], [], targets
    )
    expected = dkd_reference(s_logits.tolist(), t_logits.tolist(), targets.tolist(), 2.0, 3.0, 2.0)
    assert terms["kd"].item() == pytest.approx(expected, rel=1e-5)
    assert terms["ce"].item() == pytest.approx(0.5 * cross_entropy(s_logits.tolist(), targets.tolist()), rel=1e-5)
    # The paper's identity, per sample: KD = TCKD + (1 - p_T(target)) NCKD.
    for row in range(3):
        z_s, z_t, y = s_logits[row : row + 1], t_logits[row : row + 1], targets[row : row + 1]
        tckd = dkd_loss(z_s, z_t, y, alpha=1.0, beta=0.0, tau=4.0)
        nckd = dkd_loss(z_s, z_t, y, alpha=0.0, beta=1.0, tau=4.0)
        p_target = torch.softmax(z_t / 4.0, dim=1)[0, y].item()
        assert kd_loss(z_s, z_t, 4.0).item() == pytest.approx((tckd + (1 - p_target) * nckd).item(), rel=1e-5)


def test_dkd_stays_finite_when_the_student_is_certain():
    """p_S(non-targets) underflows to 0 in float32 here; the loss and its gradient must stay finite."""
    student = torch.tensor([[800.0, 0.0, -3.0]], requires_grad=True)
    teacher = torch.tensor([[0.0, 1.0, 2.0]])
    loss = dkd_loss(student, teacher, torch.tensor([0]), alpha=1.0, beta=8.0, tau=4.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()
    # The target-class part is then -log of the student's non-target probability, linear in the margin.
    p_target = torch.softmax(teacher / 4.0, dim=1)[0, 0].item()
    log_others = math.log(math.exp(0.0) + math.exp(-3.0 / 4.0)) - 800.0 / 4.0
    tckd = p_target * math.log(p_target) + (1 - p_target) * (math.log(1 - p_target) - log_others)
    # (the student's target log-probability is ~0 here: log(1 - e^{-200}) rounds to 0)
    nckd = dkd_loss(student, teacher, torch.tensor([0]), alpha=0.0, beta=1.0, tau=4.0).item()
    assert loss.item() == pytest.approx(16.0 * tckd + 8.0 * nckd, rel=1e-5)


@pytest.mark.parametrize("name", ["sp", "rkd", "pkt"])
def test_batch_relations_are_computed_in_float32_under_bf16_autocast(name: str):
    """On CUDA training runs under bf16 autocast; the relation methods must not inherit its precision."""
    student = [fixed(6, 3, 4, 4, seed=50).bfloat16()]
    teacher = [fixed(6, 5, 4, 4, seed=51).bfloat16()]
    reference = run(name, [f.float() for f in student], [f.float() for f in teacher])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = run(name, student, teacher)
    for term in reference:
        if term not in ("ce", "kd", "total"):
            assert autocast[term].dtype == torch.float32
            assert autocast[term].item() == pytest.approx(reference[term].item(), rel=1e-5), term
