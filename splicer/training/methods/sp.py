"""Similarity-preserving KD (Tung & Mori, ICCV 2019): inputs that the teacher finds alike
should look alike to the student."""

from __future__ import annotations

from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor

from splicer.training.methods.base import FeatureMethod, batch_relation_inputs, register_method


def similarity_matrix(feature: Tensor) -> Tensor:
    """The B x B Gram matrix of the flattened batch, each row L2-normalised (the paper's G~)."""
    flat = feature.flatten(1)
    return F.normalize(flat @ flat.t(), dim=1)


@register_method("sp")
class SP(FeatureMethod):
    """||G~_T - G~_S||_F^2 / B^2 on the last block's output, as the benchmark (feat[-2], before pooling).

    Channel counts and spatial sizes of teacher and student need not match: only the B x B
    similarities are compared.
    """

    default_feature_weight: ClassVar[float] = 3000.0
    size_rule: ClassVar[str] = "last block; no resizing: only the B x B similarities of the flattened maps are compared"

    def feature_loss(self, student_features: list[Tensor], teacher_features: list[Tensor]) -> Tensor:
        last = [student_features[-1], teacher_features[-1]]
        full_precision, (student, teacher) = batch_relation_inputs(self.dist, last)
        with full_precision:
            diff = similarity_matrix(teacher) - similarity_matrix(student)
            return diff.pow(2).sum() / len(student) ** 2
