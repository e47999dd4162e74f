"""DIST and OFA-KD: their losses against loops written from the papers' formulas, OFA's projectors on
map and token students (one step: gradients reach the student and the projectors only), a
distillation into a ViT student end to end, resume bit-exact for the projectors, and option errors.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from splicer.assembly.build import block_net, build_student, plan_network
from splicer.errors import SplicerError
from splicer.spec import spec_from_dict
from splicer.spec.schema import DistillSpec
from splicer.trace.layouts import FeatureLayout
from splicer.training.methods import create_method
from splicer.training.methods.ofa import PatchMerging, TokenProjector, merge_count
from splicer.training.stage1 import train_teacher
from splicer.training.stage2 import distill, distill_loss, method_for_pair
from tests.conftest import records, toy_spec
from tests.test_phases import Interrupted, assert_same_checkpoint, interrupt_at_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

VIT_STUDENT = {
    "model": "timm:vit_tiny_patch16_224",
    "kwargs": {"img_size": 16, "patch_size": 4, "depth": 3, "embed_dim": 32, "num_heads": 2},
    "blocks": ["blocks.0", "blocks.1", "blocks.2"],
}
SWIN_STUDENT = {  # channels-last (NHWC) block ends: 4x4, 2x2 and 1x1 maps
    "model": "timm:swin_tiny_patch4_window7_224",
    "kwargs": {"img_size": 16, "window_size": 2, "depths": [1, 1, 1], "num_heads": [1, 2, 4], "embed_dim": 16},
    "blocks": "auto",
}
DATA = {"dataset": "synthetic", "synthetic_train": 64, "synthetic_test": 32}
TRAIN = {"epochs": 2, "batch_size": 16, "lr": 0.05, "milestones": [1], "device": "cpu"}


def pair_spec(student: dict | None = None, **distill: object) -> dict:
    """The toy CNN teacher (3x16x16) with the toy CNN student, or ``student``."""
    extra = {"student": student} if student is not None else {}
    return toy_spec(data=DATA, train=TRAIN, distill=dict(distill), **extra)


def networks_and_method(spec_dict: dict, method: str):
    """Fresh teacher and student cut into blocks, and the method built as ``splicer distill`` builds it."""
    spec = spec_from_dict(spec_dict)
    torch.manual_seed(0)
    teacher = block_net(plan_network(spec, spec.teacher, "teacher", spec.source)).eval().requires_grad_(False)
    student = build_student(spec)
    return spec, teacher, student, method_for_pair(spec, method, teacher, student)


# ---- DIST -------------------------------------------------------------------------------------


def softmax_rows(logits: list[list[float]], tau: float) -> list[list[float]]:
    rows = []
    for row in logits:
        exps = [math.exp(z / tau) for z in row]
        rows.append([e / sum(exps) for e in exps])
    return rows


def pearson(a: list[float], b: list[float]) -> float:
    mean_a, mean_b = sum(a) / len(a), sum(b) / len(b)
    covariance = sum((x - mean_a) * (y - mean_b) for x, y in zip(a, b))
    norm_a = math.sqrt(sum((x - mean_a) ** 2 for x in a))
    norm_b = math.sqrt(sum((y - mean_b) ** 2 for y in b))
    return covariance / (norm_a * norm_b + 1e-8)


def cross_entropy_loop(logits: list[list[float]], targets: list[int]) -> float:
    return sum(-math.log(softmax_rows([row], 1.0)[0][y]) for row, y in zip(logits, targets)) / len(targets)


@pytest.mark.parametrize("options", [{}, {"tau": 1.0, "beta": 1.0, "gamma": 3.0, "ce_weight": 0.5}])
def test_dist_matches_a_loop_over_images_and_classes(options: dict):
    torch.manual_seed(1)
    student, teacher = torch.randn(6, 5) * 3, torch.randn(6, 5) * 3
    targets = torch.tensor([0, 1, 2, 3, 4, 0])
    method = create_method("dist", DistillSpec(options={"dist": options}), [], [])
    terms = method(student, teacher, [], [], targets)

    chosen = {"ce_weight": 1.0, "beta": 2.0, "gamma": 2.0, "tau": 4.0, **options}  # the authors' CIFAR defaults
    p_s, p_t = softmax_rows(student.tolist(), chosen["tau"]), softmax_rows(teacher.tolist(), chosen["tau"])
    images, classes = len(p_s), len(p_s[0])
    inter = 1 - sum(pearson(p_s[i], p_t[i]) for i in range(images)) / images
    columns = [([p_s[i][c] for i in range(images)], [p_t[i][c] for i in range(images)]) for c in range(classes)]
    intra = 1 - sum(pearson(s, t) for s, t in columns) / classes
    expected_kd = chosen["tau"] ** 2 * (chosen["beta"] * inter + chosen["gamma"] * intra)
    expected_ce = chosen["ce_weight"] * cross_entropy_loop(student.tolist(), targets.tolist())

    assert set(terms) == {"ce", "kd", "total"}
    assert terms["kd"].item() == pytest.approx(expected_kd, rel=1e-5)
    assert terms["ce"].item() == pytest.approx(expected_ce, rel=1e-5)
    assert terms["total"].item() == pytest.approx(expected_kd + expected_ce, rel=1e-5)


def test_dist_is_zero_for_a_student_that_copies_the_teacher_up_to_a_shift():
    # Pearson correlation ignores a constant shift of all logits: the relation is the same.
    logits = torch.randn(4, 7)
    method = create_method("dist", DistillSpec(options={"dist": {"ce_weight": 0.0}}), [], [])
    targets = torch.zeros(4, dtype=torch.long)
    assert method(logits + 3.0, logits, [], [], targets)["total"].item() < 1e-3  # float32 rounding times tau^2 = 16
    assert method(-logits, logits, [], [], targets)["total"].item() > 1.0


# ---- OFA loss ---------------------------------------------------------------------------------


def ofa_loop(student: list[list[float]], teacher: list[list[float]], targets: list[int], eps: float, t: float) -> float:
    p_s, p_t = softmax_rows(student, t), softmax_rows(teacher, t)
    total = 0.0
    for i, y in enumerate(targets):
        for c in range(len(p_s[i])):
            weight = (p_t[i][c] + 1) ** eps - 1 if c == y else p_t[i][c] ** eps
            total -= weight * math.log(p_s[i][c])
    return total / len(targets)


@pytest.mark.parametrize(
    "options", [{}, {"eps": [1.5, 0.8, 1.2, 2.0], "temperature": 2.0, "loss_weight": 0.5, "kd_weight": 0.3}]
)
def test_ofa_terms_match_a_loop_over_images_and_classes(options: dict):
    spec, _, student, method = networks_and_method(pair_spec(options={"ofa": options}), "ofa")
    method.eval()  # BatchNorm in the projectors: fixed statistics, so the projectors' logits can be recomputed
    torch.manual_seed(2)
    images, targets = torch.randn(5, *spec.input_size), torch.tensor([0, 3, 9, 3, 1])
    features, logits = student.forward_features(images)
    teacher_logits = torch.randn(5, 10) * 2
    terms = method(logits, teacher_logits, features, [], targets)

    chosen = {"eps": 1.0, "temperature": 1.0, "loss_weight": 1.0, "kd_weight": 1.0, **options}
    eps = chosen["eps"] if isinstance(chosen["eps"], list) else [chosen["eps"]] * 4
    t, teacher_rows, labels = chosen["temperature"], teacher_logits.tolist(), targets.tolist()
    with torch.no_grad():
        heads = [projector(features[k]).tolist() for k, projector in enumerate(method.projectors)]
    assert len(heads) == 3  # one projector per student block by default (the authors' every stage)
    expected_ofa = chosen["loss_weight"] * sum(ofa_loop(h, teacher_rows, labels, e, t) for h, e in zip(heads, eps))
    expected_kd = chosen["kd_weight"] * ofa_loop(logits.tolist(), teacher_rows, labels, eps[-1], t)

    assert set(terms) == {"ce", "kd", "ofa", "total"}
    assert terms["ofa"].item() == pytest.approx(expected_ofa, rel=1e-5)
    assert terms["kd"].item() == pytest.approx(expected_kd, rel=1e-5)
    assert terms["ce"].item() == pytest.approx(cross_entropy_loop(logits.tolist(), labels), rel=1e-5)


# ---- OFA projectors and one step ----------------------------------------------------------------


def test_token_projectors_merge_to_the_authors_grid_and_train_every_module():
    grids = [(14, 14), (56, 56), (8, 8), (4, 4), (28, 14), (14, 7), (28, 28)]
    assert [merge_count(grid) for grid in grids] == [1, 3, 0, 0, 1, 0, 2]  # down to 7x7, never an odd side
    vit = TokenProjector(FeatureLayout("tokens", 48, (14, 14), 1), width=64, depth=2, heads=4, num_classes=10)
    assert sum(isinstance(m, PatchMerging) for m in vit.modules()) == 1 and len(vit.blocks) == 2
    swin = TokenProjector(FeatureLayout("nhwc", 16, (8, 8)), width=32, depth=1, heads=4, num_classes=5)
    logits = vit(torch.randn(2, 1 + 14 * 14, 48))
    assert logits.shape == (2, 10)
    swin_logits = swin(torch.randn(2, 8, 8, 16))  # a channels-last map read as 64 tokens
    assert swin_logits.shape == (2, 5)
    (logits.sum() + swin_logits.sum()).backward()  # no module that the tokens skip
    assert all(p.grad is not None for p in [*vit.parameters(), *swin.parameters()])


@pytest.mark.parametrize(
    ("student", "layout"),
    [(None, "nchw"), (VIT_STUDENT, "tokens"), (SWIN_STUDENT, "nhwc")],
    ids=["cnn-to-cnn", "cnn-to-vit", "cnn-to-swin"],
)
def test_one_ofa_step_reaches_the_student_and_the_projectors_only(student: dict | None, layout: str):
    spec, teacher, student_net, method = networks_and_method(pair_spec(student), "ofa")
    assert {end.kind for end in student_net.layouts} == {layout}
    token_projectors = [p for p in method.projectors if isinstance(p, TokenProjector)]
    assert len(token_projectors) == (0 if layout == "nchw" else 3)
    images, labels = torch.randn(4, *spec.input_size), torch.tensor([0, 1, 2, 3])
    terms, _ = distill_loss(student_net, teacher, method)(images, labels)
    terms["total"].backward()

    # (a student parameter's gradient may be 0: Swin's position bias on its 1x1 last stage has one token)
    assert all(parameter.grad is not None for parameter in student_net.parameters())
    for name, parameter in method.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in teacher.parameters())


# ---- end to end: a ViT student, and resume ------------------------------------------------------


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("teacher") / "standard"
    train_teacher(spec_from_dict(toy_spec(data=DATA, train={**TRAIN, "epochs": 1})), standard=True, out=out, quiet=True)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ofa", "dist"])
def test_a_cnn_teacher_distils_a_vit_student(teacher: Path, tmp_path: Path, method: str):
    spec = spec_from_dict(pair_spec(VIT_STUDENT) | {"train": {**TRAIN, "epochs": 1}})
    summary = distill(spec, teacher, method, out=tmp_path / method, quiet=True)
    (record,) = records(tmp_path / method)
    assert set(record["terms"]) == ({"ce", "kd", "ofa"} if method == "ofa" else {"ce", "kd"})
    assert math.isfinite(record["loss"]) and summary["final"]["top1"] is not None
    saved = torch.load(tmp_path / method / "last.pt", weights_only=True)["extra"]["method"]
    assert any(key.startswith("projectors.0.blocks.") for key in saved) == (method == "ofa")


@pytest.mark.slow
def test_resume_restores_the_projectors_bit_exact(teacher: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    spec = spec_from_dict(pair_spec(options={"ofa": {"eps": 1.5}}))
    distill(spec, teacher, "ofa", out=tmp_path / "straight", quiet=True)
    with monkeypatch.context() as patch:
        interrupt_at_checkpoint(patch, 2)  # epoch 1's checkpoint is written, epoch 2's is not
        with pytest.raises(Interrupted):
            distill(spec, teacher, "ofa", out=tmp_path / "resumed", quiet=True)
    assert torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)["epoch"] == 1
    distill(spec, teacher, "ofa", out=tmp_path / "resumed", resume=True, quiet=True)

    assert_same_checkpoint(tmp_path / "straight" / "last.pt", tmp_path / "resumed" / "last.pt")
    saved = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)["extra"]["method"]
    assert any(key.startswith("projectors.2.") for key in saved)  # the projectors are in what was compared


# ---- option errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "options", "message"),
    [
        ("dist", {"tau": 0}, "distill.options.dist.tau"),
        ("dist", {"alpha": 1}, "valid fields of dist: ce_weight, beta, gamma, tau"),
        ("ofa", {"eps": -1.0}, "distill.options.ofa.eps"),
        ("ofa", {"stages": [0]}, "distill.options.ofa.stages"),
        ("ofa", {"stages": [2, 4]}, "distill.options.ofa.stages: [2, 4] must name distinct student blocks 1..3"),
        ("ofa", {"stages": [1, 2], "eps": [1.0, 1.0]}, "2 values for 2 stages; give one value, or 3"),
        ("ofa", {"temprature": 2}, "valid fields of ofa: stages, eps, temperature"),
    ],
)
def test_bad_options_name_the_field_and_what_is_valid(method: str, options: dict, message: str):
    shapes = [(4, 8, 8), (8, 4, 4), (16, 2, 2)]  # three NCHW block ends
    with pytest.raises(SplicerError) as caught:
        create_method(method, DistillSpec(options={method: options}), shapes, shapes, num_classes=10)
    assert message in str(caught.value)


def test_token_projector_heads_must_divide_the_student_width():
    with pytest.raises(SplicerError, match=r"distill.options.ofa.heads: 3 heads do not divide the width 32"):
        networks_and_method(pair_spec(VIT_STUDENT, options={"ofa": {"heads": 3}}), "ofa")
