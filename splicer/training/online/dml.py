"""Deep mutual learning (Zhang et al., 2018): two networks learn together from scratch, each
from the labels and from the other's prediction.

    L_S = CE(z_S, y) + KL(p_T || p_S)        L_T = CE(z_T, y) + KL(p_S || p_T)

p = softmax(z) at temperature 1, as in the paper. The peer's prediction is a target: it is
detached, so each KL only moves the network it belongs to. One optimizer steps both on
L_S + L_T, which gives the same gradients as DML's per-network updates on the same batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from splicer.spec import Spec
from splicer.training.losses import softened_kl
from splicer.training.online.joint import train_jointly


def dml_terms(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor) -> dict[str, Tensor]:
    """The four DML terms of one batch and their sum."""
    terms = {
        "student_ce": F.cross_entropy(student_logits, labels),
        "student_kl": softened_kl(teacher_logits.detach(), student_logits, 1.0),
        "teacher_ce": F.cross_entropy(teacher_logits, labels),
        "teacher_kl": softened_kl(student_logits.detach(), teacher_logits, 1.0),
    }
    terms["total"] = torch.stack(list(terms.values())).sum()
    return terms


def train(spec: Spec, out: Path, resume: bool, quiet: bool, teacher: Path | None = None) -> dict[str, Any]:
    """DML of the spec's teacher and student; returns the student's run summary."""
    return train_jointly(spec, "dml", dml_terms, out, resume, quiet, kl_term="student_kl")
