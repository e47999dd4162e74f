"""Small models for compiler tests, referenced from specs as ``python:tests.toy_nets:NAME``."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ResidualBlock(nn.Module):
    def __init__(self, channels: int, stride: int = 1) -> None:
        super().__init__()
        out = channels * stride
        self.conv1 = nn.Conv2d(channels, out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out)
        self.conv2 = nn.Conv2d(out, out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out)
        self.shortcut = (
            nn.Sequential(nn.Conv2d(channels, out, 1, stride, bias=False), nn.BatchNorm2d(out)) if stride > 1 else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn1(self.conv1(x)).relu()
        y = self.bn2(self.conv2(y))
        return (y + self.shortcut(x)).relu()


class TinyResNet(nn.Module):
    """Three stages (width, 2*width, 4*width channels at 1, 1/2, 1/4 resolution)."""

    def __init__(self, num_classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.layer1 = nn.Sequential(ResidualBlock(width), ResidualBlock(width))
        self.layer2 = nn.Sequential(ResidualBlock(width, 2), ResidualBlock(2 * width))
        self.layer3 = nn.Sequential(ResidualBlock(2 * width, 2), ResidualBlock(4 * width))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(self.pool(x).flatten(1))


def tiny_resnet(num_classes: int = 10, width: int = 8) -> TinyResNet:
    return TinyResNet(num_classes, width)


class PreActStart(nn.Module):
    """A net whose second stage starts with an in-place ReLU on its input."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.Conv2d(8, 8, 3, 1, 1))
        self.stage2 = nn.Sequential(nn.ReLU(inplace=True), nn.Conv2d(8, 16, 3, 2, 1), nn.Conv2d(16, 16, 3, 1, 1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.stage2(self.stage1(x))).flatten(1))


def preact_start(num_classes: int = 10) -> PreActStart:
    return PreActStart(num_classes)


class BatchSizeReader(nn.Module):
    """Reads the batch size once at the top and uses it at the bottom, as many timm models do."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.stage2 = nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        batch = x.shape[0]
        x = self.stage2(self.stage1(x))
        return self.fc(self.pool(x).reshape(batch, -1))


def batch_size_reader(num_classes: int = 10) -> BatchSizeReader:
    return BatchSizeReader(num_classes)


class FunctionalDropoutHead(nn.Module):
    """A head that calls ``F.dropout(training=self.training)``, as many timm models do."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.stage2 = nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stage2(self.stage1(x)).mean((2, 3))
        return self.fc(nn.functional.dropout(x, p=0.5, training=self.training))


def functional_dropout_head(num_classes: int = 10) -> FunctionalDropoutHead:
    return FunctionalDropoutHead(num_classes)


class RandomDepth(nn.Module):
    """Stochastic depth written with ``self.training`` in Python, as timm's DropPath is."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x
        keep = (torch.rand(x.shape[0], 1, 1, 1) > 0.5).to(x.dtype)
        return x * keep * 2


class HeadsSplit(nn.Module):
    """Folds 2 heads into dim 0 and reads dim 0 back: that size(0) is batch x heads, not the batch."""

    def forward(self, x: Tensor) -> Tensor:
        folded = x.reshape(x.shape[0] * 2, x.shape[1] // 2, x.shape[2], x.shape[3])
        rows = folded.size(0)
        return folded.reshape(rows // 2, -1, x.shape[2], x.shape[3])


class TrickyNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.BatchNorm2d(8), nn.ReLU(), RandomDepth())
        self.stage2 = nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1), HeadsSplit(), nn.BatchNorm2d(16), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.stage2(self.stage1(x))).flatten(1))


def tricky_net(num_classes: int = 10) -> TrickyNet:
    return TrickyNet(num_classes)


class ScaleAndShift(nn.Module):
    """A layer with a raw parameter and a non-persistent buffer, traced through (get_attr nodes in the graph)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((channels, 1, 1), 0.5))
        self.register_buffer("shift", torch.linspace(-1, 1, channels).view(channels, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma + self.shift


class CustomLayersNet(nn.Module):
    """Every stage holds a user layer traced through and one kept opaque; the head a functional dropout and,
    optionally, a tensor constant."""

    def __init__(self, num_classes: int = 10, width: int = 8, constant_in_head: bool = False) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(
            nn.Conv2d(3, width, 3, 1, 1), nn.BatchNorm2d(width), nn.ReLU(), ScaleAndShift(width), RandomDepth()
        )
        self.stage2 = nn.Sequential(
            nn.Conv2d(width, 2 * width, 3, 2, 1), nn.BatchNorm2d(2 * width), nn.ReLU(), ScaleAndShift(2 * width), RandomDepth()
        )
        self.fc = nn.Linear(2 * width, num_classes)
        self.constant_in_head = constant_in_head

    def forward(self, x: Tensor) -> Tensor:
        x = self.stage2(self.stage1(x)).mean((2, 3))
        if self.constant_in_head:  # a tensor made in forward: tracing keeps it as a constant of the graph
            x = x * torch.tensor([2.0])
        return self.fc(nn.functional.dropout(x, p=0.1, training=self.training))


def custom_layers_net(num_classes: int = 10, width: int = 8, constant_in_head: bool = False) -> CustomLayersNet:
    return CustomLayersNet(num_classes, width, constant_in_head)


def _conv_bn_relu(cin: int, cout: int, stride: int = 1, padding: int = 0) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, padding, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ValidConvNet(nn.Module):
    """Inception-style unpadded ("valid") convolutions: at 96x96 its stages run 47 -> 45, 22 -> 20 -> 18
    and 8 pixels, and 45 and 18 are no integer division of 96."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(_conv_bn_relu(3, 8, 2), _conv_bn_relu(8, 8), _conv_bn_relu(8, 16, padding=1))
        self.stage2 = nn.Sequential(nn.MaxPool2d(3, 2), _conv_bn_relu(16, 16), _conv_bn_relu(16, 32))
        self.stage3 = nn.Sequential(_conv_bn_relu(32, 64, 2), _conv_bn_relu(64, 64, padding=1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.stage3(self.stage2(self.stage1(x)))).flatten(1))


def valid_conv_net(num_classes: int = 10) -> ValidConvNet:
    return ValidConvNet(num_classes)
