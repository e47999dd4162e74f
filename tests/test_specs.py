"""Every shipped spec builds, trains one step, and follows the paper's conventions and transform rules."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import splicer
from splicer.models.cifar import PAPER_BLOCK_ENDS
from splicer.spec import Spec, load_spec
from tests.conftest import REPO

SPECS = sorted((REPO / "specs").glob("*.yaml"))
IMAGENET = REPO / "specs" / "resnet50_resnet34_imagenet.yaml"
# Transformer pairs at 224x224: layouts of the teacher's and the student's block ends.
TRANSFORMER_SPECS: dict[str, tuple[str, str]] = {
    "regnety160_deit_small": ("nchw", "tokens"),
    "vit_small_resnet18": ("tokens", "nchw"),
    "swin_tiny_mobilenetv3_large": ("nhwc", "nchw"),
    "vit_small_vit_tiny": ("tokens", "tokens"),
}
CIFAR_SPECS = [path for path in SPECS if path != IMAGENET and path.stem not in TRANSFORMER_SPECS]

# Transform kinds and strides the paper's rule (section 3.1) gives: 1x1 conv at equal size,
# 3x3 conv with stride r to shrink by r. ShuffleNets and VGG8 cut at half the resolution of
# resnet32x4/WRN/ResNet50, so every branch into them shrinks by 2.
EQUAL2 = (["equal", "equal"], [(1, 1), (1, 1)])
SHRINK2 = (["shrink", "shrink"], [(2, 2), (2, 2)])
EXPECTED_TRANSFORMS: dict[str, tuple[list[str], list[tuple[int, int]]]] = {
    "vgg13_vgg8": (["equal"] * 3, [(1, 1)] * 3),
    "wrn40_2_wrn16_2": EQUAL2,
    "wrn40_2_wrn40_1": EQUAL2,
    "resnet32x4_resnet8x4": EQUAL2,
    "resnet32x4_resnet8x2": EQUAL2,
    "resnet32x4_shufflev1": SHRINK2,
    "resnet32x4_shufflev2": SHRINK2,
    "resnet50_vgg8": (["shrink"] * 3, [(2, 2)] * 3),
    "wrn40_2_shufflev2": SHRINK2,
    "wrn40_2_resnet8x2": EQUAL2,
    "wrn40_2_resnet8x4": EQUAL2,
    "wrn40_2_resnet32x4": EQUAL2,
    "resnet32x4_resnet32x4": EQUAL2,
    "resnet32x4_wrn16_1": EQUAL2,
    "resnet32x4_wrn16_2": EQUAL2,
    "resnet32x4_wrn40_2": EQUAL2,
    "resnet50_resnet34_imagenet": (["equal"] * 3, [(1, 1)] * 3),
}

# Table 9: each teacher trained with a smaller, equal and larger student branch.
TABLE9 = {
    "wrn40_2": ["resnet8x2", "resnet8x4", "resnet32x4"],
    "resnet32x4": ["resnet8x2", "resnet8x4", "resnet32x4", "wrn16_1", "wrn16_2", "wrn40_2"],
}


def _train_step(sftn: splicer.SFTN, spec: Spec, batch: int) -> None:
    """One forward and backward pass; every parameter must receive a gradient."""
    sftn.train()
    out = sftn(torch.randn(batch, *spec.input_size))
    assert out.teacher_logits.shape == (batch, spec.num_classes)
    assert len(out.branch_logits) == len(sftn.branches) >= 1
    assert all(z.shape == (batch, spec.num_classes) for z in out.branch_logits)
    loss = out.teacher_logits.logsumexp(1).mean() + sum(z.logsumexp(1).mean() for z in out.branch_logits)
    loss.backward()
    missing = [name for name, p in sftn.named_parameters() if p.grad is None]
    assert missing == []


@pytest.mark.parametrize("path", CIFAR_SPECS, ids=lambda p: p.stem)
def test_spec_builds_and_trains(path: Path) -> None:
    result = splicer.compile_spec(path)
    assert result.equivalence_error is not None and result.equivalence_error < 1e-5
    _train_step(result.sftn, result.spec, batch=2)
    expected = EXPECTED_TRANSFORMS.get(path.stem)
    if expected is not None:
        assert [p.kind for p in result.transforms] == expected[0]
        assert [p.stride for p in result.transforms] == expected[1]


def test_imagenet_spec_builds_and_trains() -> None:
    """At the real 224x224 size, unverified and at batch 1: the full check is slow on CPUs."""
    result = splicer.compile_spec(IMAGENET, verify=False)
    assert result.teacher.block_labels == result.student.block_labels == ["layer1", "layer2", "layer3", "layer4"]
    assert result.teacher.block_shapes == [(256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7)]
    assert result.student.block_shapes == [(64, 56, 56), (128, 28, 28), (256, 14, 14), (512, 7, 7)]
    kinds, strides = EXPECTED_TRANSFORMS[IMAGENET.stem]
    assert [p.kind for p in result.transforms] == kinds and [p.stride for p in result.transforms] == strides
    _train_step(result.sftn, result.spec, batch=1)


@pytest.mark.parametrize("name", list(TRANSFORMER_SPECS))
def test_transformer_spec_builds_and_trains(name: str) -> None:
    """Verified (teacher blocks equal the model, exact branch shapes), one step at batch 1, 224x224."""
    result = splicer.compile_spec(REPO / "specs" / f"{name}.yaml")
    assert result.equivalence_error is not None and result.equivalence_error < 1e-5
    teacher_kind, student_kind = TRANSFORMER_SPECS[name]
    assert {lay.kind for lay in result.teacher.block_layouts} == {teacher_kind}
    assert {lay.kind for lay in result.student.block_layouts} == {student_kind}
    assert len(result.teacher.block_ends) == len(result.student.block_ends) == 4
    _train_step(result.sftn, result.spec, batch=1)


def test_imagenet_spec_uses_the_imagenet_recipe() -> None:
    spec = load_spec(IMAGENET)
    assert (spec.num_classes, spec.input_size) == (1000, (3, 224, 224))
    assert spec.teacher.blocks == spec.student.blocks == "auto"
    assert (spec.train.lr, spec.train.weight_decay, spec.train.epochs, spec.train.batch_size) == (0.1, 1e-4, 100, 256)
    assert (spec.loss.teacher_ce, spec.loss.branch_kl, spec.loss.branch_ce, spec.loss.tau) == (1.0, 1.0, 1.0, 1.0)
    assert spec.data.dataset == "imagefolder"


@pytest.mark.parametrize("name", [n for n in EXPECTED_TRANSFORMS if n != IMAGENET.stem])
def test_cifar_spec_follows_the_paper(name: str) -> None:
    """CIFAR-100 at 32x32, the paper's block ends and loss weights; lr 0.01 for ShuffleNet students."""
    path = REPO / "specs" / f"{name}.yaml"
    spec = load_spec(path)
    assert path.read_text().startswith("# "), "a spec starts with a comment naming the pair and table"
    assert (spec.num_classes, spec.input_size, spec.data.dataset) == (100, (3, 32, 32), "cifar100")
    for network in (spec.teacher, spec.student):
        assert network.blocks == PAPER_BLOCK_ENDS[network.model.removeprefix("cifar:")]
    assert (spec.loss.teacher_ce, spec.loss.branch_kl, spec.loss.branch_ce, spec.loss.tau) == (1.0, 3.0, 1.0, 1.0)
    shufflenet = spec.student.model.startswith("cifar:Shuffle")
    assert spec.train.lr == (0.01 if shufflenet else 0.05)


def test_every_paper_pair_has_a_spec() -> None:
    names = {path.stem for path in SPECS}
    assert set(EXPECTED_TRANSFORMS) <= names
    assert {f"{teacher}_{branch}" for teacher, branches in TABLE9.items() for branch in branches} <= names
