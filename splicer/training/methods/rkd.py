"""Relational KD (Park et al., CVPR 2019): transfer the distances and angles between the
samples of a batch rather than the samples' features themselves."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from splicer.training.methods.base import (
    FeatureForm,
    FeatureMethod,
    MethodOptions,
    batch_relation_inputs,
    pooled,
    register_method,
)


class RKDOptions(MethodOptions):
    """The weights of the two relations inside the RKD loss (the authors' w_d and w_a)."""

    distance_weight: float = Field(25.0, ge=0, description="Weight of the distance term (authors' w_d).")
    angle_weight: float = Field(50.0, ge=0, description="Weight of the angle term (authors' w_a).")


def normalised_distances(features: Tensor) -> Tensor:
    """B x B Euclidean distances (zero diagonal) divided by their mean over the non-zero entries."""
    squares = features.pow(2).sum(dim=1)
    squared = (squares.unsqueeze(1) + squares.unsqueeze(0) - 2 * features @ features.t()).clamp(min=1e-12)
    off_diagonal = 1.0 - torch.eye(len(features), device=features.device, dtype=features.dtype)
    distances = squared.sqrt() * off_diagonal
    return distances / distances[distances > 0].mean()


def angles(features: Tensor) -> Tensor:
    """B x B x B cosines: entry (i, j, k) is the cosine of the angle at x_i between x_j and x_k."""
    directions = F.normalize(features.unsqueeze(0) - features.unsqueeze(1), p=2, dim=2)  # [i, j] = x_j - x_i
    return directions @ directions.transpose(1, 2)


@register_method("rkd")
class RKD(FeatureMethod):
    """Huber (smooth L1) losses between the teacher's and student's distance and angle relations.

    On the globally average-pooled last block outputs (the benchmark's feat[-1]); the two terms
    are logged separately, each already multiplied by feature_weight and its own weight.
    """

    default_feature_weight: ClassVar[float] = 1.0
    reads: ClassVar[FeatureForm] = "vectors"
    size_rule: ClassVar[str] = "last block's global vectors; no resizing: only distances and angles are compared"
    Options = RKDOptions

    def feature_terms(self, student_features: list[Tensor], teacher_features: list[Tensor]) -> dict[str, Tensor]:
        distance, angle = self.relation_losses(student_features, teacher_features)
        return {
            "distance": self.feature_weight * self.options.distance_weight * distance,
            "angle": self.feature_weight * self.options.angle_weight * angle,
        }

    def feature_loss(self, student_features: list[Tensor], teacher_features: list[Tensor]) -> Tensor:
        """The RKD loss before feature_weight: w_d * distance + w_a * angle."""
        distance, angle = self.relation_losses(student_features, teacher_features)
        return self.options.distance_weight * distance + self.options.angle_weight * angle

    def relation_losses(self, student_features: list[Tensor], teacher_features: list[Tensor]) -> tuple[Tensor, Tensor]:
        """The unweighted distance and angle losses."""
        last = [student_features[-1], teacher_features[-1]]
        full_precision, (student, teacher) = batch_relation_inputs(self.dist, last)
        with full_precision:
            student, teacher = pooled(student), pooled(teacher)
            distance = F.smooth_l1_loss(normalised_distances(student), normalised_distances(teacher))
            angle = F.smooth_l1_loss(angles(student), angles(teacher))
            return distance, angle
