"""Wide ResNets WRN-depth-k (Zagoruyko & Komodakis 2016), as the CIFAR-100 benchmark.

A plain 3x3 stem conv, three groups of ``(depth - 4) / 6`` pre-activation blocks at widths
16k, 32k, 64k (32x32, 16x16, 8x8), then a final BN + ReLU (``norm``), global average pool
and one linear layer. Being pre-activation, a group ends on a bare residual sum; the tensor
that enters pooling is ``norm``'s output, so the paper's last block ends there.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from splicer.models.cifar.common import init_conv_bn

# name -> (depth, widen factor).
WRN_CONFIGS: dict[str, tuple[int, int]] = {
    "wrn_16_1": (16, 1),
    "wrn_16_2": (16, 2),
    "wrn_40_1": (40, 1),
    "wrn_40_2": (40, 2),
}


def bn_relu(channels: int) -> nn.Sequential:
    """The pre-activation of a WRN conv."""
    return nn.Sequential(OrderedDict(bn=nn.BatchNorm2d(channels), relu=nn.ReLU(inplace=True)))


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """Bias-free: a BN always follows (the next pre-activation, or ``norm``)."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class PreActBlock(nn.Module):
    """BN-ReLU-conv twice plus a shortcut.

    Where the shape changes the shortcut is a 1x1 conv of the pre-activated input (the
    activation is then shared by both paths); elsewhere it is the raw input.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.act1 = bn_relu(in_channels)
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.act2 = bn_relu(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.shortcut: nn.Conv2d | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        activated = self.act1(x)
        out = self.conv2(self.act2(self.conv1(activated)))
        residual = x if self.shortcut is None else self.shortcut(activated)
        return residual + out


class WideResNet(nn.Module):
    """WRN for 32x32 inputs; ``layer1``, ``layer2`` and ``norm`` end where the paper cuts blocks."""

    def __init__(self, depth: int, widen_factor: int, num_classes: int = 100, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"a WRN has depth 6n+4, not {depth}")
        blocks = (depth - 4) // 6
        self.stem = conv3x3(in_channels, 16)
        channels = 16
        for index, (width, stride) in enumerate(zip((16, 32, 64), (1, 2, 2)), start=1):
            width *= widen_factor
            layers = [PreActBlock(channels, width, stride)]
            layers += [PreActBlock(width, width) for _ in range(blocks - 1)]
            setattr(self, f"layer{index}", nn.Sequential(*layers))
            channels = width
        self.norm = bn_relu(channels)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        init_conv_bn(self)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        x = self.avgpool(self.norm(x)).flatten(1)
        return self.fc(x)


def _factory(name: str):
    def make(num_classes: int = 100, **kwargs) -> WideResNet:
        depth, widen_factor = WRN_CONFIGS[name]
        return WideResNet(depth, widen_factor, num_classes=num_classes, **kwargs)

    make.__name__ = name
    make.__doc__ = "WRN-{}-{} for 32x32 inputs.".format(*WRN_CONFIGS[name])
    return make


wrn_16_1 = _factory("wrn_16_1")
wrn_16_2 = _factory("wrn_16_2")
wrn_40_1 = _factory("wrn_40_1")
wrn_40_2 = _factory("wrn_40_2")
