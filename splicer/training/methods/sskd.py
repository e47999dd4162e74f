"""SSKD (Xu et al., ECCV 2020, "Knowledge distillation meets self-supervision").

Every batch is stacked with its copies rotated by 90, 180 and 270 degrees. A projection
head (Linear-ReLU-Linear on the pooled last block output) is first trained on the frozen
teacher in a phase of its own: each rotated copy must pick out its source image by cosine
similarity among the batch's unrotated images (cross-entropy). Then the student, with a
head of its own, learns from

    ce_weight * CE(originals) + kd_weight * KD(originals, T = kd_tau)
    + tf_weight * T_tf^2 * KL on the rotated copies (transformation KD)
    + ss_weight * T_ss^2 * KL between the teacher's and student's similarity rows (self-supervision KD)

where each of the last two KL terms keeps only the rotated copies the teacher gets right,
plus the ``ratio`` share of the wrong ones it ranks best (the authors' error-correcting
selection). Defaults are the authors' (xuguodong03/SSKD, student.py): ce 0.1, kd 0.9,
tf 2.7, ss 10.0, T 4, T_tf 4, T_ss 0.5, ratios 1.0 and 0.75; the head phase lasts 60 of
240 epochs at lr 0.05, divided by 10 at its half and three quarters.

The similarity rows and both selections span the whole batch, so under torchrun every rank
gathers the global batch's logits and head outputs (differentiably) and computes the loss
one process would: N processes train as one on the global batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from splicer.errors import SplicerError
from splicer.training.methods.base import (
    DistillMethod,
    FeatureForm,
    MethodOptions,
    Phase,
    Shape,
    block_features,
    kd_loss,
    phase_epochs,
    register_method,
)

if TYPE_CHECKING:
    from splicer.assembly.modules import BlockNet
    from splicer.training.engine import LossFn

ROTATIONS = 4
AUTHORS_HEAD_EPOCHS = 60
"""The authors' ``--t-epoch``, of their 240 student epochs."""
AUTHORS_MAIN_EPOCHS = 240


class SSKDOptions(MethodOptions):
    tf_weight: float = Field(2.7, ge=0, description="Weight of the KD term on the rotated copies.")
    ss_weight: float = Field(10.0, ge=0, description="Weight of the similarity (self-supervision) KD term.")
    tf_tau: float = Field(4.0, gt=0, description="Temperature of the KD term on the rotated copies.")
    ss_tau: float = Field(0.5, gt=0, description="Temperature of the similarity KD term.")
    tf_ratio: float = Field(1.0, ge=0, le=1, description="Share of the teacher's wrong rotated copies kept for tf.")
    ss_ratio: float = Field(0.75, ge=0, le=1, description="Share of the teacher's wrong similarity rows kept for ss.")
    head_epochs: int | None = Field(
        None, ge=1, description="Epochs of the teacher-head phase (default: 60/240 of train.epochs, at least 1)."
    )
    head_lr: float = Field(0.05, gt=0, description="SGD learning rate of the teacher-head phase.")


class ProjectionHead(nn.Module):
    """The authors' self-supervision head: Linear-ReLU-Linear of the feature width, on the global vector
    (the pooled map of a CNN, :func:`splicer.synthesis.layouts.as_vector` for every layout)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))

    def forward(self, feature: Tensor) -> Tensor:
        return self.mlp(feature)


def rotated(images: Tensor) -> Tensor:
    """The batch followed by its copies rotated by 90, 180 and 270 degrees: rows k*B..(k+1)*B-1 are rotation k."""
    height, width = images.shape[-2:]
    if height != width:
        raise SplicerError(
            f"sskd rotates every image by 90 degrees, so images must be square; input_size gives {height}x{width} "
            "(H x W). Resize to a square (data.resize) or choose another method"
        )
    return torch.cat([torch.rot90(images, k, dims=(2, 3)) for k in range(ROTATIONS)])


def similarity(representations: Tensor, batch: int) -> Tensor:
    """Cosine similarity of each rotated copy (rows) with each unrotated image (columns): (3B, B), in fp32
    even under bf16 autocast, since the similarity temperature (0.5) sharpens rounding errors."""
    with torch.autocast(representations.device.type, enabled=False):
        representations = F.normalize(representations.float(), dim=1)
        return representations[batch:] @ representations[:batch].T


def source_of_copies(batch: int, device: torch.device) -> Tensor:
    """For each rotated copy, the index of its unrotated image."""
    return torch.arange((ROTATIONS - 1) * batch, device=device) % batch


def kept_rows(teacher_scores: Tensor, targets: Tensor, ratio: float) -> Tensor:
    """The authors' error-correcting selection, as a row mask: every row whose target the teacher ranks
    first, plus the floor(ratio * wrong) wrong rows whose target it ranks highest (ties in row order).

    Computed on the device without reading the counts back, so training does not synchronise.
    """
    rank = (teacher_scores > teacher_scores.gather(1, targets[:, None])).sum(dim=1)
    wrong = (rank > 0).sum()
    keep = (len(rank) - wrong) + torch.floor(wrong * ratio)
    order = torch.sort(rank, stable=True).indices
    in_order = torch.arange(len(rank), device=rank.device) < keep
    return torch.zeros_like(in_order).scatter(0, order, in_order)


def selected_kl(teacher_logits: Tensor, student_logits: Tensor, tau: float, mask: Tensor) -> Tensor:
    """tau^2 * KL(softmax(t/tau) || softmax(s/tau)) summed over classes, averaged over the kept rows."""
    rows = F.kl_div(
        F.log_softmax(student_logits / tau, dim=1),
        F.log_softmax(teacher_logits / tau, dim=1),
        log_target=True,
        reduction="none",
    ).sum(dim=1)
    return tau**2 * (rows * mask).sum() / mask.sum().clamp(min=1)


@register_method("sskd")
class SSKD(DistillMethod):
    """SSKD's own objective (CE, KD, transformation KD, similarity KD) after the teacher-head phase."""

    Options = SSKDOptions
    needs_features: ClassVar[bool] = True  # its heads read the last block end's global vector
    reads: ClassVar[FeatureForm] = "vectors"
    size_rule: ClassVar[str] = "last block's global vectors, each through its own projection head"

    def build(self, teacher_shapes: list[Shape], student_shapes: list[Shape]) -> None:
        self.teacher_head = ProjectionHead(teacher_shapes[-1][0])
        self.teacher_head.requires_grad_(False)  # trained only in its phase
        self.student_head = ProjectionHead(student_shapes[-1][0])

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        student_features: list[Tensor],
        teacher_features: list[Tensor],
        targets: Tensor,
    ) -> dict[str, Tensor]:
        """The weighted terms from the outputs on a :func:`rotated` batch (4B rows) and the B labels,
        over the global batch under torchrun."""
        gather = self.dist.gather_batch
        return self.terms(
            gather(student_logits, ROTATIONS),
            gather(teacher_logits, ROTATIONS),
            gather(self.student_head(student_features[-1]), ROTATIONS),
            gather(self.teacher_head(teacher_features[-1]), ROTATIONS),
            gather(targets),
        )

    def terms(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        student_representations: Tensor,
        teacher_representations: Tensor,
        targets: Tensor,
    ) -> dict[str, Tensor]:
        """CE, KD, tf and ss, weighted, and their total; logits and head outputs are of a rotated batch."""
        options, batch = self.options, len(targets)
        copies_targets = targets.repeat(ROTATIONS - 1)
        tf_mask = kept_rows(teacher_logits[batch:], copies_targets, options.tf_ratio)
        student_similarity = similarity(student_representations, batch)
        teacher_similarity = similarity(teacher_representations, batch).detach()
        ss_mask = kept_rows(teacher_similarity, source_of_copies(batch, targets.device), options.ss_ratio)
        terms = {
            "ce": self.spec.ce_weight * F.cross_entropy(student_logits[:batch], targets),
            "kd": self.spec.kd_weight * kd_loss(student_logits[:batch], teacher_logits[:batch], self.spec.kd_tau),
            "tf": options.tf_weight
            * selected_kl(teacher_logits[batch:], student_logits[batch:], options.tf_tau, tf_mask),
            "ss": options.ss_weight * selected_kl(teacher_similarity, student_similarity, options.ss_tau, ss_mask),
        }
        terms["total"] = torch.stack(list(terms.values())).sum()
        return terms

    def objective(self, student: BlockNet, teacher: BlockNet) -> LossFn:
        def loss(images: Tensor, labels: Tensor) -> tuple[dict[str, Tensor], Tensor]:
            stacked = rotated(images)
            with torch.no_grad():
                teacher_features, teacher_logits = block_features(self, teacher, stacked)
            student_features, student_logits = block_features(self, student, stacked)
            terms = self(student_logits.float(), teacher_logits.float(), student_features, teacher_features, labels)
            return terms, student_logits[: len(labels)]

        return loss

    def phases(self, student: BlockNet, teacher: BlockNet, main_epochs: int) -> list[Phase]:
        def head_loss(images: Tensor, labels: Tensor) -> tuple[dict[str, Tensor], None]:
            with torch.no_grad():
                features, _ = block_features(self, teacher, rotated(images))
            representations = self.dist.gather_batch(self.teacher_head(features[-1]), ROTATIONS)
            batch = len(representations) // ROTATIONS
            scores = similarity(representations, batch)
            loss = F.cross_entropy(scores, source_of_copies(batch, images.device))
            return {"similarity_ce": loss, "total": loss}, None

        epochs = phase_epochs(self.options.head_epochs, AUTHORS_HEAD_EPOCHS, AUTHORS_MAIN_EPOCHS, main_epochs)
        milestones = sorted({m for m in (epochs // 2, 3 * epochs // 4) if m >= 1})
        return [
            Phase(
                name="teacher-head",
                epochs=epochs,
                trains={"teacher_head": self.teacher_head},
                loss=head_loss,
                lr=self.options.head_lr,
                lr_setting="distill.options.sskd.head_lr",
                milestones=milestones,
            )
        ]
