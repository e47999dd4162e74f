"""ShuffleNet V2 1x (Ma et al. 2018), as the CIFAR-100 benchmark's ``ShuffleV2``.

A 1x1 stem conv to 24 channels at 32x32; three stages, each a downsampling unit followed
by 3, 7, 3 basic units, at 116, 232, 464 channels and 16x16, 8x8, 4x4; a 1x1 conv to 1024
channels (``conv_head``), global average pool and one linear layer. As the benchmark, the
weights keep PyTorch's default initialisation. The paper cuts after ``layer1``, ``layer2``
and ``conv_head`` (the tensor that enters pooling).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn

from splicer.models.cifar.common import ChannelShuffle, ConvBN

# Output channels and basic units (after the downsampling one) of each stage; head width.
SHUFFLEV2_STAGES: list[tuple[int, int]] = [(116, 3), (232, 7), (464, 3)]
SHUFFLEV2_HEAD = 1024


def _branch(in_channels: int, channels: int, stride: int) -> nn.Sequential:
    """1x1 conv, 3x3 depthwise (no ReLU), 1x1 conv: the right branch of every unit."""
    return nn.Sequential(
        OrderedDict(
            reduce=ConvBN(in_channels, channels, 1),
            depthwise=ConvBN(channels, channels, 3, stride, groups=channels, relu=False),
            expand=ConvBN(channels, channels, 1),
        )
    )


class BasicUnit(nn.Module):
    """Pass half the channels through, transform the other half, concatenate, shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.split = channels // 2
        self.branch = _branch(channels - self.split, channels - self.split, 1)
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: Tensor) -> Tensor:
        kept, transformed = x[:, : self.split], x[:, self.split :]
        return self.shuffle(torch.cat([kept, self.branch(transformed)], 1))


class DownUnit(nn.Module):
    """Two strided branches over the whole input, each to half the output, then shuffle."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        half = out_channels // 2
        self.left = nn.Sequential(
            OrderedDict(
                depthwise=ConvBN(in_channels, in_channels, 3, 2, groups=in_channels, relu=False),
                expand=ConvBN(in_channels, half, 1),
            )
        )
        self.right = _branch(in_channels, half, 2)
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: Tensor) -> Tensor:
        return self.shuffle(torch.cat([self.left(x), self.right(x)], 1))


class ShuffleNetV2(nn.Module):
    """ShuffleNet V2 for 32x32 inputs; ``layer1``, ``layer2``, ``conv_head`` end the paper's blocks."""

    def __init__(
        self,
        stages: list[tuple[int, int]],
        head: int,
        num_classes: int = 100,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        channels = 24
        self.stem = ConvBN(in_channels, channels, 1)
        for index, (width, units) in enumerate(stages, start=1):
            layers: list[nn.Module] = [DownUnit(channels, width)]
            layers += [BasicUnit(width) for _ in range(units)]
            setattr(self, f"layer{index}", nn.Sequential(*layers))
            channels = width
        self.conv_head = ConvBN(channels, head, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(head, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        x = self.avgpool(self.conv_head(x)).flatten(1)
        return self.fc(x)


def shufflev2(num_classes: int = 100, **kwargs) -> ShuffleNetV2:
    """The benchmark's ShuffleV2: the 1x net (116, 232, 464 channels, head 1024)."""
    return ShuffleNetV2(SHUFFLEV2_STAGES, SHUFFLEV2_HEAD, num_classes=num_classes, **kwargs)
