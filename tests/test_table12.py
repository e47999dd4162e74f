"""Ground truth: the compiled VGG13/VGG8 SFTN against the paper's tables 10-12, row by row."""

from __future__ import annotations

import pytest

import splicer
from splicer.emission.layers import layer_tables
from tests.conftest import REPO

# Table 12 (appendix), student branches: layer, input layer, input shape, filter, channels,
# stride, output shape. The paper writes Relu and AvgPool2d; we name the classes ReLU and
# AdaptiveAvgPool2d; the paper's "Maxpool2d-39 input BatchNorm2d-37" follows the transform's
# ReLU (see shared/paper/README.md).
BRANCHES = [
    """
    Conv2d-36 Relu-13 128x16x16 1x1 128 1 128x16x16
    BatchNorm2d-37 Conv2d-36 128x16x16 - 128 - 128x16x16
    Relu-38 BatchNorm2d-37 128x16x16 - - - 128x16x16
    MaxPool2d-39 Relu-38 128x16x16 2x2 - 2 128x8x8
    Conv2d-40 MaxPool2d-39 128x8x8 3x3 256 1 256x8x8
    BatchNorm2d-41 Conv2d-40 256x8x8 - 256 - 256x8x8
    Relu-42 BatchNorm2d-41 256x8x8 - - - 256x8x8
    MaxPool2d-43 Relu-42 256x8x8 2x2 - 2 256x4x4
    Conv2d-44 MaxPool2d-43 256x4x4 3x3 512 1 512x4x4
    BatchNorm2d-45 Conv2d-44 512x4x4 - 512 - 512x4x4
    Relu-46 BatchNorm2d-45 512x4x4 - - - 512x4x4
    Conv2d-47 Relu-46 512x4x4 3x3 512 1 512x4x4
    BatchNorm2d-48 Conv2d-47 512x4x4 - 512 - 512x4x4
    Relu-49 BatchNorm2d-48 512x4x4 - - - 512x4x4
    AvgPool2d-50 Relu-49 512x4x4 - - - 512x1x1
    Linear-51 AvgPool2d-50 512x1x1 - 100 - 100
    """,
    """
    Conv2d-52 Relu-20 256x8x8 1x1 256 1 256x8x8
    BatchNorm2d-53 Conv2d-52 256x8x8 - 256 - 256x8x8
    Relu-54 BatchNorm2d-53 256x8x8 - - - 256x8x8
    MaxPool2d-55 Relu-54 256x8x8 2x2 - 2 256x4x4
    Conv2d-56 MaxPool2d-55 256x4x4 3x3 512 1 512x4x4
    BatchNorm2d-57 Conv2d-56 512x4x4 - 512 - 512x4x4
    Relu-58 BatchNorm2d-57 512x4x4 - - - 512x4x4
    Conv2d-59 Relu-58 512x4x4 3x3 512 1 512x4x4
    BatchNorm2d-60 Conv2d-59 512x4x4 - 512 - 512x4x4
    Relu-61 BatchNorm2d-60 512x4x4 - - - 512x4x4
    AvgPool2d-62 Relu-61 512x4x4 - - - 512x1x1
    Linear-63 AvgPool2d-62 512x1x1 - 100 - 100
    """,
    """
    Conv2d-64 Relu-27 512x4x4 1x1 512 1 512x4x4
    BatchNorm2d-65 Conv2d-64 512x4x4 - 512 - 512x4x4
    Relu-66 BatchNorm2d-65 512x4x4 - - - 512x4x4
    Conv2d-67 Relu-66 512x4x4 3x3 512 1 512x4x4
    BatchNorm2d-68 Conv2d-67 512x4x4 - 512 - 512x4x4
    Relu-69 BatchNorm2d-68 512x4x4 - - - 512x4x4
    AvgPool2d-70 Relu-69 512x4x4 - - - 512x1x1
    Linear-71 AvgPool2d-70 512x1x1 - 100 - 100
    """,
]

# Table 10/12, the teacher's convolutions: layer, input shape, output channels, output shape.
TEACHER_CONVS = """
Conv2d-1 3x32x32 64 64x32x32
Conv2d-4 64x32x32 64 64x32x32
Conv2d-8 64x16x16 128 128x16x16
Conv2d-11 128x16x16 128 128x16x16
Conv2d-15 128x8x8 256 256x8x8
Conv2d-18 256x8x8 256 256x8x8
Conv2d-22 256x4x4 512 512x4x4
Conv2d-25 512x4x4 512 512x4x4
Conv2d-28 512x4x4 512 512x4x4
Conv2d-31 512x4x4 512 512x4x4
"""

_PAPER_NAMES = {"ReLU": "Relu", "AdaptiveAvgPool2d": "AvgPool2d"}


def _paper(name: str) -> str:
    kind, _, number = name.rpartition("-")
    return f"{_PAPER_NAMES.get(kind, kind)}-{number}"


@pytest.fixture(scope="module")
def tables():
    result = splicer.compile_spec(REPO / "specs" / "vgg13_vgg8.yaml")
    return result, layer_tables(result)


def test_teacher_convolutions_match_table_10(tables):
    _, parts = tables
    convs = [r for r in parts[0].rows if r.layer.startswith("Conv2d")]
    got = [f"{r.layer} {r.input_shape} {r.channels} {r.output_shape}" for r in convs]
    assert got == TEACHER_CONVS.split("\n")[1:-1]
    assert all(r.filter_size == "3x3" and r.stride == "1" and r.padding == "1" for r in convs)
    assert [_paper(r.layer) for r in parts[0].rows[-2:]] == ["AvgPool2d-34", "Linear-35"]
    assert len(parts[0].rows) == 35


@pytest.mark.parametrize("branch", [1, 2, 3])
def test_branch_matches_table_12(tables, branch):
    _, parts = tables
    rows = parts[branch].rows
    got = [
        " ".join(
            [_paper(r.layer), _paper(r.input_layer), r.input_shape, r.filter_size, r.channels, r.stride, r.output_shape]
        )
        for r in rows
    ]
    expected = [line.strip() for line in BRANCHES[branch - 1].strip().splitlines()]
    assert got == expected


def test_branch_blocks_are_labelled_as_in_table_12(tables):
    _, parts = tables
    labels = [r.block for r in parts[1].rows]
    assert labels == ["T^1"] * 3 + ["B_S^2"] * 4 + ["B_S^3"] * 4 + ["B_S^4"] * 3 + ["head_S"] * 2
    assert {r.block for r in parts[3].rows if r.layer.startswith("Conv2d")} == {"T^3", "B_S^4"}


def test_transforms_are_1x1_at_the_paper_shapes(tables):
    result, _ = tables
    assert [(p.kind, p.kernel, p.source) for p in result.transforms] == [
        ("equal", (1, 1), (128, 16, 16)),
        ("equal", (1, 1), (256, 8, 8)),
        ("equal", (1, 1), (512, 4, 4)),
    ]
    assert [p.target for p in result.transforms] == [p.source for p in result.transforms]
