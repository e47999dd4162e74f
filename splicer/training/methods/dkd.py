"""Decoupled KD (Zhao et al., CVPR 2022): KD split into a target-class term (TCKD) and a
non-target-class term (NCKD), weighted separately.

DKD has its own objective, not CE 0.1 + KD 0.9: ``ce_weight * CE + warm-up * (alpha * TCKD +
beta * NCKD)``, with the weights in ``distill.options.dkd`` (the spec's ce_weight, kd_weight and
kd_tau apply to the other methods). The authors' defaults (mdistiller's CFG.DKD) are below;
their per-pair CIFAR-100 configs change beta for some pairs (e.g. 6 for vgg13/vgg8).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from splicer.spec.schema import DistillSpec
from splicer.training.methods.base import DistillMethod, MethodOptions, register_method


class DKDOptions(MethodOptions):
    """mdistiller's CFG.DKD: CE_WEIGHT, ALPHA, BETA, T and WARMUP."""

    ce_weight: float = Field(1.0, ge=0, description="Weight of the student's cross-entropy (CE_WEIGHT).")
    alpha: float = Field(1.0, ge=0, description="Weight of TCKD, the target-class term (ALPHA).")
    beta: float = Field(8.0, ge=0, description="Weight of NCKD, the non-target-class term (BETA).")
    temperature: float = Field(4.0, gt=0, description="Softmax temperature of both terms (T).")
    warmup_epochs: int = Field(
        20, ge=1, description="The DKD term grows linearly to full weight over this many epochs (WARMUP)."
    )


def binary_log_probs(logits: Tensor, target_mask: Tensor, tau: float) -> Tensor:
    """(B, 2) log-probabilities of (the target class, all non-target classes together) at temperature tau.

    In log space (logsumexp over each part), so that a confident prediction gives a finite
    log-probability of the non-target part instead of log(0).
    """
    scaled = logits / tau
    total = scaled.logsumexp(dim=1)
    target = scaled.masked_fill(~target_mask, float("-inf")).logsumexp(dim=1)
    others = scaled.masked_fill(target_mask, float("-inf")).logsumexp(dim=1)
    return torch.stack([target - total, others - total], dim=1)


def binary_kl(student_logits: Tensor, teacher_logits: Tensor, target_mask: Tensor, tau: float) -> Tensor:
    """KL between the teacher's and the student's (target, all non-targets) binary distributions, batch mean."""
    return F.kl_div(
        binary_log_probs(student_logits, target_mask, tau),
        binary_log_probs(teacher_logits, target_mask, tau),
        log_target=True,
        reduction="batchmean",
    )


def non_target_kl(student_logits: Tensor, teacher_logits: Tensor, target_mask: Tensor, tau: float) -> Tensor:
    """KL between the teacher's and the student's softened distributions over the non-target classes."""
    rows, classes = student_logits.shape
    student = student_logits[~target_mask].view(rows, classes - 1) / tau
    teacher = teacher_logits[~target_mask].view(rows, classes - 1) / tau
    return F.kl_div(
        F.log_softmax(student, dim=1), F.log_softmax(teacher, dim=1), log_target=True, reduction="batchmean"
    )


def dkd_loss(
    student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, alpha: float, beta: float, tau: float
) -> Tensor:
    """alpha * T^2 * TCKD + beta * T^2 * NCKD, as mdistiller's dkd_loss."""
    target_mask = F.one_hot(targets, student_logits.shape[1]).bool()
    tckd = binary_kl(student_logits, teacher_logits, target_mask, tau)
    nckd = non_target_kl(student_logits, teacher_logits, target_mask, tau)
    return tau**2 * (alpha * tckd + beta * nckd)


@register_method("dkd")
class DKD(DistillMethod):
    """CE + DKD; the DKD term is scaled by min(epoch / warmup_epochs, 1), epochs counted from 1 as mdistiller."""

    Options = DKDOptions

    @classmethod
    def soft_label_temperature(cls, spec: DistillSpec, options: DKDOptions) -> float:
        return options.temperature

    def warmup(self) -> float:
        return min((self.epoch + 1) / self.options.warmup_epochs, 1.0)

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        student_features: list[Tensor],
        teacher_features: list[Tensor],
        targets: Tensor,
    ) -> dict[str, Tensor]:
        options = self.options
        terms = {
            "ce": options.ce_weight * F.cross_entropy(student_logits, targets),
            "kd": self.warmup()
            * dkd_loss(student_logits, teacher_logits, targets, options.alpha, options.beta, options.temperature),
        }
        terms["total"] = terms["ce"] + terms["kd"]
        return terms
