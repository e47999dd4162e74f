"""A stand-in for your own model code: any nn.Module that torch.fx can trace, and a factory for it.

Specs refer to it as ``python:own_net:make_net`` (MODULE:FACTORY; the module must be importable,
e.g. run from this folder or with it on PYTHONPATH). The factory receives ``num_classes`` and
the spec's ``kwargs``.
"""

from __future__ import annotations

from torch import Tensor, nn


def conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(channels, channels), nn.Conv2d(channels, channels, 3, 1, 1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return (x + self.body(x)).relu()


class OwnNet(nn.Module):
    """stem, then three stages (width, 2 width, 4 width channels at 1, 1/2, 1/4 resolution), then the head."""

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.stem = conv_bn(3, width)
        self.stage1 = nn.Sequential(Residual(width), Residual(width))
        self.stage2 = nn.Sequential(conv_bn(width, 2 * width, stride=2), Residual(2 * width))
        self.stage3 = nn.Sequential(conv_bn(2 * width, 4 * width, stride=2), Residual(4 * width))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.stage3(self.stage2(self.stage1(self.stem(x)))))


def make_net(num_classes: int = 10, width: int = 16) -> OwnNet:
    return OwnNet(num_classes, width)
