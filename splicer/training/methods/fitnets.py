"""FitNets (Romero et al., 2015): a regressor maps the student's hint block onto the teacher's."""

from __future__ import annotations

from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from splicer.errors import SplicerError
from splicer.training.methods.base import RESIZE, FeatureMethod, Shape, register_method, resize_to


class HintRegressor(nn.Module):
    """FitNets' guided layer: resize the student feature to the teacher's H x W, then conv1x1 + BN to its channels.

    No trailing ReLU (the benchmark's ConvReg has one): block outputs of arbitrary models
    need not be non-negative.
    """

    def __init__(self, student_shape: Shape, teacher_shape: Shape) -> None:
        super().__init__()
        self.size = (teacher_shape[1], teacher_shape[2])
        self.conv = nn.Conv2d(student_shape[0], teacher_shape[0], kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(teacher_shape[0])

    def forward(self, feature: Tensor) -> Tensor:
        return self.bn(self.conv(resize_to(feature, self.size)))


@register_method("fitnets")
class FitNets(FeatureMethod):
    """Romero et al. (2015): MSE between regressor(student hint block) and the teacher's same block."""

    default_feature_weight: ClassVar[float] = 100.0
    size_rule: ClassVar[str] = (
        f"hint block only; regressor: {RESIZE}, then 1x1 conv + BN to the teacher's channels"
    )

    def build(self, teacher_shapes: list[Shape], student_shapes: list[Shape]) -> None:
        if self.spec.hint_block > len(teacher_shapes):
            raise SplicerError(
                f"hint_block {self.spec.hint_block} is out of range: the networks are cut into {len(teacher_shapes)} "
                f"blocks, so hint_block must be 1..{len(teacher_shapes)}"
            )
        self.index = self.spec.hint_block - 1
        self.regressor = HintRegressor(student_shapes[self.index], teacher_shapes[self.index])

    def feature_loss(self, student_features: list[Tensor], teacher_features: list[Tensor]) -> Tensor:
        return F.mse_loss(self.regressor(student_features[self.index]), teacher_features[self.index])


