"""ResNet-50 for 32x32 inputs, as the CIFAR-100 benchmark's ``ResNet50``.

The ImageNet network's four bottleneck stages (3, 4, 6, 3 blocks at widths 64 .. 512,
expansion 4) behind a 3x3 stride-1 stem with no max-pool, so the stages run at 32x32,
16x16, 8x8 and 4x4; global average pool and one linear layer. The paper cuts after
``layer1`` .. ``layer4``.
"""

from __future__ import annotations

from torch import Tensor, nn

from splicer.models.cifar.common import ConvBN, init_conv_bn

EXPANSION = 4


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4, with a residual; ReLU after the sum."""

    def __init__(self, in_channels: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = planes * EXPANSION
        self.conv1 = ConvBN(in_channels, planes, 1)
        self.conv2 = ConvBN(planes, planes, 3, stride)
        self.conv3 = ConvBN(planes, out_channels, 1, relu=False)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = ConvBN(in_channels, out_channels, 1, stride, relu=False)
        else:
            self.shortcut = nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.conv3(self.conv2(self.conv1(x))) + self.shortcut(x))


class BottleneckResNet(nn.Module):
    """Bottleneck ResNet for 32x32 inputs; ``layer{k}`` modules end where the paper cuts blocks."""

    def __init__(self, blocks: list[int], num_classes: int = 100, in_channels: int = 3) -> None:
        super().__init__()
        channels = 64
        self.stem = ConvBN(in_channels, channels, 3)
        stages = zip(blocks, (64, 128, 256, 512), (1, 2, 2, 2))
        for index, (count, planes, stride) in enumerate(stages, start=1):
            layers = [Bottleneck(channels, planes, stride)]
            channels = planes * EXPANSION
            layers += [Bottleneck(channels, planes) for _ in range(count - 1)]
            setattr(self, f"layer{index}", nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        init_conv_bn(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        x = self.avgpool(x).flatten(1)
        return self.fc(x)


def resnet50(num_classes: int = 100, **kwargs) -> BottleneckResNet:
    """The benchmark's ResNet50: 3, 4, 6, 3 bottleneck blocks."""
    return BottleneckResNet([3, 4, 6, 3], num_classes=num_classes, **kwargs)
