"""The CIFAR zoo matches the benchmark's architectures and is usable by the compiler.

Parameter counts pin each architecture; torch.fx must trace every model faithfully; and
the paper's block ends must name modules whose outputs sit at the expected resolutions,
the last one being exactly the tensor that enters global pooling.
"""

from __future__ import annotations

from functools import cache

import pytest
import torch
from torch import fx, nn

from splicer.models.cifar import CIFAR_MODELS, PAPER_BLOCK_ENDS

# Exact parameter counts for 100 classes. For every non-VGG model the benchmark has, they
# equal its (RepDistiller's) code's: checked by loading its weights into ours, same logits.
PARAMETERS: dict[str, int] = {
    "vgg8": 3_965_028,
    "vgg11": 9_277_284,
    "vgg13": 9_462_180,
    "vgg16": 14_774_436,
    "vgg19": 20_086_692,
    "resnet8": 83_892,
    "resnet14": 181_108,
    "resnet20": 278_324,
    "resnet32": 472_756,
    "resnet44": 667_188,
    "resnet56": 861_620,
    "resnet110": 1_736_564,
    "resnet8x2": 315_764,
    "resnet8x4": 1_233_540,
    "resnet32x4": 7_433_860,
    "wrn_16_1": 180_916,
    "wrn_16_2": 703_284,
    "wrn_40_1": 569_780,
    "wrn_40_2": 2_255_156,
    "MobileNetV2": 812_836,
    "ShuffleV1": 949_258,
    "ShuffleV2": 1_355_528,
    "ResNet50": 23_705_252,
}

# Published figures (millions, CIFAR-100). resnet14 is quoted as 0.17M, but its architecture
# (the benchmark's own code included) has 181,108 parameters, i.e. 0.18M.
PUBLISHED_MILLIONS: dict[str, float] = {
    "vgg8": 3.97,
    "vgg13": 9.46,
    "resnet8": 0.08,
    "resnet14": 0.18,
    "resnet20": 0.28,
    "resnet32": 0.47,
    "resnet44": 0.67,
    "resnet56": 0.86,
    "resnet110": 1.74,
    "resnet8x4": 1.23,
    "resnet32x4": 7.43,
    "wrn_16_1": 0.18,
    "wrn_16_2": 0.70,
    "wrn_40_1": 0.57,
    "wrn_40_2": 2.26,
    "MobileNetV2": 0.81,
    "ShuffleV1": 0.95,
    "ShuffleV2": 1.36,
    "ResNet50": 23.71,
}

_VGG = [16, 8, 4, 4]
_THREE_STAGES = [32, 16, 8]
# Spatial size of each paper block end's output for a 32x32 input.
BLOCK_END_SIZES: dict[str, list[int]] = {
    **{name: _VGG for name in ("vgg8", "vgg11", "vgg13", "vgg16", "vgg19")},
    **{name: _THREE_STAGES for name in PARAMETERS if name.startswith(("resnet", "wrn"))},
    "MobileNetV2": [16, 8, 4, 2],
    "ShuffleV1": [16, 8, 4],
    "ShuffleV2": [16, 8, 4],
    "ResNet50": [32, 16, 8, 4],
}

NAMES = sorted(CIFAR_MODELS)


@cache
def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return CIFAR_MODELS[name](num_classes=100).eval()


def _input() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_every_model_has_counts_and_block_ends():
    assert set(CIFAR_MODELS) == set(PARAMETERS) == set(PAPER_BLOCK_ENDS) == set(BLOCK_END_SIZES)


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count(name: str):
    count = sum(p.numel() for p in _model(name).parameters())
    assert count == PARAMETERS[name]
    if name in PUBLISHED_MILLIONS:
        assert round(count / 1e6, 2) == PUBLISHED_MILLIONS[name]


@pytest.mark.parametrize("name", NAMES)
def test_fx_trace_reproduces_the_model(name: str):
    model = _model(name)
    traced = fx.symbolic_trace(model)
    x = _input()
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(traced(x), expected)
    assert expected.shape == (2, 100)


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_1", "MobileNetV2", "ShuffleV1", "ShuffleV2"])
def test_num_classes_sets_the_output_width(name: str):
    model = CIFAR_MODELS[name](num_classes=10).eval()
    with torch.no_grad():
        assert model(_input()).shape == (2, 10)


@pytest.mark.parametrize("name", NAMES)
def test_paper_block_ends(name: str):
    model = _model(name)
    ends = PAPER_BLOCK_ENDS[name]
    outputs: dict[str, torch.Tensor] = {}
    pooled: list[torch.Tensor] = []

    def keep(path: str):
        return lambda _module, _args, out: outputs.__setitem__(path, out)

    handles = [model.get_submodule(path).register_forward_hook(keep(path)) for path in ends]
    pool = model.get_submodule("avgpool")
    handles.append(pool.register_forward_pre_hook(lambda _module, args: pooled.append(args[0])))
    try:
        with torch.no_grad():
            model(_input())
    finally:
        for handle in handles:
            handle.remove()
    assert [outputs[path].shape[-1] for path in ends] == BLOCK_END_SIZES[name]
    assert [outputs[path].shape[-2] for path in ends] == BLOCK_END_SIZES[name]
    assert outputs[ends[-1]] is pooled[0]
