"""Small models for training tests, referenced from specs as ``python:tests.tiny_models:NAME``."""

from __future__ import annotations

from torch import Tensor, nn


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class DropoutNet(nn.Module):
    """Three conv stages and a dropout head: training draws from the global RNG, as resume must restore."""

    def __init__(self, num_classes: int = 10, width: int = 8, p: float = 0.3) -> None:
        super().__init__()
        self.layer1 = _conv(3, width, 1)
        self.layer2 = _conv(width, 2 * width, 2)
        self.layer3 = _conv(2 * width, 4 * width, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(p)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.drop(self.pool(x).flatten(1)))


def dropout_net(num_classes: int = 10, width: int = 8, p: float = 0.3) -> DropoutNet:
    return DropoutNet(num_classes, width, p)
