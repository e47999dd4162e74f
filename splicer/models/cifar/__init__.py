"""Our CIFAR model zoo: the architectures of the paper and its CIFAR-100 benchmark.

``CIFAR_MODELS`` maps a ``cifar:NAME`` to a factory ``f(num_classes=100, **kwargs)``.
``PAPER_BLOCK_ENDS`` gives, per model, the module paths where the paper cuts it into
blocks: one block per resolution stage, the last ending on the tensor that enters global
pooling.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from splicer.models.cifar import mobilenetv2, resnet, resnet_bottleneck, shufflenetv1, shufflenetv2, vgg, wrn

CIFAR_MODELS: dict[str, Callable[..., nn.Module]] = {
    "vgg8": vgg.vgg8,
    "vgg11": vgg.vgg11,
    "vgg13": vgg.vgg13,
    "vgg16": vgg.vgg16,
    "vgg19": vgg.vgg19,
    "resnet8": resnet.resnet8,
    "resnet14": resnet.resnet14,
    "resnet20": resnet.resnet20,
    "resnet32": resnet.resnet32,
    "resnet44": resnet.resnet44,
    "resnet56": resnet.resnet56,
    "resnet110": resnet.resnet110,
    "resnet8x2": resnet.resnet8x2,
    "resnet8x4": resnet.resnet8x4,
    "resnet32x4": resnet.resnet32x4,
    "wrn_16_1": wrn.wrn_16_1,
    "wrn_16_2": wrn.wrn_16_2,
    "wrn_40_1": wrn.wrn_40_1,
    "wrn_40_2": wrn.wrn_40_2,
    "MobileNetV2": mobilenetv2.mobilenetv2_half,
    "ShuffleV1": shufflenetv1.shufflev1,
    "ShuffleV2": shufflenetv2.shufflev2,
    "ResNet50": resnet_bottleneck.resnet50,
}

_VGG_ENDS = ["stage2", "stage3", "stage4", "stage5"]
_RESNET_ENDS = ["layer1", "layer2", "layer3"]
_WRN_ENDS = ["layer1", "layer2", "norm"]

PAPER_BLOCK_ENDS: dict[str, list[str]] = {
    **{name: _VGG_ENDS for name in ("vgg8", "vgg11", "vgg13", "vgg16", "vgg19")},
    **{name: _RESNET_ENDS for name in resnet.RESNET_CONFIGS},
    **{name: _WRN_ENDS for name in wrn.WRN_CONFIGS},
    "MobileNetV2": ["layer1", "layer2", "layer3", "conv_head"],
    "ShuffleV1": ["layer1", "layer2", "layer3"],
    "ShuffleV2": ["layer1", "layer2", "conv_head"],
    "ResNet50": ["layer1", "layer2", "layer3", "layer4"],
}
