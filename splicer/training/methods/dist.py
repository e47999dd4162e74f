"""DIST (Huang et al., NeurIPS 2022, "Knowledge Distillation from A Stronger Teacher"): match the
relations of the predictions, not their values, so that a much stronger teacher's sharper
distributions need not be copied exactly.

With ``p = softmax(z / tau)`` for student and teacher, the inter-class relation is one minus the
Pearson correlation of each image's student and teacher rows (averaged over the batch), the
intra-class relation the same over each class's column across the batch (averaged over the
classes); the objective is ``ce_weight * CE + tau^2 * (beta * inter + gamma * intra)``. The loss
follows the authors' ``lib/models/losses/dist_kd.py`` (hunto/image_classification_sota, the
classification code of hunto/DIST_KD), its 1e-8 in the cosine's denominator included. Their
training scripts weigh it by ``kd_loss_weight`` 2 next to ``ori_loss_weight`` 1 with
``DIST(beta=1, gamma=1)``: splicer's ``beta`` and ``gamma`` of 2 are that product (the paper's
beta = gamma = 2). ``tau`` is 4 in their CIFAR-100 config (``configs/strategies/distill/
dist_cifar.yaml``, ``kd: dist_t4``) and 1 on ImageNet (``resnet_dist.yaml`` and ``dist_b2.yaml``,
``kd: dist``): set ``distill.options.dist.tau=1`` for ImageNet.

The intra-class relation spans the batch: under torchrun both logit batches are gathered first
(:meth:`~splicer.training.distributed.Distributed.gather_batch`), so N processes compute the
one-process loss of the global batch.
"""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from splicer.spec.schema import DistillSpec
from splicer.training.methods.base import DistillMethod, MethodOptions, batch_relation_inputs, register_method

COSINE_EPS = 1e-8
"""The authors' constant in the cosine similarity's denominator."""


class DISTOptions(MethodOptions):
    """``distill.options.dist``; the authors' names are in brackets."""

    ce_weight: float = Field(1.0, ge=0, description="Weight of the student's cross-entropy [ori_loss_weight].")
    beta: float = Field(2.0, ge=0, description="Weight of the inter-class relation [kd_loss_weight 2 x beta 1].")
    gamma: float = Field(2.0, ge=0, description="Weight of the intra-class relation [kd_loss_weight 2 x gamma 1].")
    tau: float = Field(4.0, gt=0, description="Softmax temperature: 4 on CIFAR [dist_t4], 1 on ImageNet [dist].")


def pearson_rows(a: Tensor, b: Tensor) -> Tensor:
    """The Pearson correlation of each row of ``a`` with the same row of ``b`` (the authors' formula)."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + COSINE_EPS)


def dist_relations(student_logits: Tensor, teacher_logits: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    """(inter, intra): 1 - the mean Pearson correlation over images, and over classes, of softmax(z / tau)."""
    student = F.softmax(student_logits / tau, dim=1)
    teacher = F.softmax(teacher_logits / tau, dim=1)
    inter = 1 - pearson_rows(student, teacher).mean()
    intra = 1 - pearson_rows(student.t(), teacher.t()).mean()
    return inter, intra


@register_method("dist")
class DIST(DistillMethod):
    """CE + tau^2 * (beta * inter-class + gamma * intra-class relation loss); a logit method."""

    Options = DISTOptions

    @classmethod
    def soft_label_temperature(cls, spec: DistillSpec, options: DISTOptions) -> float:
        return options.tau

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        student_features: list[Tensor],
        teacher_features: list[Tensor],
        targets: Tensor,
    ) -> dict[str, Tensor]:
        options = self.options
        full_precision, (student, teacher) = batch_relation_inputs(self.dist, [student_logits, teacher_logits])
        with full_precision:
            inter, intra = dist_relations(student, teacher, options.tau)
        terms = {  # "kd": the term the run's curves plot as its KL panel, as DKD's
            "ce": options.ce_weight * F.cross_entropy(student_logits, targets),
            "kd": options.tau**2 * (options.beta * inter + options.gamma * intra),
        }
        terms["total"] = terms["ce"] + terms["kd"]
        return terms
