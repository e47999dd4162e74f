"""OH (Heo et al., ICCV 2019, "A comprehensive overhaul of feature distillation").

The student's pre-ReLU features at every block end, through a connector (1x1 conv + BN),
are pulled towards the teacher's pre-ReLU features with a partial L2: the teacher's value is
first raised to a per-channel margin m (``target = max(t, m)``), and positions where the
teacher is negative (``target <= 0``) and the student is already at or below the target
contribute nothing, because the ReLU would discard that difference anyway.

The margin is E[x | x < 0] for x ~ N(beta, gamma^2), the distribution the BatchNorm before
the teacher's final ReLU gives each channel (its bias beta and |weight| gamma), as the
authors compute it; -3 gamma where fewer than 0.1 % of the values are negative. The BN is
found by the compiler in the traced graph (:mod:`splicer.trace.preactivation`); a block end
whose ReLU reads no BatchNorm is refused with a clear message.

Loss scale, as the authors' CIFAR-100 code: per block end the partial-L2 sum over all
elements, weighted 2^-(N-i) for block i of N (the last block 1, the one before 1/2, ...),
summed, divided by the batch size; feature_weight (default 1/1000) multiplies it. Unlike
the authors' script (CE + OH, no KD), OH is trained jointly with KD as the paper trains
every feature method (CE 0.1, KD 0.9 at T = 4), so that its numbers compare with the
other methods'; set kd_weight 0 and ce_weight 1 for the authors' own objective.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn

from splicer.errors import UnsupportedPairError
from splicer.training.methods.base import RESIZE, FeatureMethod, Shape, register_method, resize_to

RARE_NEGATIVE = 0.001
"""Below this probability of a negative pre-activation the margin is -3 sigma (the authors' cut-off)."""


def margin_from_bn(weight: Tensor, bias: Tensor) -> Tensor:
    """Per channel, E[x | x < 0] for x ~ N(bias, |weight|^2), or -3 |weight| where P(x < 0) <= 0.001."""
    std = weight.detach().double().abs().clamp_min(1e-12)
    mean = bias.detach().double()
    negative = torch.special.ndtr(-mean / std)  # P(x < 0)
    density = torch.exp(-((mean / std) ** 2) / 2) / math.sqrt(2 * math.pi)
    expected = mean - std * density / negative.clamp_min(1e-300)
    return torch.where(negative > RARE_NEGATIVE, expected, -3 * std).float()


def partial_l2(student: Tensor, teacher: Tensor, margin: Tensor) -> Tensor:
    """Sum over all elements of (s - max(t, m))^2, except where s <= max(t, m) <= 0."""
    target = torch.maximum(teacher, margin)
    keep = (student > target) | (target > 0)
    return ((student - target).pow(2) * keep).sum()


class Connector(nn.Module):
    """The student-side connector: resize to the teacher's H x W if needed, 1x1 conv to its channels, BN.

    Initialised as the authors' (He-normal conv over fan-out, BN weight 1 and bias 0).
    """

    def __init__(self, student_shape: Shape, teacher_shape: Shape) -> None:
        super().__init__()
        self.size = (teacher_shape[1], teacher_shape[2])
        self.conv = nn.Conv2d(student_shape[0], teacher_shape[0], kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(teacher_shape[0])
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, feature: Tensor) -> Tensor:
        return self.bn(self.conv(resize_to(feature, self.size)))


@register_method("oh")
class OH(FeatureMethod):
    """Heo et al. (2019): partial L2 between connector(student pre-ReLU) and the margin-raised teacher pre-ReLU."""

    needs_preactivations: ClassVar[bool] = True
    default_feature_weight: ClassVar[float] = 1e-3
    size_rule: ClassVar[str] = f"every block's pre-ReLU map; connector: {RESIZE}, then 1x1 conv + BN"

    def build(self, teacher_shapes: list[Shape], student_shapes: list[Shape]) -> None:
        self.connectors = nn.ModuleList(Connector(s, t) for s, t in zip(student_shapes, teacher_shapes, strict=True))
        count = len(teacher_shapes)
        self.layer_weights = [2.0 ** -(count - 1 - i) for i in range(count)]
        for i, shape in enumerate(teacher_shapes):
            # Derived from the teacher in prepare(), not trained: kept out of checkpoints.
            self.register_buffer(f"margin{i}", torch.zeros(1, shape[0], 1, 1), persistent=False)
        self._margins_set: set[int] = set()

    def prepare(self, teacher: nn.Module) -> None:
        """Margins from the BatchNorm before each teacher block end's final ReLU."""
        for i, (norm, tap) in enumerate(zip(teacher.preactivation_norms(), teacher.taps, strict=True)):
            if norm is None or getattr(norm, "weight", None) is None:
                raise UnsupportedPairError(
                    f"distill method 'oh' takes its margin from the BatchNorm (with affine weights) before the final "
                    f"ReLU of every teacher block end, but the ReLU of teacher block end {tap.block_end!r} reads "
                    "no such BatchNorm (directly, through identities or through a residual sum); choose another "
                    "method or block ends whose final ReLU follows a BatchNorm"
                )
            self.set_margin(i, margin_from_bn(norm.weight, norm.bias))

    def set_margin(self, index: int, margin: Tensor) -> None:
        """Set block ``index``'s per-channel margin (C values)."""
        buffer = getattr(self, f"margin{index}")
        buffer.copy_(margin.view_as(buffer))
        self._margins_set.add(index)

    def feature_loss(self, student_features: list[Tensor], teacher_features: list[Tensor]) -> Tensor:
        if len(self._margins_set) != len(self.connectors):
            raise RuntimeError("OH.prepare(teacher) must set the margins before training")
        batch = student_features[0].shape[0]
        total = student_features[0].new_zeros((), dtype=torch.float32)
        for i, (student, teacher) in enumerate(zip(student_features, teacher_features, strict=True)):
            source = self.connectors[i](student).float()
            total = total + self.layer_weights[i] * partial_l2(source, teacher.float(), getattr(self, f"margin{i}"))
        return total / batch
