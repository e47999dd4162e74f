"""Variational information distillation (Ahn et al., CVPR 2019): maximise a variational lower
bound on the mutual information between teacher and student features."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from splicer.training.methods.base import (
    POOL_LARGER,
    FeatureMethod,
    MethodOptions,
    Shape,
    register_method,
    resize_to,
)


class VIDOptions(MethodOptions):
    """The Gaussian's variance at initialisation and its floor (the authors' init_pred_var and eps)."""

    init_variance: float = Field(5.0, gt=0, description="Per-channel variance at initialisation (init_pred_var).")
    eps: float = Field(1e-5, gt=0, description="Floor added to the softplus variance (eps).")


class GaussianRegressor(nn.Module):
    """Predicts the mean of a Gaussian over the teacher's feature from the student's, with a
    learned per-channel variance: softplus(alpha_c) + eps.

    Three 1x1 convolutions with ReLUs between them, the middle width equal to the teacher's
    channels, as the benchmark builds VIDLoss(s, t, t); alpha_c starts where the variance is
    ``init_variance``.
    """

    def __init__(self, student_channels: int, teacher_channels: int, init_variance: float, eps: float) -> None:
        super().__init__()
        self.mean = nn.Sequential(
            nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(teacher_channels, teacher_channels, kernel_size=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(teacher_channels, teacher_channels, kernel_size=1, bias=False),
        )
        self.eps = eps
        start = math.log(math.expm1(init_variance - eps))  # softplus^-1(init_variance - eps)
        self.log_scale = nn.Parameter(torch.full((teacher_channels,), start))

    def variance(self) -> Tensor:
        return F.softplus(self.log_scale) + self.eps

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        """Mean negative log-likelihood of the teacher feature (up to the constant log sqrt(2 pi))."""
        variance = self.variance().view(1, -1, *([1] * (teacher.dim() - 2)))
        return (0.5 * ((self.mean(student) - teacher).pow(2) / variance + variance.log())).mean()


@register_method("vid")
class VID(FeatureMethod):
    """One Gaussian regressor per block pair, on every block end (all N, as AT); the losses are summed.

    Where the spatial sizes differ, the larger feature is average-pooled to the smaller one's
    size first, as the benchmark does.
    """

    default_feature_weight: ClassVar[float] = 1.0
    size_rule: ClassVar[str] = f"every block; {POOL_LARGER}; 1x1 convs to the teacher's channels"
    Options = VIDOptions

    def build(self, teacher_shapes: list[Shape], student_shapes: list[Shape]) -> None:
        self.regressors = nn.ModuleList(
            GaussianRegressor(s[0], t[0], self.options.init_variance, self.options.eps)
            for s, t in zip(student_shapes, teacher_shapes, strict=True)
        )

    def feature_loss(self, student_features: list[Tensor], teacher_features: list[Tensor]) -> Tensor:
        losses = []
        for regressor, student, teacher in zip(self.regressors, student_features, teacher_features, strict=True):
            size = (min(student.shape[-2], teacher.shape[-2]), min(student.shape[-1], teacher.shape[-1]))
            losses.append(regressor(resize_to(student, size), resize_to(teacher, size)))
        return torch.stack(losses).sum()
