"""Stage-2 distillation methods: how a fresh student learns from the frozen (SFTN) teacher.

Methods live in a registry so that new ones (SP, VID, RKD, PKT, AB, FT, CRD, SSKD, OH, ...)
are added by decorating a class with ``@register_method("name")``; the trainer only calls
:func:`create_method`. As in the paper (section 4.1), feature methods are trained jointly
with KD:

    total = ce_weight * CE(z_S, y) + kd_weight * KD + feature_weight * feature_loss

==============  ============================================  ======================  ==============
our name        what it weighs                                default                 benchmark name
==============  ============================================  ======================  ==============
ce_weight       cross-entropy of the student with the labels  0.1                     gamma (-r)
kd_weight       KD = T^2 * KL(q_T || q_S) at T = kd_tau       0.9 (kd_tau 4)          alpha (-a)
feature_weight  the method's feature loss (FitNets hint, AT)  FitNets 100, AT 1000    beta (-b)
==============  ============================================  ======================  ==============

The T^2 factor lives inside the KD term (:func:`kd_loss`), as the benchmark's DistillKL
computes it, so kd_weight multiplies T^2 * KL. The benchmark is the CIFAR-100 code of CRD
(Tian et al., 2020), which the paper follows; its scripts run feature methods without KD
(alpha 0), while the paper adds KD to them because that trains better students.

The caller computes the teacher's logits and features under ``torch.no_grad``; no method
needs gradients through the teacher.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from splicer.errors import SplicerError, did_you_mean
from splicer.spec.schema import DistillSpec
from splicer.training.losses import softened_kl

Shape = tuple[int, int, int]
"""(C, H, W) of one block output."""

METHODS: dict[str, type[DistillMethod]] = {}


def register_method(name: str) -> Callable[[type[DistillMethod]], type[DistillMethod]]:
    """Class decorator that makes a :class:`DistillMethod` available under ``name``."""

    def register(cls: type[DistillMethod]) -> type[DistillMethod]:
        if name in METHODS:
            raise ValueError(f"distillation method {name!r} is already registered")
        METHODS[name] = cls
        return cls

    return register


def create_method(
    name: str, spec: DistillSpec, teacher_shapes: list[Shape], student_shapes: list[Shape]
) -> DistillMethod:
    """Build the method ``name`` for a teacher and student cut into the same number of blocks."""
    if name not in METHODS:
        valid = sorted(METHODS)
        suggestion = did_you_mean(name, valid) or "."
        raise SplicerError(f"unknown distillation method {name!r}{suggestion} Valid methods: {', '.join(valid)}")
    if len(teacher_shapes) != len(student_shapes):
        raise SplicerError(
            f"teacher and student must be cut into the same number of blocks for distillation; "
            f"got {len(teacher_shapes)} teacher blocks and {len(student_shapes)} student blocks"
        )
    return METHODS[name](spec, list(teacher_shapes), list(student_shapes))


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, tau: float) -> Tensor:
    """Hinton's KD: T^2 * KL(q_T || q_S) at temperature T, so its gradients keep their scale as T grows."""
    return tau**2 * softened_kl(teacher_logits, student_logits, tau)


class DistillMethod(nn.Module):
    """CE + KD, plus whatever :meth:`feature_terms` adds. Subclasses may own trainable parameters.

    ``forward`` returns named, already weighted terms and their sum under ``"total"``.
    """

    needs_features: ClassVar[bool] = False

    def __init__(self, spec: DistillSpec, teacher_shapes: list[Shape], student_shapes: list[Shape]) -> None:
        """The shapes are (C, H, W) of each block output; methods with parameters size them from these."""
        super().__init__()
        self.spec = spec

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        student_features: list[Tensor],
        teacher_features: list[Tensor],
        targets: Tensor,
    ) -> dict[str, Tensor]:
        terms = {
            "ce": self.spec.ce_weight * F.cross_entropy(student_logits, targets),
            "kd": self.spec.kd_weight * kd_loss(student_logits, teacher_logits, self.spec.kd_tau),
        }
        terms.update(self.feature_terms(student_features, teacher_features))
        terms["total"] = torch.stack(list(terms.values())).sum()
        return terms

    def feature_terms(self, student_features: list[Tensor], teacher_features: list[Tensor]) -> dict[str, Tensor]:
        """Weighted terms beyond CE and KD; none for a pure-logit method."""
        return {}


class FeatureMethod(DistillMethod):
    """A method that adds ``feature_weight * feature_loss`` on block outputs."""

    needs_features: ClassVar[bool] = True
    default_feature_weight: ClassVar[float]

    @property
    def feature_weight(self) -> float:
        """The spec's feature_weight, or this method's benchmark default when the spec leaves it unset."""
        if self.spec.feature_weight is None:
            return self.default_feature_weight
        return self.spec.feature_weight

    def feature_terms(self, student_features: list[Tensor], teacher_features: list[Tensor]) -> dict[str, Tensor]:
        return {"feature": self.feature_weight * self.feature_loss(student_features, teacher_features)}

    def feature_loss(self, student_features: list[Tensor], teacher_features: list[Tensor]) -> Tensor:
        """The unweighted feature loss."""
        raise NotImplementedError


@register_method("kd")
class KD(DistillMethod):
    """Hinton et al. (2015): CE + KD on the logits only."""


def resize_to(feature: Tensor, size: tuple[int, int]) -> Tensor:
    """Average-pool ``feature`` down to ``size`` (H, W), or bilinearly upsample it when it is smaller."""
    height, width = feature.shape[-2:]
    if (height, width) == size:
        return feature
    if height >= size[0] and width >= size[1]:
        return F.adaptive_avg_pool2d(feature, size)
    return F.interpolate(feature, size=size, mode="bilinear", align_corners=False)


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

    def __init__(self, spec: DistillSpec, teacher_shapes: list[Shape], student_shapes: list[Shape]) -> None:
        super().__init__(spec, teacher_shapes, student_shapes)
        if spec.hint_block > len(teacher_shapes):
            raise SplicerError(
                f"hint_block {spec.hint_block} is out of range: the networks are cut into {len(teacher_shapes)} "
                f"blocks, so hint_block must be 1..{len(teacher_shapes)}"
            )
        self.index = spec.hint_block - 1
        self.regressor = HintRegressor(student_shapes[self.index], teacher_shapes[self.index])

    def feature_loss(self, student_features: list[Tensor], teacher_features: list[Tensor]) -> Tensor:
        return F.mse_loss(self.regressor(student_features[self.index]), teacher_features[self.index])


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

    def feature_loss(self, student_features: list[Tensor], teacher_features: list[Tensor]) -> Tensor:
        losses = []
        for student, teacher in zip(student_features, teacher_features, strict=True):
            size = (min(student.shape[-2], teacher.shape[-2]), min(student.shape[-1], teacher.shape[-1]))
            diff = attention_map(resize_to(student, size)) - attention_map(resize_to(teacher, size))
            losses.append(diff.pow(2).mean())
        return torch.stack(losses).sum()
