"""Small networks for the multi-process tests, referenced as ``python:tests.ddp_nets:NAME``.

``plain_net`` has no BatchNorm, so a step over the global batch and DDP's average of the
per-rank steps are the same computation. ``failing_net`` breaks on one rank mid-epoch.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor, nn


class PlainNet(nn.Module):
    """Two stages of conv + ReLU (no BatchNorm), pooled to a linear classifier."""

    def __init__(self, num_classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1), nn.ReLU(), nn.Conv2d(width, width, 3, 1, 1), nn.ReLU())
        self.stage2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, 2, 1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.stage2(self.stage1(x))).flatten(1))


def plain_net(num_classes: int = 10, width: int = 8) -> PlainNet:
    return PlainNet(num_classes, width)


_calls = 0


def fail_on_rank(x: Tensor, mode: str, rank: int, at_call: int) -> Tensor:
    """Raise (``mode`` "raise") or return NaN ("nan") at the ``at_call``-th training forward on ``rank``.

    Kept as one call by torch.fx (see ``torch.fx.wrap`` below), so it still runs inside the
    SFTN and student splicer builds from the traced network.
    """
    global _calls
    if torch.is_grad_enabled() and x.requires_grad and int(os.environ.get("RANK", "0")) == rank:
        _calls += 1
        if _calls == at_call:
            if mode == "raise":
                raise RuntimeError(f"injected failure on rank {rank}")
            return x * float("nan")
    return x


torch.fx.wrap("fail_on_rank")


class FailingNet(PlainNet):
    """A :class:`PlainNet` that breaks on one rank mid-epoch (see :func:`fail_on_rank`)."""

    def __init__(self, num_classes: int = 10, mode: str = "raise", rank: int = 1, at_call: int = 3) -> None:
        super().__init__(num_classes, 4)
        self.mode, self.fail_rank, self.at_call = mode, rank, at_call

    def forward(self, x: Tensor) -> Tensor:
        x = self.stage2(self.stage1(x))
        x = fail_on_rank(x, self.mode, self.fail_rank, self.at_call)
        return self.fc(self.pool(x).flatten(1))


def failing_net(num_classes: int = 10, mode: str = "raise", rank: int = 1, at_call: int = 3) -> FailingNet:
    return FailingNet(num_classes, mode, rank, at_call)
