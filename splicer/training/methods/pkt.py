"""Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018): match the distributions of
cosine similarities within a batch."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from splicer.training.methods.base import (
    FeatureForm,
    FeatureMethod,
    batch_relation_inputs,
    pooled,
    register_method,
)

EPS = 1e-7
"""The authors' eps, in the norms and inside the log."""


def similarity_distribution(features: Tensor) -> Tensor:
    """Row-stochastic B x B matrix: cosine similarities mapped to [0, 1], each row divided by its sum."""
    unit = features / (features.norm(dim=1, keepdim=True) + EPS)
    similarity = (unit @ unit.t() + 1.0) / 2.0
    return similarity / similarity.sum(dim=1, keepdim=True)


@register_method("pkt")
class PKT(FeatureMethod):
    """KL between the teacher's and the student's similarity distributions of the pooled last features.

    As the authors' code (and the benchmark), the divergence is averaged over all B x B entries,
    not summed per row; the features are the globally average-pooled last block outputs (the
    benchmark's feat[-1]), so teacher and student dimensions need not match.
    """

    default_feature_weight: ClassVar[float] = 30000.0
    reads: ClassVar[FeatureForm] = "vectors"
    size_rule: ClassVar[str] = "last block's global vectors; no resizing: only the B x B similarities are compared"

    def feature_loss(self, student_features: list[Tensor], teacher_features: list[Tensor]) -> Tensor:
        last = [student_features[-1], teacher_features[-1]]
        full_precision, (student, teacher) = batch_relation_inputs(self.dist, last)
        with full_precision:
            student, teacher = similarity_distribution(pooled(student)), similarity_distribution(pooled(teacher))
            return torch.mean(teacher * torch.log((teacher + EPS) / (student + EPS)))
