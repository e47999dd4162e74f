"""Attention transfer (Zagoruyko & Komodakis, 2017): match normalised spatial attention maps."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from splicer.training.methods.base import POOL_LARGER, FeatureMethod, register_method, resize_to


def attention_map(feature: Tensor) -> Tensor:
    """Zagoruyko & Komodakis' spatial attention: mean over channels of f^2, flattened and L2-normalised."""
    return F.normalize(feature.pow(2).mean(dim=1).flatten(1), dim=1)


@register_method("at")
class AT(FeatureMethod):
    """Attention transfer (Zagoruyko & Komodakis, 2017) on every block pair, as the benchmark.

    The benchmark takes feat[1:-1], the output of every stage including the last one before
    pooling, i.e. all N of our blocks, and sums the per-pair losses. The larger feature of a
    pair is average-pooled to the smaller one's H x W before its attention map is taken.
    """

    default_feature_weight: ClassVar[float] = 1000.0
    size_rule: ClassVar[str] = f"every block; {POOL_LARGER}, then each map's attention map"

    def feature_loss(self, student_features: list[Tensor], teacher_features: list[Tensor]) -> Tensor:
        losses = []
        for student, teacher in zip(student_features, teacher_features, strict=True):
            size = (min(student.shape[-2], teacher.shape[-2]), min(student.shape[-1], teacher.shape[-1]))
            diff = attention_map(resize_to(student, size)) - attention_map(resize_to(teacher, size))
            losses.append(diff.pow(2).mean())
        return torch.stack(losses).sum()
