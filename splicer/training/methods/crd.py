"""CRD (Tian et al., ICLR 2020): contrastive representation distillation.

The pooled last-block features of student and teacher are embedded (linear + L2 norm) in a
shared space. Each side keeps a memory bank with one embedding per training image,
updated with momentum. For each image, its own entry in the *other* side's bank is the
positive and ``negatives`` entries of images of other classes are the negatives; an NCE
loss with the noise distribution uniform over the training set (Tian et al., eq. 18)
tells them apart. Both directions are summed: student anchor against the teacher bank,
teacher anchor against the student bank. The defaults, the loss with its normalisation
constant Z (fixed from the first batch), the memory update and the negative sampling
follow the authors' RepDistiller code (crd/criterion.py, crd/memory.py and
dataset/cifar100.py, ``--mode exact``).

Under torchrun every rank keeps the same banks: each step gathers the global batch's indices
and embeddings from all ranks, draws the negatives for the whole global batch (using its own
rows), fixes Z from the whole first batch and writes every rank's rows into its banks, so N
processes compute what one process does on the global batch.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from splicer.errors import SplicerError
from splicer.training.methods.base import FeatureForm, FeatureMethod, MethodOptions, Shape, kd_loss, register_method

if TYPE_CHECKING:
    from splicer.data import DataBundle

EPS = 1e-7
"""The authors' constant in the NCE denominators."""

WITHOUT_REPLACEMENT_LIMIT = 100_000
"""Largest training set whose negatives ``sampling: auto`` draws without replacement (the
authors' CIFAR code); larger sets draw with replacement (their ImageNet code), which costs
O(negatives) per image instead of O(training set)."""


class CRDOptions(MethodOptions):
    """``distill.options.crd``; the authors' train_student.py flag is in brackets."""

    embed_dim: int = Field(128, ge=1, description="Size of the shared embedding space [--feat_dim].")
    negatives: int = Field(
        16384, ge=1, description="Negatives per image; at most the images of other classes [--nce_k]."
    )
    temperature: float = Field(0.07, gt=0, description="Temperature of the contrast scores [--nce_t].")
    momentum: float = Field(0.5, ge=0, lt=1, description="Memory bank momentum [--nce_m].")
    sampling: Literal["auto", "without_replacement", "with_replacement"] = Field(
        "auto",
        description=f"How negatives are drawn from the other classes; auto: without replacement up to "
        f"{WITHOUT_REPLACEMENT_LIMIT} training images, with replacement above.",
    )


class Embed(nn.Module):
    """Linear map to the embedding space, then L2 normalisation (the authors' ``Embed``)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, feature: Tensor) -> Tensor:
        return F.normalize(self.linear(feature), dim=1)


def pooled(feature: Tensor) -> Tensor:
    """Global average pool of a block output (N, C, H, W) -> (N, C), as the networks' penultimate feature."""
    return feature.flatten(2).mean(2) if feature.dim() > 2 else feature


def nce_loss(probabilities: Tensor, noise: float) -> Tensor:
    """Tian et al., eq. 18: column 0 holds the positive's P, the others the negatives'.

    With m negatives drawn from the noise distribution P_n (= ``noise``), the posterior
    that a pair is real is P / (P + m P_n); the loss is -(sum of log posteriors of the
    positives + sum of log(1 - posterior) of the negatives) / batch size.
    """
    batch, negatives = probabilities.shape[0], probabilities.shape[1] - 1
    prior = negatives * noise
    positive, negative = probabilities[:, 0], probabilities[:, 1:]
    log_real = torch.log(positive / (positive + prior + EPS))
    log_noise = torch.log(prior / (negative + prior + EPS))
    return -(log_real.sum() + log_noise.sum()) / batch


@register_method("crd")
class CRD(FeatureMethod):
    """CRD on the pooled last block output, trained jointly with KD (the paper's CRD+KD row)."""

    default_feature_weight: ClassVar[float] = 0.8
    needs_indices: ClassVar[bool] = True
    reads: ClassVar[FeatureForm] = "vectors"
    size_rule: ClassVar[str] = "last block's global vectors, each embedded by its own linear layer (embed_dim)"
    rank_synced_buffers: ClassVar[tuple[str, ...]] = (
        "student_memory",
        "teacher_memory",
        "train_labels",
        "class_order",
        "class_start",
        "class_count",
    )
    """Kept equal on every rank by the gathered updates, so DDP need not broadcast them each step."""
    Options: ClassVar[type[MethodOptions]] = CRDOptions

    student_memory: Tensor
    teacher_memory: Tensor
    train_labels: Tensor
    class_order: Tensor
    class_start: Tensor
    class_count: Tensor

    def build(self, teacher_shapes: list[Shape], student_shapes: list[Shape]) -> None:
        dim = self.options.embed_dim
        self.embed_student = Embed(student_shapes[-1][0], dim)
        self.embed_teacher = Embed(teacher_shapes[-1][0], dim)
        # The negatives of step s come from a generator seeded by (sampling_seed, s); both live in
        # the checkpoint (extra state), so a resumed run draws the same negatives.
        self.sampling_seed = int(torch.randint(0, 2**62, (1,)).item())
        self.steps = 0
        self.normalizers: list[float] | None = None  # Z of (student anchor, teacher anchor), set by the first batch
        self.negatives = self.options.negatives
        self._generator: torch.Generator | None = None

    def bind_data(self, data: DataBundle) -> None:
        """Create the memory banks (one row per training image) and the per-class index for sampling."""
        device = self.embed_student.linear.weight.device
        labels = data.train_labels.to(device)
        count, dim = len(labels), self.options.embed_dim
        class_count = torch.bincount(labels)
        smallest_pool = count - int(class_count.max())
        if smallest_pool == 0:
            raise SplicerError(
                "distill method crd: every training image has the same label, so there are no negatives "
                "(images of other classes); CRD needs at least two classes in the training set"
            )
        if self.negatives > smallest_pool:
            warnings.warn(
                f"distill.options.crd.negatives: {self.negatives} is more than the {smallest_pool} training images "
                f"outside the largest class; using {smallest_pool} negatives per image",
                stacklevel=2,
            )
            self.negatives = smallest_pool
        bound = 1.0 / math.sqrt(dim / 3)  # the authors' initialisation: uniform in [-bound, bound]
        for side in ("student_memory", "teacher_memory"):
            self.register_buffer(side, torch.rand(count, dim, device=device).mul_(2 * bound).sub_(bound))
        self.register_buffer("train_labels", labels, persistent=False)
        self.register_buffer("class_order", torch.sort(labels, stable=True).indices, persistent=False)
        self.register_buffer("class_start", torch.cumsum(class_count, 0) - class_count, persistent=False)
        self.register_buffer("class_count", class_count, persistent=False)

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        student_features: list[Tensor],
        teacher_features: list[Tensor],
        targets: Tensor,
        indices: Tensor | None = None,
    ) -> dict[str, Tensor]:
        if indices is None:
            raise SplicerError("distill method crd needs the training images' indices; the training stream gave none")
        terms = {
            "ce": self.spec.ce_weight * F.cross_entropy(student_logits, targets),
            "kd": self.spec.kd_weight * kd_loss(student_logits, teacher_logits, self.spec.kd_tau),
            "feature": self.feature_weight * self.contrast_loss(student_features[-1], teacher_features[-1], indices),
        }
        terms["total"] = torch.stack(list(terms.values())).sum()
        return terms

    def contrast_loss(self, student_feature: Tensor, teacher_feature: Tensor, indices: Tensor) -> Tensor:
        """Both directions of the NCE loss for one batch; in training mode also updates the banks."""
        with torch.autocast(student_feature.device.type, enabled=False):
            student = self.embed_student(pooled(student_feature).float())
            teacher = self.embed_teacher(pooled(teacher_feature).float())
            global_indices = self.dist.gather_batch(indices)
            own_negatives = self.sample_negatives(global_indices)[self.dist.own_rows(len(indices))]
            contrast = torch.cat([indices[:, None], own_negatives], dim=1)
            temperature = self.options.temperature
            # Scores against the whole bank, then gathered: B x N instead of B x (K+1) x dim for the samples.
            student_anchor = torch.exp((student @ self.teacher_memory.T).gather(1, contrast) / temperature)
            teacher_anchor = torch.exp((teacher @ self.student_memory.T).gather(1, contrast) / temperature)
            count = len(self.student_memory)
            if self.normalizers is None:
                # The authors' Z: the first (global) batch's mean score times the training set size, then fixed.
                scores = student_anchor.detach()
                sums = torch.stack([scores.sum(), teacher_anchor.detach().sum(), scores.new_tensor(scores.numel())])
                sums = self.dist.sum(sums)
                self.normalizers = [(sums[0] / sums[2]).item() * count, (sums[1] / sums[2]).item() * count]
            noise = 1.0 / count
            loss = nce_loss(student_anchor / self.normalizers[0], noise) + nce_loss(
                teacher_anchor / self.normalizers[1], noise
            )
            if self.training:
                rows = self.dist.gather_batch(torch.cat([student.detach(), teacher.detach()], dim=1))
                self.update_memory(global_indices, *rows.split(student.shape[1], dim=1))
        return loss

    @torch.no_grad()
    def update_memory(self, indices: Tensor, student: Tensor, teacher: Tensor) -> None:
        """Each image's rows become normalise(momentum * old + (1 - momentum) * new embedding).

        Out of place: the backward pass still needs the banks this step's scores were computed from.
        """
        momentum = self.options.momentum
        for name, embedding in (("student_memory", student), ("teacher_memory", teacher)):
            bank = getattr(self, name)
            mixed = bank[indices] * momentum + embedding * (1 - momentum)
            setattr(self, name, bank.index_copy(0, indices, F.normalize(mixed, dim=1)))

    def sample_negatives(self, indices: Tensor) -> Tensor:
        """(B, negatives) indices of training images of other classes than each anchor's.

        Drawn from a generator seeded by (sampling_seed, step), so a resumed run repeats them.
        """
        generator = self._step_generator()
        anchor_labels = self.train_labels[indices]
        count, device = len(self.train_labels), self.train_labels.device
        if self._without_replacement(count):
            keys = torch.rand(len(indices), count, generator=generator, device=device)
            keys.masked_fill_(self.train_labels[None, :] == anchor_labels[:, None], 2.0)  # never among the smallest
            return keys.topk(self.negatives, dim=1, largest=False, sorted=False).indices
        # Uniform over the positions of the class-sorted index outside the anchor's class block.
        pool = (count - self.class_count[anchor_labels])[:, None]
        draw = torch.rand(len(indices), self.negatives, generator=generator, device=device)
        position = torch.minimum((draw * pool).long(), pool - 1)
        start = self.class_start[anchor_labels][:, None]
        position = position + (position >= start).long() * self.class_count[anchor_labels][:, None]
        return self.class_order[position]

    def _without_replacement(self, count: int) -> bool:
        if self.options.sampling == "auto":
            return count <= WITHOUT_REPLACEMENT_LIMIT
        return self.options.sampling == "without_replacement"

    def _step_generator(self) -> torch.Generator:
        device = self.train_labels.device
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device)
        mixed = (self.sampling_seed * 0x9E3779B97F4A7C15 + self.steps * 0xBF58476D1CE4E5B9 + 1) % (2**63)
        self._generator.manual_seed(mixed)
        if self.training:
            self.steps += 1
        return self._generator

    def get_extra_state(self) -> dict[str, Any]:
        return {"sampling_seed": self.sampling_seed, "steps": self.steps, "normalizers": self.normalizers}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.sampling_seed = state["sampling_seed"]
        self.steps = state["steps"]
        self.normalizers = state["normalizers"]
