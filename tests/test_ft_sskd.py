"""FT and SSKD against independent computations of their formulas (loops and explicit sums on
fixed small tensors), and which parameters their phases and main objectives train."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from splicer.assembly.modules import BlockNet
from splicer.errors import SplicerError
from splicer.spec.schema import DistillSpec
from splicer.training.methods import create_method, phase_epochs
from splicer.training.methods.ft import factor_loss
from splicer.training.methods.sskd import kept_rows, rotated
from splicer.training.phases import phase_training
from splicer.training.stage2 import distill_loss

# ---------------------------------------------------------------- independent helpers


def softmax(row: list[float], tau: float = 1.0) -> list[float]:
    exps = [math.exp(v / tau) for v in row]
    return [e / sum(exps) for e in exps]


def kl(target_row: list[float], input_row: list[float], tau: float) -> float:
    p, q = softmax(target_row, tau), softmax(input_row, tau)
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def rank_of(row: list[float], target: int) -> int:
    """How many entries beat the target's: 0 when the row picks its target."""
    return sum(1 for v in row if v > row[target])


def selection(rows: list[list[float]], targets: list[int], ratio: float) -> list[int]:
    """SSKD's error-correcting selection, written out: all right rows, then the best-ranked wrong ones."""
    ranks = [rank_of(row, t) for row, t in zip(rows, targets)]
    right = [i for i, r in enumerate(ranks) if r == 0]
    wrong = sorted((i for i, r in enumerate(ranks) if r > 0), key=lambda i: (ranks[i], i))
    return sorted(right + wrong[: int(len(wrong) * ratio)])


def nested(t: Tensor) -> list:
    return t.detach().double().tolist()


# ---------------------------------------------------------------- FT


def test_factor_loss_matches_a_loop_over_normalised_factor_maps():
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(2, 3, 4, 4, generator=generator)  # pooled 2x2 to the teacher's size
    teacher = torch.randn(2, 5, 2, 2, generator=generator)

    def factor(f: list, channels: int, size: int) -> list[float]:
        m = [sum(f[c][i][j] ** 2 for c in range(channels)) / channels for i in range(size) for j in range(size)]
        norm = math.sqrt(sum(v * v for v in m))
        return [v / norm for v in m]

    s, t = nested(student), nested(teacher)
    total, count = 0.0, 0
    for n in range(2):
        def pool(c: int, i: int, j: int) -> float:
            return sum(s[n][c][2 * i + a][2 * j + b] for a in range(2) for b in range(2)) / 4

        pooled = [[[pool(c, i, j) for j in range(2)] for i in range(2)] for c in range(3)]
        for x, y in zip(factor(pooled, 3, 2), factor(t[n], 5, 2)):
            total += abs(x - y)
            count += 1
    assert factor_loss(student, teacher).item() == pytest.approx(total / count, rel=1e-5)
    assert factor_loss(teacher, teacher).item() == pytest.approx(0.0, abs=1e-7)


def test_ft_feature_term_is_200_times_the_factor_loss_of_translator_and_paraphraser_encoder():
    t_shapes, s_shapes = [(4, 4, 4), (8, 2, 2)], [(2, 4, 4), (6, 2, 2)]
    method = create_method("ft", DistillSpec(), t_shapes, s_shapes).eval()
    assert method.translator.encoder[3].out_channels == 4  # rate 0.5 of the teacher's 8 channels
    generator = torch.Generator().manual_seed(1)
    s_feats = [torch.randn(2, *s, generator=generator) for s in s_shapes]
    t_feats = [torch.randn(2, *t, generator=generator) for t in t_shapes]
    s_logits, t_logits = torch.randn(2, 3, generator=generator), torch.randn(2, 3, generator=generator)
    targets = torch.tensor([0, 2])
    terms = method(s_logits, t_logits, s_feats, t_feats, targets)
    factor_s = method.translator(s_feats[-1])
    factor_t = method.paraphraser.encoder(t_feats[-1])
    assert factor_s.shape == factor_t.shape == (2, 4, 2, 2)
    assert terms["feature"].item() == pytest.approx(200.0 * factor_loss(factor_s, factor_t).item(), rel=1e-6)
    ce = sum(-math.log(softmax(row)[y]) for row, y in zip(nested(s_logits), [0, 2])) / 2
    kd = 16.0 * sum(kl(t, s, 4.0) for t, s in zip(nested(t_logits), nested(s_logits))) / 2
    assert terms["ce"].item() == pytest.approx(0.1 * ce, rel=1e-6)
    assert terms["kd"].item() == pytest.approx(0.9 * kd, rel=1e-5)
    assert set(terms) == {"ce", "kd", "feature", "total"}


def toy_blocknet(channels: list[int], classes: int = 3, seed: int = 0) -> BlockNet:
    torch.manual_seed(seed)
    blocks, cin = [], 3
    for index, cout in enumerate(channels):
        blocks.append(nn.Sequential(nn.Conv2d(cin, cout, 3, 1 + (index > 0), 1), nn.BatchNorm2d(cout), nn.ReLU()))
        cin = cout
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes))
    return BlockNet(blocks, head)


def shapes(network: BlockNet) -> list[tuple[int, int, int]]:
    network.eval()
    with torch.no_grad():
        features, _ = network.forward_features(torch.zeros(1, 3, 8, 8))
    return [tuple(f.shape[1:]) for f in features]


def pair() -> tuple[BlockNet, BlockNet]:
    teacher = toy_blocknet([4, 8], seed=0).requires_grad_(False)
    return toy_blocknet([2, 6], seed=1), teacher


def any_gradient(*modules: nn.Module) -> bool:
    """Whether any parameter of these modules received a gradient."""
    return any(p.grad is not None for module in modules for p in module.parameters())


def test_ft_paraphraser_phase_reconstructs_the_teacher_feature_and_trains_only_the_paraphraser():
    student, teacher = pair()
    method = create_method("ft", DistillSpec(), shapes(teacher), shapes(student))
    (phase,) = method.phases(student, teacher, main_epochs=240)
    assert (phase.name, phase.epochs, phase.lr) == ("paraphraser", 30, 0.01) and phase.milestones == []
    images = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    with phase_training(phase, [student, teacher, method]):
        terms, logits = phase.loss(images, torch.tensor([0, 1]))
        terms["total"].backward()
        assert method.paraphraser.training and not teacher.training and not student.training
    with torch.no_grad():
        target = teacher.forward_features(images)[0][-1]
        rebuilt = method.paraphraser(target)
    t, r = nested(target), nested(rebuilt)
    squares = [
        (r[n][c][i][j] - t[n][c][i][j]) ** 2
        for n in range(2)
        for c in range(8)
        for i in range(4)
        for j in range(4)
    ]
    assert logits is None
    assert terms["reconstruction"].item() == pytest.approx(sum(squares) / len(squares), rel=1e-5)
    assert all(p.grad is not None for p in method.paraphraser.parameters())
    assert not any_gradient(student, teacher, method.translator)
    # afterwards the paraphraser is frozen again for the main distillation
    assert not any(p.requires_grad for p in method.paraphraser.parameters())
    assert all(p.requires_grad for p in student.parameters())


def test_ft_main_loss_trains_the_student_and_translator_never_the_teacher_or_paraphraser():
    student, teacher = pair()
    method = create_method("ft", DistillSpec(), shapes(teacher), shapes(student)).train()
    student.train()
    terms, _ = distill_loss(student, teacher, method)(torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0]))
    terms["total"].backward()
    assert all(p.grad is not None for p in [*student.parameters(), *method.translator.parameters()])
    assert not any_gradient(teacher, method.paraphraser)


# ---------------------------------------------------------------- SSKD


def test_rotated_stacks_the_four_rotations_counterclockwise():
    image = torch.arange(6.0).view(1, 1, 2, 3)
    with pytest.raises(SplicerError, match="square.*2x3"):
        rotated(image)
    image = torch.arange(8.0).view(2, 1, 2, 2)  # two images [[a, b], [c, d]]
    stacked = rotated(image)
    assert stacked.shape == (8, 1, 2, 2)
    for n in range(2):
        a, b, c, d = image[n, 0].flatten().tolist()
        assert stacked[n, 0].tolist() == [[a, b], [c, d]]
        assert stacked[2 + n, 0].tolist() == [[b, d], [a, c]]  # 90 degrees counterclockwise
        assert stacked[4 + n, 0].tolist() == [[d, c], [b, a]]
        assert stacked[6 + n, 0].tolist() == [[c, a], [d, b]]


def test_kept_rows_keeps_the_right_rows_and_the_best_ranked_share_of_the_wrong_ones():
    scores = torch.tensor(
        [
            [3.0, 1.0, 0.0],  # target 0: right
            [0.0, 1.0, 2.0],  # target 0: rank 2
            [1.0, 2.0, 0.0],  # target 0: rank 1
            [0.0, 5.0, 1.0],  # target 1: right
            [2.0, 1.0, 0.0],  # target 2: rank 2
            [1.0, 0.0, 2.0],  # target 0: rank 1
        ]
    )
    targets = torch.tensor([0, 0, 0, 1, 2, 0])
    for ratio in (0.0, 0.25, 0.5, 0.6, 0.75, 1.0):
        mask = kept_rows(scores, targets, ratio)
        expected = selection(scores.tolist(), targets.tolist(), ratio)
        assert torch.nonzero(mask).flatten().tolist() == expected, ratio
    assert torch.nonzero(kept_rows(scores, targets, 0.5)).flatten().tolist() == [0, 2, 3, 5]


def sskd_reference(
    s_logits: list, t_logits: list, s_reps: list, t_reps: list, targets: list[int], options: dict
) -> dict[str, float]:
    """The SSKD objective written out for a rotated batch (rows k*B+i: image i rotated k times)."""
    batch = len(targets)
    ce = sum(-math.log(softmax(s_logits[i])[targets[i]]) for i in range(batch)) / batch
    kd = 16.0 * sum(kl(t_logits[i], s_logits[i], 4.0) for i in range(batch)) / batch
    copies = range(batch, 4 * batch)
    copy_labels = [targets[r % batch] for r in copies]
    keep = selection([t_logits[r] for r in copies], copy_labels, options["tf_ratio"])
    tau = options["tf_tau"]
    tf = tau**2 * sum(kl(t_logits[batch + k], s_logits[batch + k], tau) for k in keep) / len(keep)
    s_sim = [[cosine(s_reps[r], s_reps[i]) for i in range(batch)] for r in copies]
    t_sim = [[cosine(t_reps[r], t_reps[i]) for i in range(batch)] for r in copies]
    keep = selection(t_sim, [r % batch for r in copies], options["ss_ratio"])
    tau = options["ss_tau"]
    ss = tau**2 * sum(kl(t_sim[k], s_sim[k], tau) for k in keep) / len(keep)
    return {"ce": 0.1 * ce, "kd": 0.9 * kd, "tf": options["tf_weight"] * tf, "ss": options["ss_weight"] * ss}


@pytest.mark.parametrize("ratios", [(1.0, 0.75), (0.5, 0.25)])
def test_sskd_terms_match_the_written_out_objective(ratios):
    options = {"tf_weight": 2.7, "ss_weight": 10.0, "tf_tau": 4.0, "ss_tau": 0.5}
    options.update(tf_ratio=ratios[0], ss_ratio=ratios[1])
    spec = DistillSpec(options={"sskd": {"tf_ratio": ratios[0], "ss_ratio": ratios[1]}})
    method = create_method("sskd", spec, [(3, 2, 2)], [(3, 2, 2)])
    generator = torch.Generator().manual_seed(3)
    batch, classes = 3, 4
    s_logits = torch.randn(4 * batch, classes, generator=generator)
    t_logits = 2 * torch.randn(4 * batch, classes, generator=generator)
    s_reps = torch.randn(4 * batch, 5, generator=generator)
    t_reps = torch.randn(4 * batch, 5, generator=generator)
    targets = torch.tensor([1, 3, 0])
    terms = method.terms(s_logits, t_logits, s_reps, t_reps, targets)
    expected = sskd_reference(nested(s_logits), nested(t_logits), nested(s_reps), nested(t_reps), [1, 3, 0], options)
    for name, value in expected.items():
        assert terms[name].item() == pytest.approx(value, rel=1e-5), name
    assert terms["total"].item() == pytest.approx(sum(expected.values()), rel=1e-5)
    assert set(terms) == {"ce", "kd", "tf", "ss", "total"}


def test_sskd_defaults_are_the_authors():
    method = create_method("sskd", DistillSpec(), [(3, 2, 2)], [(3, 2, 2)])
    o = method.options
    assert (o.tf_weight, o.ss_weight, o.tf_tau, o.ss_tau, o.tf_ratio, o.ss_ratio) == (2.7, 10.0, 4.0, 0.5, 1.0, 0.75)
    (phase,) = method.phases(*pair(), main_epochs=240)
    assert (phase.name, phase.epochs, phase.lr, phase.milestones) == ("teacher-head", 60, 0.05, [30, 45])


def test_phase_epochs_scale_with_the_main_schedule_unless_chosen():
    assert phase_epochs(None, 30, 240, 240) == 30
    assert phase_epochs(None, 30, 240, 8) == 1
    assert phase_epochs(None, 60, 240, 8) == 2
    assert phase_epochs(None, 60, 240, 1) == 1
    assert phase_epochs(5, 60, 240, 8) == 5
    chosen = DistillSpec(options={"ft": {"paraphraser_epochs": 3}})
    (phase,) = create_method("ft", chosen, [(3, 2, 2)], [(3, 2, 2)]).phases(*pair(), main_epochs=240)
    assert phase.epochs == 3
    with pytest.raises(SplicerError, match=r"distill\.options\.sskd\.head_epochs"):
        create_method("sskd", DistillSpec(options={"sskd": {"head_epochs": 0}}), [(3, 2, 2)], [(3, 2, 2)])


def test_sskd_head_phase_is_the_similarity_cross_entropy_and_trains_only_the_teacher_head():
    student, teacher = pair()
    method = create_method("sskd", DistillSpec(), shapes(teacher), shapes(student))
    (phase,) = method.phases(student, teacher, main_epochs=8)
    images = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    with phase_training(phase, [student, teacher, method]):
        terms, logits = phase.loss(images, torch.tensor([0, 1]))
        terms["total"].backward()
    with torch.no_grad():
        reps = nested(method.teacher_head(teacher.forward_features(rotated(images))[0][-1].mean(dim=(2, 3))))
    rows = [[cosine(reps[r], reps[i]) for i in range(2)] for r in range(2, 8)]
    expected = sum(-math.log(softmax(row)[r % 2]) for row, r in zip(rows, range(2, 8))) / 6
    assert logits is None
    assert terms["similarity_ce"].item() == pytest.approx(expected, rel=1e-5)
    assert all(p.grad is not None for p in method.teacher_head.parameters())
    assert not any_gradient(student, teacher, method.student_head)
    assert not any(p.requires_grad for p in method.teacher_head.parameters())


def test_sskd_main_objective_trains_the_student_and_its_head_only():
    student, teacher = pair()
    method = create_method("sskd", DistillSpec(), shapes(teacher), shapes(student)).train()
    student.train()
    images, labels = torch.randn(3, 3, 8, 8), torch.tensor([0, 1, 2])
    loss = method.objective(student, teacher)
    terms, logits = loss(images, labels)
    assert logits.shape == (3, 3)  # the unrotated images only, scored against the labels
    terms["total"].backward()
    assert all(p.grad is not None for p in [*student.parameters(), *method.student_head.parameters()])
    assert not any_gradient(teacher, method.teacher_head)
    # the objective is the terms of the rotated batch's outputs
    student.eval()
    with torch.no_grad():
        terms, _ = loss(images, labels)
        s_feats, s_logits = student.forward_features(rotated(images))
        t_feats, t_logits = teacher.forward_features(rotated(images))
        direct = method.terms(
            s_logits,
            t_logits,
            method.student_head(s_feats[-1].mean(dim=(2, 3))),
            method.teacher_head(t_feats[-1].mean(dim=(2, 3))),
            labels,
        )
    assert terms["total"].item() == pytest.approx(direct["total"].item(), rel=1e-6)
