"""``blocks: auto`` against stage ends read off each architecture by hand.

Expected ends follow the rule the paper cuts by: one block per resolution stage, the last
ending on the tensor that enters global pooling, a one-conv stem merged into the first stage.
"""

from __future__ import annotations

import pytest
import torch

import splicer
from splicer.assembly.build import NetworkPlan, plan_network
from splicer.errors import CutError
from splicer.spec import Spec, spec_from_dict


def _spec(teacher: dict, student: dict, input_size: list[int], num_classes: int = 10) -> Spec:
    return spec_from_dict(
        {"name": "auto", "num_classes": num_classes, "input_size": input_size, "teacher": teacher, "student": student}
    )


def _plan(model: str, input_size: list[int], **network: object) -> tuple[NetworkPlan, list[str]]:
    """Plan one network with ``blocks: auto``; returns the plan and the compiler's notes."""
    spec = _spec({"model": model, **network}, {"model": "cifar:resnet8"}, input_size)
    notes: list[str] = []
    return plan_network(spec, spec.teacher, "teacher", spec.source, notes), notes


@pytest.mark.parametrize(
    ("model", "input_size", "labels", "shapes"),
    [
        # CIFAR ResNet: three stages at 32, 16, 8.
        ("cifar:resnet32x4", [3, 32, 32], ["layer1", "layer2", "layer3"], [(64, 32, 32), (128, 16, 16), (256, 8, 8)]),
        # ImageNet ResNet: the conv+maxpool stem is merged into layer1.
        (
            "torchvision:resnet34",
            [3, 64, 64],
            ["layer1", "layer2", "layer3", "layer4"],
            [(64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 2, 2)],
        ),
        # CIFAR MobileNetV2 (half width): layer4 and conv_head share the 2x2 stage, conv_head feeds the pool.
        (
            "cifar:MobileNetV2",
            [3, 32, 32],
            ["layer1", "layer2", "layer3", "conv_head"],
            [(12, 16, 16), (16, 8, 8), (48, 4, 4), (1280, 2, 2)],
        ),
        # torchvision MobileNetV2: features.0-1 at /2, 2-3 at /4, 4-6 at /8, 7-13 at /16, 14-18 at /32.
        (
            "torchvision:mobilenet_v2",
            [3, 64, 64],
            ["features.1", "features.3", "features.6", "features.13", "features"],
            [(16, 32, 32), (24, 16, 16), (32, 8, 8), (96, 4, 4), (1280, 2, 2)],
        ),
        # DenseNet: a stage per dense block (transitions halve the size); the last ends on the
        # functional ReLU that DenseNet.forward applies to norm5 before pooling.
        (
            "torchvision:densenet121",
            [3, 64, 64],
            ["features.denseblock1", "features.denseblock2", "features.denseblock3", "relu"],
            [(256, 16, 16), (512, 8, 8), (1024, 4, 4), (1024, 2, 2)],
        ),
        # VGG13: two convs at 32x32 make stage1 a stage; stage4 and stage5 share the 4x4 stage.
        (
            "cifar:vgg13",
            [3, 32, 32],
            ["stage1", "stage2", "stage3", "stage5"],
            [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4)],
        ),
        # VGG8: its one-conv stage1 is a stem, merged into stage2.
        ("cifar:vgg8", [3, 32, 32], ["stage2", "stage3", "stage5"], [(128, 16, 16), (256, 8, 8), (512, 4, 4)]),
        # Unpadded convolutions (Inception): stages run 47 -> 45 and 22 -> 20 -> 18 pixels.
        (
            "python:tests.toy_nets:valid_conv_net",
            [3, 96, 96],
            ["stage1", "stage2", "stage3"],
            [(16, 45, 45), (32, 18, 18), (64, 8, 8)],
        ),
    ],
)
def test_auto_finds_the_stage_ends(model: str, input_size: list[int], labels: list[str], shapes: list[tuple]) -> None:
    plan, notes = _plan(model, input_size)
    assert plan.auto
    assert plan.block_labels == labels
    assert plan.block_shapes == shapes
    assert notes == [f"teacher: blocks: auto chose {', '.join(labels)} (graph stage ends)"]


def test_unpadded_conv_stages_compile_to_an_equivalent_sftn() -> None:
    """Maps a few pixels short of input / stride are block ends; the teacher's blocks reproduce it."""
    spec = _spec({"model": "python:tests.toy_nets:valid_conv_net"}, {"model": "cifar:resnet8"}, [3, 96, 96])
    result = splicer.compile_spec(spec)
    assert result.teacher.block_labels == ["stage1", "stage2", "stage3"]
    assert result.equivalence_error is not None and result.equivalence_error < 1e-5
    out = result.sftn(torch.randn(2, 3, 96, 96))
    assert [tuple(z.shape) for z in out.branch_logits] == [(2, 10), (2, 10)]


def test_torchvision_inception_v3_is_cut_at_its_stages() -> None:
    """Unpadded stem convolutions and concatenating Mixed blocks: at 139x139 the stages end at
    67, 31, 15, 7 and 3 pixels, none of them 139 divided by its stride."""
    plan, _ = _plan("torchvision:inception_v3", [3, 139, 139], kwargs={"aux_logits": False, "init_weights": False})
    assert plan.block_labels == ["Conv2d_2b_3x3", "Conv2d_4a_3x3", "Mixed_5d", "Mixed_6e", "Mixed_7c"]
    assert [shape[1:] for shape in plan.block_shapes] == [(67, 67), (31, 31), (15, 15), (7, 7), (3, 3)]


def test_auto_uses_timm_feature_info() -> None:
    plan, notes = _plan("timm:resnet18", [3, 64, 64])
    assert plan.block_labels == ["layer1", "layer2", "layer3", "layer4"]
    assert plan.block_shapes == [(64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 2, 2)]
    assert notes == ["teacher: blocks: auto chose layer1, layer2, layer3, layer4 (timm feature_info)"]


@pytest.mark.parametrize(("num_blocks", "labels"), [(3, ["layer2", "layer3", "layer4"]), (2, ["layer3", "layer4"])])
def test_num_blocks_keeps_the_deepest_stages(num_blocks: int, labels: list[str]) -> None:
    plan, _ = _plan("timm:resnet18", [3, 64, 64], num_blocks=num_blocks)
    assert plan.block_labels == labels
    assert len(plan.parts) == num_blocks + 1


def test_four_stage_teacher_pairs_with_a_three_stage_student() -> None:
    """The teacher keeps the stages at the student's resolutions, so the branches need only 1x1 transforms."""
    spec = _spec({"model": "cifar:ResNet50"}, {"model": "cifar:resnet8x4"}, [3, 32, 32], num_classes=100)
    result = splicer.compile_spec(spec)
    assert result.teacher.block_labels == ["layer1", "layer2", "layer4"]
    assert result.student.block_labels == ["layer1", "layer2", "layer3"]
    assert (
        "teacher: auto kept layer1, layer2, layer4 to pair with the other network's 3 blocks "
        "(merged layer3 into the blocks after them)" in result.notes
    )
    assert [p.kind for p in result.transforms] == ["equal", "equal"]
    assert result.equivalence_error is not None and result.equivalence_error < 1e-5
    out = result.sftn(torch.randn(2, 3, 32, 32))
    (out.teacher_logits.sum() + sum(z.sum() for z in out.branch_logits)).backward()


def test_paired_stages_grow_when_resolutions_cannot_match() -> None:
    """A student that starts at a higher resolution than every teacher stage gets the paper's 4x4 transposed convs."""
    spec = _spec({"model": "cifar:ShuffleV2"}, {"model": "cifar:resnet8x4"}, [3, 32, 32], num_classes=100)
    result = splicer.compile_spec(spec)
    assert [t.shape[1:] for t in result.teacher.block_ends] == [(16, 16), (8, 8), (4, 4)]
    assert [p.kind for p in result.transforms] == ["grow", "grow"]
    assert [(p.kernel, p.stride) for p in result.transforms] == [((4, 4), (2, 2))] * 2
    out = result.sftn(torch.randn(2, 3, 32, 32))
    (out.teacher_logits.sum() + sum(z.sum() for z in out.branch_logits)).backward()


def test_explicit_blocks_are_never_merged_to_pair() -> None:
    spec = _spec(
        {"model": "cifar:vgg13", "blocks": ["stage2", "stage3", "stage4", "stage5"]}, {"model": "cifar:vgg8"}, [3, 32, 32]
    )
    with pytest.raises(CutError, match="teacher.blocks lists 4 block ends but the other network has only 3 stages"):
        splicer.compile_spec(spec, verify=False)


def test_resolved_spec_lists_the_chosen_block_ends() -> None:
    spec = _spec({"model": "cifar:vgg13"}, {"model": "cifar:vgg8", "num_blocks": 3}, [3, 32, 32])
    result = splicer.compile_spec(spec, verify=False)
    resolved = result.resolved_spec()
    assert resolved.teacher.blocks == ["stage2", "stage3", "stage5"]  # after pairing: stage1 merged
    assert resolved.student.blocks == ["stage2", "stage3", "stage5"]
    assert resolved.teacher.num_blocks is None and resolved.student.num_blocks is None
    assert spec.teacher.blocks == "auto"  # the user's spec is left as written
    again = splicer.compile_spec(spec_from_dict(resolved.model_dump(mode="json")), verify=False)
    assert again.teacher.block_shapes == result.teacher.block_shapes
    assert again.student.block_shapes == result.student.block_shapes
    assert not any("auto" in note for note in again.notes)
