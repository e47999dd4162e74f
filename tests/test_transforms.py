"""Transform synthesis: the paper's rules for equal, shrink and grow, on any shape."""

from __future__ import annotations

import pytest
import torch

from splicer.synthesis.transforms import Transform, plan_transform


def run(source: tuple[int, int, int], target: tuple[int, int, int]) -> tuple:
    plan = plan_transform(source, target)
    transform = Transform(plan).eval()
    with torch.no_grad():
        out = transform(torch.randn(2, *source))
    return plan, tuple(out.shape[1:])


def test_equal_size_is_a_1x1_conv():
    plan, shape = run((128, 16, 16), (64, 16, 16))
    assert (plan.kind, plan.kernel, plan.stride, plan.padding) == ("equal", (1, 1), (1, 1), (0, 0))
    assert shape == (64, 16, 16)


@pytest.mark.parametrize("ratio", [2, 4])
def test_shrink_is_a_strided_3x3_conv(ratio):
    plan, shape = run((64, 32, 32), (128, 32 // ratio, 32 // ratio))
    assert (plan.kind, plan.kernel, plan.stride) == ("shrink", (3, 3), (ratio, ratio))
    assert shape == (128, 32 // ratio, 32 // ratio)


@pytest.mark.parametrize("ratio,kernel", [(2, 4), (4, 8), (3, 3)])
def test_grow_is_a_transposed_conv(ratio, kernel):
    plan, shape = run((256, 4, 4), (64, 4 * ratio, 4 * ratio))
    assert (plan.kind, plan.kernel, plan.stride) == ("grow", (kernel, kernel), (ratio, ratio))
    assert isinstance(Transform(plan).conv, torch.nn.ConvTranspose2d)
    assert shape == (64, 4 * ratio, 4 * ratio)


def test_ratio_2_grow_is_the_papers_4x4_transposed_conv():
    plan = plan_transform((64, 8, 8), (32, 16, 16))
    assert plan.kernel == (4, 4) and plan.stride == (2, 2)


def test_non_square_maps_scale_each_axis():
    plan, shape = run((32, 16, 8), (16, 8, 8))
    assert (plan.kind, plan.stride) == ("shrink", (2, 1))
    assert shape == (16, 8, 8)
    plan, shape = run((32, 7, 14), (16, 28, 28))
    assert (plan.kind, plan.stride) == ("grow", (4, 2))
    assert shape == (16, 28, 28)


def test_no_integer_ratio_falls_back_to_a_resize_and_says_so():
    plan, shape = run((32, 14, 14), (16, 8, 8))
    assert plan.kind == "resize" and "no integer ratio" in plan.note
    assert shape == (16, 8, 8)
    plan, shape = run((32, 16, 8), (16, 8, 16))
    assert plan.kind == "resize" and "opposite directions" in plan.note
    assert shape == (16, 8, 16)


def test_every_transform_ends_in_bn_and_relu():
    transform = Transform(plan_transform((8, 8, 8), (4, 4, 4)))
    assert [type(m).__name__ for m in transform] == ["Conv2d", "BatchNorm2d", "ReLU"]
    assert transform.conv.bias is None


def test_equal_kernel_3_keeps_the_size_and_leaves_shrink_and_grow_alone():
    plan = plan_transform((16, 8, 8), (8, 8, 8), equal_kernel=3)
    assert (plan.kind, plan.kernel, plan.padding) == ("equal", (3, 3), (1, 1))
    assert plan.describe() == "3x3 conv: 16x8x8 -> 8x8x8"
    with torch.no_grad():
        assert Transform(plan).eval()(torch.randn(2, 16, 8, 8)).shape == (2, 8, 8, 8)
    assert plan_transform((16, 8, 8), (8, 4, 4), equal_kernel=3) == plan_transform((16, 8, 8), (8, 4, 4))
    assert plan_transform((16, 4, 4), (8, 8, 8), equal_kernel=3) == plan_transform((16, 4, 4), (8, 8, 8))


def test_a_transform_without_activation_is_conv_and_bn_and_says_so():
    plan = plan_transform((8, 8, 8), (4, 4, 4), activation=False)
    transform = Transform(plan)
    assert [type(m).__name__ for m in transform] == ["Conv2d", "BatchNorm2d"]
    assert plan.describe().endswith(", no ReLU")
    with torch.no_grad():
        assert (Transform(plan).eval()(torch.randn(2, 8, 8, 8)) < 0).any()
