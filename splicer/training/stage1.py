"""Stage 1: train the teacher, either as an SFTN (with its student branches, paper
section 3.3) or, as the baseline, alone with cross-entropy (the standard teacher).

Both build the same SFTN from the same seed, so the standard teacher starts from exactly
the weights the SFTN's teacher starts from; only the loss differs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from splicer.assembly.build import compile_spec
from splicer.assembly.modules import SFTN, BlockNet
from splicer.data import build_data
from splicer.errors import SpecError
from splicer.spec import Spec
from splicer.spec.schema import FinetuneSpec, LossSpec, TrainSpec
from splicer.training.distributed import Distributed
from splicer.training.engine import LossFn, Runtime, Stage, fit, seed_everything
from splicer.training.losses import sftn_loss
from splicer.training.runs import open_run


def train_teacher(
    spec: Spec, standard: bool = False, out: Path | None = None, resume: bool = False, quiet: bool = False
) -> dict[str, Any]:
    """Train the SFTN (or with ``standard``, its teacher alone) of ``spec``; returns the run summary."""
    dist = Distributed.from_env()
    runtime = Runtime.for_spec(spec, dist)
    kind = "standard" if standard else "sftn"
    run = open_run(spec.name, kind, out, resume)
    seed_everything(spec.train.seed)
    result = compile_spec(spec, initial_weights=not resume)  # a resume loads last.pt instead
    if standard:
        stage = standard_stage(runtime.place(result.sftn.teacher), f"{spec.name} standard teacher")
    else:
        stage = sftn_stage(runtime.place(result.sftn), spec.loss, f"{spec.name} SFTN teacher")
    if spec.teacher_starts_trained:
        stage.notes += [n for n in result.notes if n.startswith(("teacher: starts", "teacher.head"))]
        if spec.finetune is not None:
            fine_tune(stage, result.sftn.teacher, spec.finetune, spec.train, result.teacher.block_labels, spec.source)
    data = build_data(
        spec.data, spec.input_size, spec.num_classes, spec.train.batch_size, runtime.device, spec.train.seed
    )
    return fit(stage, result.resolved_spec(), run, data, runtime, dist, resume, quiet)


def fine_tune(
    stage: Stage, teacher: BlockNet, finetune: FinetuneSpec, train: TrainSpec, block_labels: list[str], source: str
) -> None:
    """Give ``stage`` the fine-tuning recipe: ``finetune``'s schedule, and the teacher's blocks through
    ``freeze_through`` (default: all and the head) at lr x ``teacher_lr_mult``, frozen at 0."""
    stage.recipe = finetune.recipe(train)
    stage.lr_setting = "finetune.lr"
    through = _block_count(finetune.freeze_through, block_labels, source)
    parts: list[nn.Module] = list(teacher.blocks[:through])
    which = f"blocks 1-{through}"
    if finetune.freeze_through is None:
        parts.append(teacher.head)
        which += " and head"
    rest = "the branches" if finetune.freeze_through is None else "the blocks after them, the head and the branches"
    if finetune.teacher_lr_mult == 0:
        if stage.kind == "standard" and finetune.freeze_through is None:
            raise SpecError(
                f"{source}: finetune.teacher_lr_mult: 0 freezes the whole teacher, so a standard teacher has nothing "
                "to train; set freeze_through to the last block to freeze, or a multiplier above 0"
            )
        for part in parts:
            part.requires_grad_(False)
        stage.frozen += parts
        stage.notes.append(
            f"fine-tuning: the teacher's {which} are frozen (teacher_lr_mult 0: no gradient, BatchNorm in eval mode "
            f"with its running statistics kept); {rest} train"
        )
    else:
        stage.lr_mult += [(part, finetune.teacher_lr_mult) for part in parts]
        stage.notes.append(
            f"fine-tuning: lr {stage.recipe.lr:g}; the teacher's {which} at lr x {finetune.teacher_lr_mult:g}"
        )


def _block_count(through: int | str | None, labels: list[str], source: str) -> int:
    """How many leading teacher blocks ``finetune.freeze_through`` covers (all when unset)."""
    if through is None:
        return len(labels)
    if isinstance(through, int):
        if through > len(labels):
            raise SpecError(
                f"{source}: finetune.freeze_through: {through}, but the teacher has {len(labels)} blocks "
                f"({', '.join(labels)}); use 1 to {len(labels)} or a block end name"
            )
        return through
    if through not in labels:
        raise SpecError(
            f"{source}: finetune.freeze_through: {through!r} is no teacher block end; valid: {', '.join(labels)} "
            f"or 1 to {len(labels)}"
        )
    return labels.index(through) + 1


def sftn_stage(sftn: SFTN, loss_spec: LossSpec, title: str) -> Stage:
    """The SFTN learns with the paper's loss; its teacher alone is what gets evaluated."""

    def loss(images: Tensor, labels: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        out = sftn(images)
        parts = sftn_loss(out.teacher_logits.float(), [z.float() for z in out.branch_logits], labels, loss_spec)
        terms = {
            "total": parts.total,
            "teacher_ce": parts.teacher_ce,
            "branch_kl": parts.branch_kl,
            "branch_ce": parts.branch_ce,
        }
        return terms, out.teacher_logits

    return Stage(kind="sftn", title=title, model=sftn, evaluator=sftn.teacher, loss=loss, kl_term="branch_kl")


def standard_stage(teacher: BlockNet, title: str) -> Stage:
    """The teacher alone, with cross-entropy: the baseline every SFTN result is compared with."""
    return Stage(kind="standard", title=title, model=teacher, evaluator=teacher, loss=cross_entropy_loss(teacher))


def cross_entropy_loss(network: BlockNet) -> LossFn:
    """Plain supervised training of one network (the standard teacher, the student alone)."""

    def loss(images: Tensor, labels: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        logits = network(images)
        ce = F.cross_entropy(logits.float(), labels)
        return {"total": ce, "ce": ce}, logits

    return loss
