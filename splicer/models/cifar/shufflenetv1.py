"""ShuffleNet V1 (Zhang et al. 2018), groups 3, as the CIFAR-100 benchmark's ``ShuffleV1``.

A 1x1 stem conv to 24 channels at 32x32; three stages of 4, 8, 4 units ending at 240, 480,
960 channels and 16x16, 8x8, 4x4 (the first unit of a stage halves the resolution and
concatenates an average-pooled shortcut); global average pool and one linear layer. As the
benchmark, a ReLU follows the depthwise conv (the paper has none there) and the weights
keep PyTorch's default initialisation. The paper cuts after ``layer1``, ``layer2``, ``layer3``.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn

from splicer.models.cifar.common import ChannelShuffle, ConvBN

# Output channels and units of each stage, for 3 groups.
SHUFFLEV1_STAGES: list[tuple[int, int]] = [(240, 4), (480, 8), (960, 4)]
SHUFFLEV1_GROUPS = 3


class ShuffleUnit(nn.Module):
    """Grouped 1x1, shuffle, 3x3 depthwise, grouped 1x1; plus the shortcut, ReLU after.

    A striding unit concatenates its average-pooled input instead of adding it, so its
    output has ``in_channels + out_channels`` channels. The first 1x1 is not grouped when
    its input is too narrow to split (the stem's 24 channels).
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, groups: int, group_first: bool
    ) -> None:
        super().__init__()
        mid = out_channels // 4
        first_groups = groups if group_first else 1
        self.branch = nn.Sequential(
            OrderedDict(
                reduce=ConvBN(in_channels, mid, 1, groups=first_groups),
                shuffle=ChannelShuffle(first_groups) if first_groups > 1 else nn.Identity(),
                depthwise=ConvBN(mid, mid, 3, stride, groups=mid),
                expand=ConvBN(mid, out_channels, 1, groups=groups, relu=False),
            )
        )
        self.shortcut = nn.AvgPool2d(3, stride=2, padding=1) if stride != 1 else None
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.branch(x)
        if self.shortcut is None:
            return self.relu(out + x)
        return self.relu(torch.cat([out, self.shortcut(x)], 1))


class ShuffleNetV1(nn.Module):
    """ShuffleNet V1 for 32x32 inputs; ``layer{k}`` modules end where the paper cuts blocks."""

    def __init__(
        self,
        stages: list[tuple[int, int]],
        groups: int,
        num_classes: int = 100,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        channels = 24
        self.stem = ConvBN(in_channels, channels, 1)
        for index, (width, units) in enumerate(stages, start=1):
            layers = [ShuffleUnit(channels, width - channels, 2, groups, group_first=index > 1)]
            layers += [ShuffleUnit(width, width, 1, groups, group_first=True) for _ in range(units - 1)]
            setattr(self, f"layer{index}", nn.Sequential(*layers))
            channels = width
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        x = self.avgpool(x).flatten(1)
        return self.fc(x)


def shufflev1(num_classes: int = 100, **kwargs) -> ShuffleNetV1:
    """The benchmark's ShuffleV1: groups 3, stages of 240, 480, 960 channels."""
    return ShuffleNetV1(SHUFFLEV1_STAGES, SHUFFLEV1_GROUPS, num_classes=num_classes, **kwargs)
