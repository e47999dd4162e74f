"""KDCL-Naive (Guo et al., 2020, "Online knowledge distillation via collaborative
learning"): teacher and student learn together from scratch, each from the labels and from
the naive ensemble of both, the average of their logits.

    z_E = (z_T + z_S) / 2 (detached)
    L_k = CE(z_k, y) + tau^2 * KL(softmax(z_E / tau) || softmax(z_k / tau))   for k in {T, S}

tau is the spec's ``distill.kd_tau``. The ensemble is a target only, so no gradient flows
through it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from splicer.spec import Spec
from splicer.training.methods import kd_loss
from splicer.training.online.joint import train_jointly


def kdcl_terms(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, tau: float) -> dict[str, Tensor]:
    """The four KDCL-Naive terms of one batch and their sum."""
    ensemble = ((student_logits + teacher_logits) / 2).detach()
    terms = {
        "student_ce": F.cross_entropy(student_logits, labels),
        "student_kd": kd_loss(student_logits, ensemble, tau),
        "teacher_ce": F.cross_entropy(teacher_logits, labels),
        "teacher_kd": kd_loss(teacher_logits, ensemble, tau),
    }
    terms["total"] = torch.stack(list(terms.values())).sum()
    return terms


def train(spec: Spec, out: Path, resume: bool, quiet: bool, teacher: Path | None = None) -> dict[str, Any]:
    """KDCL-Naive of the spec's teacher and student; returns the student's run summary."""
    tau = spec.distill.kd_tau

    def terms(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor) -> dict[str, Tensor]:
        return kdcl_terms(student_logits, teacher_logits, labels, tau)

    return train_jointly(spec, "kdcl", terms, out, resume, quiet, kl_term="student_kd")
