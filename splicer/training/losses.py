"""The stage-1 SFTN loss (paper section 3.3, equations 3-6) and the softened KL it is built on.

L_SFTN = teacher_ce * CE(z_T, y) + branch_kl * mean_i KL + branch_ce * mean_i CE(z_R^i, y)

The KL term is deliberately not detached on either side: pulling the teacher's softened
output towards what its student branches can express is what makes the teacher
student-friendly.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from splicer.spec.schema import LossSpec


class SFTNLoss(NamedTuple):
    """The weighted total to backpropagate, plus its unweighted parts for logging."""

    total: Tensor
    teacher_ce: Tensor
    branch_kl: Tensor
    branch_ce: Tensor


def softened_kl(target_logits: Tensor, input_logits: Tensor, tau: float) -> Tensor:
    """KL(softmax(target/tau) || softmax(input/tau)), summed over classes and averaged over the batch.

    No tau^2 factor: callers that want Hinton's gradient-scale correction multiply it in.
    """
    return F.kl_div(
        F.log_softmax(input_logits / tau, dim=1),
        F.log_softmax(target_logits / tau, dim=1),
        log_target=True,
        reduction="batchmean",
    )


def branch_kl(
    teacher_logits: Tensor,
    branch_logits: Tensor,
    tau: float,
    direction: Literal["teacher_branch", "branch_teacher"],
) -> Tensor:
    """One branch's KL term: KL(q_T || q_R) for "teacher_branch", KL(q_R || q_T) for "branch_teacher"."""
    if direction == "teacher_branch":
        return softened_kl(teacher_logits, branch_logits, tau)
    return softened_kl(branch_logits, teacher_logits, tau)


def sftn_loss(teacher_logits: Tensor, branch_logits: list[Tensor], targets: Tensor, spec: LossSpec) -> SFTNLoss:
    """The SFTN training loss of one batch.

    ``branch_logits`` holds the logits z_R^i of the N-1 student branches. The KL is taken at
    temperature ``spec.tau`` without a tau^2 factor, as the paper's equation 5 is written
    (the benchmark's DistillKL multiplies by tau^2; at the default tau=1 the two agree).
    """
    if not branch_logits:
        raise ValueError("sftn_loss needs the logits of at least one student branch")
    teacher_ce = F.cross_entropy(teacher_logits, targets)
    kl = torch.stack([branch_kl(teacher_logits, z, spec.tau, spec.kl_direction) for z in branch_logits]).mean()
    ce = torch.stack([F.cross_entropy(z, targets) for z in branch_logits]).mean()
    total = spec.teacher_ce * teacher_ce + spec.branch_kl * kl + spec.branch_ce * ce
    return SFTNLoss(total=total, teacher_ce=teacher_ce, branch_kl=kl, branch_ce=ce)
