"""MobileNetV2 (Sandler et al. 2018) at half width, as the CIFAR-100 benchmark's ``mobile_half``.

The benchmark keeps the ImageNet layout on 32x32 inputs: a stride-2 stem, so the stages
run at 16x16, 8x8, 4x4 and 2x2; ReLU (not ReLU6) activations; every inverted residual,
even at expansion 1, starts with a 1x1 expansion conv; a 1x1 conv to 1280 channels
(``conv_head``, not narrowed below width 1) before global pooling. The inverted-residual
rows are grouped into ``layer1`` .. ``layer4`` by resolution; the paper cuts after
``layer1``, ``layer2``, ``layer3`` and ``conv_head``.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from splicer.models.cifar.common import ConvBN, init_conv_bn

# Per stage, rows of (expansion t, channels c, blocks n, first stride s) before width scaling.
MOBILENETV2_STAGES: list[list[tuple[int, int, int, int]]] = [
    [(1, 16, 1, 1), (6, 24, 2, 1)],
    [(6, 32, 3, 2)],
    [(6, 64, 4, 2), (6, 96, 3, 1)],
    [(6, 160, 3, 2), (6, 320, 1, 1)],
]


class InvertedResidual(nn.Module):
    """1x1 expansion, 3x3 depthwise, linear 1x1 projection; residual when the shape is kept."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.conv = nn.Sequential(
            OrderedDict(
                expand=ConvBN(in_channels, hidden, 1),
                depthwise=ConvBN(hidden, hidden, 3, stride, groups=hidden),
                project=ConvBN(hidden, out_channels, 1, relu=False),
            )
        )
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        if self.use_residual:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 for 32x32 inputs with channel widths scaled by ``width_mult``."""

    def __init__(self, width_mult: float, num_classes: int = 100, in_channels: int = 3) -> None:
        super().__init__()
        channels = int(32 * width_mult)
        self.stem = ConvBN(in_channels, channels, 3, stride=2)
        for index, rows in enumerate(MOBILENETV2_STAGES, start=1):
            blocks = []
            for expansion, width, count, stride in rows:
                width = int(width * width_mult)
                for i in range(count):
                    blocks.append(InvertedResidual(channels, width, stride if i == 0 else 1, expansion))
                    channels = width
            setattr(self, f"layer{index}", nn.Sequential(*blocks))
        head = max(1280, int(1280 * width_mult))
        self.conv_head = ConvBN(channels, head, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(head, num_classes)
        init_conv_bn(self)
        nn.init.normal_(self.fc.weight, 0, 0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        x = self.avgpool(self.conv_head(x)).flatten(1)
        return self.fc(x)


def mobilenetv2_half(num_classes: int = 100, **kwargs) -> MobileNetV2:
    """The benchmark's MobileNetV2: width multiplier 0.5, expansion 6."""
    return MobileNetV2(0.5, num_classes=num_classes, **kwargs)
