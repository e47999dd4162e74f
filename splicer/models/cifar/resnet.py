"""CIFAR ResNets of basic blocks (He et al. 2016, section 4.2), as the CIFAR-100 benchmark.

A 3x3 stem, then three stages of ``(depth - 2) / 6`` basic blocks at 32x32, 16x16 and 8x8;
global average pool and one linear layer. A block's shortcut is a 1x1 conv + BN wherever
its shape changes. The paper cuts these networks after ``layer1``, ``layer2`` and ``layer3``.
"""

from __future__ import annotations

from torch import Tensor, nn

from splicer.models.cifar.common import ConvBN, init_conv_bn

# name -> (depth, [stem, layer1, layer2, layer3] widths).
RESNET_CONFIGS: dict[str, tuple[int, list[int]]] = {
    "resnet8": (8, [16, 16, 32, 64]),
    "resnet14": (14, [16, 16, 32, 64]),
    "resnet20": (20, [16, 16, 32, 64]),
    "resnet32": (32, [16, 16, 32, 64]),
    "resnet44": (44, [16, 16, 32, 64]),
    "resnet56": (56, [16, 16, 32, 64]),
    "resnet110": (110, [16, 16, 32, 64]),
    "resnet8x2": (8, [16, 32, 64, 128]),
    "resnet8x4": (8, [32, 64, 128, 256]),
    "resnet32x4": (32, [32, 64, 128, 256]),
}


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN with a residual connection, ReLU after the sum."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = ConvBN(in_channels, out_channels, 3, stride)
        self.conv2 = ConvBN(out_channels, out_channels, 3, relu=False)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = ConvBN(in_channels, out_channels, 1, stride, relu=False)
        else:
            self.shortcut = nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-``depth`` for 32x32 inputs; ``layer{k}`` modules end where the paper cuts blocks."""

    def __init__(self, depth: int, widths: list[int], num_classes: int = 100, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"a basic-block CIFAR ResNet has depth 6n+2, not {depth}")
        blocks = (depth - 2) // 6
        self.stem = ConvBN(in_channels, widths[0], 3)
        channels = widths[0]
        for index, (width, stride) in enumerate(zip(widths[1:], (1, 2, 2)), start=1):
            layers = [BasicBlock(channels, width, stride)]
            layers += [BasicBlock(width, width) for _ in range(blocks - 1)]
            setattr(self, f"layer{index}", nn.Sequential(*layers))
            channels = width
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        init_conv_bn(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        x = self.avgpool(x).flatten(1)
        return self.fc(x)


def _factory(name: str):
    def make(num_classes: int = 100, widths: list[int] | None = None, **kwargs) -> CifarResNet:
        depth, default_widths = RESNET_CONFIGS[name]
        return CifarResNet(depth, list(widths or default_widths), num_classes=num_classes, **kwargs)

    make.__name__ = name
    make.__doc__ = f"{name} (stem and stage widths {RESNET_CONFIGS[name][1]}) for 32x32 inputs."
    return make


resnet8 = _factory("resnet8")
resnet14 = _factory("resnet14")
resnet20 = _factory("resnet20")
resnet32 = _factory("resnet32")
resnet44 = _factory("resnet44")
resnet56 = _factory("resnet56")
resnet110 = _factory("resnet110")
resnet8x2 = _factory("resnet8x2")
resnet8x4 = _factory("resnet8x4")
resnet32x4 = _factory("resnet32x4")
