"""OFA-KD (Hao et al., NeurIPS 2023, "One-for-All: Bridge the Gap Between Heterogeneous
Architectures in Knowledge Distillation"): distil in the logit space, where every architecture
meets, instead of between features of different kinds.

A projector maps each chosen student block end to class logits, and each projector's logits,
as well as the student's own, learn from the teacher's logits with the adaptive target
enhancement loss

    OFA(z_S, z_T) = - sum_c ((p_T,c + 1[c = y]) ^ eps - 1[c = y]) * log p_S,c,   p = softmax(z / T),

averaged over the batch: at ``eps`` 1 it is the cross-entropy with the teacher's soft targets;
above 1 it raises the target class's weight the more the teacher is sure of it. The objective is
``ce_weight * CE + kd_weight * OFA(student logits) + loss_weight * sum over stages OFA(projector)``.
Only the teacher's logits are used, so any teacher layout works.

Everything follows the authors' code (Hao840/OFAKD): ``distillers/ofa.py`` (loss, projectors,
objective), ``distillers/utils.py`` (``SepConv``, ``PatchMerging``, ``init_weights``) and the
defaults of ``train.py``. The projectors, per student layout:

- NCHW map at block ``i`` of ``N``: ``N - i`` of the authors' ``SepConv`` blocks (depthwise-separable,
  stride 2, channels doubling, the last to ``max(C_S, C_T)``), or a 1x1 convolution at the last
  block; then global pooling and a linear layer to the classes. ``C_S``, ``C_T``: channels of the
  student's and the teacher's last block end (the authors' final feature widths).
- Token sequence, or NHWC map read as its ``H*W`` tokens (the authors' Swin students are token
  models): patch merging (2x2 patches to one, layer norm, linear to ``C_S``) while the patch grid
  stays at least 14, down to the authors' 7x7; ``max(N - i, 1)`` of timm's transformer blocks
  (width ``C_S``, ``heads`` heads); the class token, or the mean token where there are no prefix
  tokens; a linear layer to the classes. Where no merging happens and the block end is narrower or
  wider than ``C_S`` (the authors' code assumes equal widths there), a linear layer maps the tokens
  to ``C_S`` first; with several prefix tokens the first (the class token) is read.

Defaults: ``stages`` every block (the authors' 1 2 3 4 of four stages), ``eps`` 1.0 (their
CIFAR-100 command; 1.5 in their ImageNet command), temperature 1, every weight 1. Their
recipes also smooth the labels by 0.1 (``smoothing``), a training setting splicer's CE does
not apply. The projectors are trained with the student and saved in its checkpoint; under
torchrun they are wrapped with it in DistributedDataParallel, and the BatchNorms of the map
projectors' SepConvs normalise with each process's share of the batch (as the authors' code without
``--sync-bn``; ``train.sync_bn`` synchronises them).
"""

from __future__ import annotations

import math
from typing import Annotated, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from splicer.errors import SplicerError
from splicer.trace.layouts import FeatureLayout
from splicer.training.methods.base import DistillMethod, FeatureForm, MethodOptions, Shape, register_method

FINAL_GRID = 7
"""The patch grid the authors' token projectors merge down to (49 patches)."""


class OFAOptions(MethodOptions):
    """``distill.options.ofa``; the authors' train.py flags are in brackets."""

    stages: list[Annotated[int, Field(ge=1)]] | None = Field(
        None, min_length=1, description="Student blocks (1-based) with a projector; default every block [--ofa-stage]."
    )
    eps: Annotated[float, Field(gt=0)] | list[Annotated[float, Field(gt=0)]] = Field(
        1.0,
        description="Target enhancement exponent: one value, or one per stage then one for the logits [--ofa-eps].",
    )
    temperature: float = Field(1.0, gt=0, description="Softmax temperature of every OFA term [--ofa-temperature].")
    loss_weight: float = Field(
        1.0, ge=0, description="Weight of the projectors' OFA terms, summed [--ofa-loss-weight]."
    )
    kd_weight: float = Field(
        1.0, ge=0, description="Weight of the OFA term on the student's logits [--kd-loss-weight]."
    )
    ce_weight: float = Field(1.0, ge=0, description="Weight of the student's cross-entropy [--gt-loss-weight].")
    heads: int = Field(4, ge=1, description="Attention heads of the token projectors' blocks [num_heads=4].")


def ofa_loss(
    student_logits: Tensor, teacher_logits: Tensor, target_mask: Tensor, eps: float, temperature: float
) -> Tensor:
    """The authors' ``ofa_loss``: teacher probabilities with the target raised to ``(p + 1)^eps - 1``
    and the others to ``p^eps``, as weights of the student's log-probabilities (log-softmax: no log 0)."""
    teacher = F.softmax(teacher_logits / temperature, dim=1)
    weights = (teacher + target_mask) ** eps - target_mask
    return -(weights * F.log_softmax(student_logits / temperature, dim=1)).sum(dim=1).mean()


class SepConv(nn.Module):
    """The authors' ``SepConv``: two depthwise-separable 3x3 convolutions (the first of stride 2), each + BN + ReLU."""

    def __init__(self, channels_in: int, channels_out: int) -> None:
        super().__init__()
        self.op = nn.Sequential(
            nn.Conv2d(channels_in, channels_in, 3, stride=2, padding=1, groups=channels_in, bias=False),
            nn.Conv2d(channels_in, channels_in, 1, bias=False),
            nn.BatchNorm2d(channels_in),
            nn.ReLU(),
            nn.Conv2d(channels_in, channels_in, 3, padding=1, groups=channels_in, bias=False),
            nn.Conv2d(channels_in, channels_out, 1, bias=False),
            nn.BatchNorm2d(channels_out),
            nn.ReLU(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


def map_projector(channels: int, later_blocks: int, width: int, num_classes: int) -> nn.Sequential:
    """NCHW map -> logits: ``later_blocks`` SepConvs (channels doubling, the last to ``width``) or a 1x1 conv,
    then pooling and a linear layer."""
    if later_blocks == 0:
        body: list[nn.Module] = [nn.Conv2d(channels, width, 1)]
    else:
        body = []
        for k in range(later_blocks):
            out = width if k == later_blocks - 1 else channels * 2
            body.append(SepConv(channels, out))
            channels *= 2
    return nn.Sequential(*body, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))


class PatchMerging(nn.Module):
    """The authors' (Swin's) patch merging: each 2x2 patch group concatenated, layer norm, linear, activation."""

    def __init__(self, grid: tuple[int, int], channels: int, out: int, activation: bool) -> None:
        super().__init__()
        self.grid = grid
        self.norm = nn.LayerNorm(4 * channels)
        self.reduction = nn.Linear(4 * channels, out, bias=False)
        self.act = nn.GELU() if activation else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        (h, w), (batch, _, channels) = self.grid, x.shape
        x = x.reshape(batch, h, w, channels)
        quads = [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]]
        x = torch.cat(quads, dim=-1).reshape(batch, -1, 4 * channels)
        return self.act(self.reduction(self.norm(x)))


def merge_count(grid: tuple[int, int]) -> int:
    """Merges the authors make (``int(log2(grid / 7))``), stopping early where a side would be odd."""
    wanted = max(int(math.log2(min(grid) / FINAL_GRID)), 0) if min(grid) >= FINAL_GRID else 0
    count, (h, w) = 0, grid
    while count < wanted and h % 2 == 0 and w % 2 == 0:
        count, h, w = count + 1, h // 2, w // 2
    return count


class TokenProjector(nn.Module):
    """Tokens (or an NHWC map read as tokens) -> logits: patch merging, transformer blocks, the class or mean
    token, a linear layer."""

    def __init__(self, layout: FeatureLayout, width: int, depth: int, heads: int, num_classes: int) -> None:
        from timm.models.vision_transformer import Block  # timm is slow to import: only when a projector is built

        super().__init__()
        self.channels_last = layout.kind == "nhwc"
        self.prefix = layout.prefix_tokens
        merges, grid, channels = merge_count(layout.grid), layout.grid, layout.channels
        aligned = channels != width and (self.prefix > 0 or merges == 0)  # the tokens that skip the mergers
        self.align = nn.Linear(channels, width) if aligned else nn.Identity()
        mergers: list[nn.Module] = []
        for k in range(merges):
            mergers.append(PatchMerging(grid, channels if k == 0 else width, width, activation=k < merges - 1))
            grid = (grid[0] // 2, grid[1] // 2)
        self.merge = nn.Sequential(*mergers) if mergers else None
        self.blocks = nn.Sequential(*[Block(dim=width, num_heads=heads) for _ in range(depth)])
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        if self.channels_last:
            x = x.flatten(1, 2)
        prefix, patches = x[:, : self.prefix], x[:, self.prefix :]
        patches = self.merge(patches) if self.merge is not None else self.align(patches)
        x = self.blocks(torch.cat([self.align(prefix), patches], dim=1))
        return self.fc(x[:, 0] if self.prefix else x.mean(dim=1))


def init_weights(module: nn.Module) -> None:
    """The authors' ``init_weights``: Kaiming (fan-out) convolutions, unit BatchNorms, truncated N(0, 0.02) linears."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def known_layouts(layouts: list[FeatureLayout | None] | None, shapes: list[Shape]) -> list[FeatureLayout]:
    """Each block end's layout; one that is not known (no layouts given, or None) is an NCHW map of its (C, H, W)."""
    given = layouts if layouts is not None else [None] * len(shapes)
    return [layout or FeatureLayout("nchw", shape[0], (shape[1], shape[2])) for layout, shape in zip(given, shapes)]


@register_method("ofa")
class OFA(DistillMethod):
    """CE + OFA on the student's logits + OFA on each chosen block end's projector; see the module docstring."""

    needs_features: ClassVar[bool] = True
    reads: ClassVar[FeatureForm] = "native"
    size_rule: ClassVar[str] = (
        "the teacher's logits only; each chosen student block end, in its own layout, through its own projector "
        "to class logits (conv stages for maps, patch merging and transformer blocks for tokens)"
    )
    Options = OFAOptions

    def build(self, teacher_shapes: list[Shape], student_shapes: list[Shape]) -> None:
        if self.num_classes is None:
            raise ValueError("OFA needs num_classes to build its projectors")
        student = known_layouts(self.student_layouts, student_shapes)
        teacher = known_layouts(self.teacher_layouts, teacher_shapes)
        blocks = len(student)
        self.stages = list(self.options.stages or range(1, blocks + 1))
        bad = [stage for stage in self.stages if stage > blocks]
        if bad or len(set(self.stages)) != len(self.stages):
            raise SplicerError(
                f"distill.options.ofa.stages: {self.stages} must name distinct student blocks 1..{blocks} "
                f"(the networks are cut into {blocks} blocks)"
            )
        eps = self.options.eps
        self.eps = list(eps) if isinstance(eps, list) else [eps] * (len(self.stages) + 1)
        if len(self.eps) != len(self.stages) + 1:
            raise SplicerError(
                f"distill.options.ofa.eps: {len(self.eps)} values for {len(self.stages)} stages; give one value, "
                f"or {len(self.stages) + 1}: one per stage, then one for the student's logits"
            )
        widths = (student[-1].channels, teacher[-1].channels)
        self.projectors = nn.ModuleList(self._projector(student[s - 1], s, blocks, *widths) for s in self.stages)
        self.projectors.apply(init_weights)

    def _projector(
        self, layout: FeatureLayout, stage: int, blocks: int, student_width: int, teacher_width: int
    ) -> nn.Module:
        """The authors' projector of student block ``stage`` (1-based) of ``blocks``, by its layout."""
        if layout.kind == "nchw":
            return map_projector(layout.channels, blocks - stage, max(student_width, teacher_width), self.num_classes)
        if student_width % self.options.heads:
            raise SplicerError(
                f"distill.options.ofa.heads: {self.options.heads} heads do not divide the width {student_width} of "
                f"the token projector at student block {stage} (the student's last block end); choose a divisor of it"
            )
        return TokenProjector(layout, student_width, max(blocks - stage, 1), self.options.heads, self.num_classes)

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        student_features: list[Tensor],
        teacher_features: list[Tensor],
        targets: Tensor,
    ) -> dict[str, Tensor]:
        options = self.options
        target_mask = F.one_hot(targets, student_logits.shape[1]).to(teacher_logits.dtype)
        stage_terms = [
            ofa_loss(projector(features).float(), teacher_logits, target_mask, eps, options.temperature)
            for projector, features, eps in zip(
                self.projectors, [student_features[stage - 1] for stage in self.stages], self.eps
            )
        ]
        terms = {  # "kd": the term the run's curves plot as its KL panel
            "ce": options.ce_weight * F.cross_entropy(student_logits, targets),
            "kd": options.kd_weight
            * ofa_loss(student_logits, teacher_logits, target_mask, self.eps[-1], options.temperature),
            "ofa": options.loss_weight * torch.stack(stage_terms).sum(),
        }
        terms["total"] = terms["ce"] + terms["kd"] + terms["ofa"]
        return terms
