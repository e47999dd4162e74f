"""Route-constrained optimisation, one-stage EEI (Jin et al., 2019, "Knowledge distillation
via route constrained optimization").

Instead of the converged teacher alone, the student learns by KD from the teacher's own
training route: the standard teacher's anchor checkpoints, saved at equal epoch intervals
(:mod:`splicer.training.anchors`). With N anchors, the student's E epochs are cut into N
equal intervals and interval k learns from anchor k, so the targets get harder in the
order the teacher learnt them, ending with the final teacher. Each interval resumes the
previous one's run (optimizer, schedule and RNG state), so the student trains in one stage.
The loss is the spec's KD (``distill.ce_weight``, ``kd_weight``, ``kd_tau``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from splicer.assembly.build import build_student
from splicer.assembly.modules import BlockNet
from splicer.data import build_data
from splicer.errors import SplicerError
from splicer.spec import Spec
from splicer.training.anchors import equal_intervals, list_anchors
from splicer.training.checkpoint import load_checkpoint, network_from_checkpoint
from splicer.training.distributed import Distributed
from splicer.training.engine import Runtime, Stage, fit, seed_everything
from splicer.training.methods import create_method
from splicer.training.runs import RunDir
from splicer.training.stage2 import distill_loss


def load_anchor(path: Path, spec: Spec) -> BlockNet:
    """One anchor checkpoint as a frozen teacher network."""
    network = network_from_checkpoint(load_checkpoint(path), path, spec)
    network.requires_grad_(False)
    return network


def route(epochs: int, anchors: list[tuple[int, Path]]) -> list[dict[str, Any]]:
    """Which anchor teaches which student epochs: N equal intervals of ``epochs``, in anchor order."""
    ends = [round(epochs * k / len(anchors)) for k in range(1, len(anchors) + 1)]
    starts = [0, *ends[:-1]]
    return [
        {"first_epoch": start + 1, "last_epoch": end, "anchor_epoch": epoch, "anchor": str(path)}
        for start, end, (epoch, path) in zip(starts, ends, anchors, strict=True)
        if end > start
    ]


def train(spec: Spec, out: Path, resume: bool, quiet: bool, teacher: Path | None = None) -> dict[str, Any]:
    """Distil a student of ``spec`` along the anchors of the standard teacher run ``teacher``."""
    if teacher is None:
        raise SplicerError("rco needs the standard teacher run whose anchors it follows")
    anchors = list_anchors(teacher)
    if not anchors:
        raise SplicerError(
            f"{teacher}: no anchors/epoch-*.pt; RCO follows a standard teacher trained with anchors "
            "(`splicer train SPEC --standard --anchors 4`)"
        )
    run = RunDir(Path(out))
    if not resume and run.last.is_file():
        raise SplicerError(f"{run.path} already holds a run (last.pt); pass --resume to continue it")
    done = load_checkpoint(run.last)["epoch"] if resume and run.last.is_file() else 0
    steps = route(spec.train.epochs, anchors)
    summary = None
    for step in steps:
        if step["last_epoch"] <= done:
            continue
        segment = spec.model_copy(update={"train": spec.train.model_copy(update={"epochs": step["last_epoch"]})})
        summary = _follow(segment, Path(step["anchor"]), step["anchor_epoch"], run, quiet)
    summary = summary if summary is not None else json.loads(run.summary.read_text())
    summary["route"] = steps
    if Distributed.from_env().is_main:
        run.summary.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _follow(spec: Spec, anchor: Path, anchor_epoch: int, run: RunDir, quiet: bool) -> dict[str, Any]:
    """Train the student up to ``spec.train.epochs`` with KD from one anchor, resuming the run so far."""
    dist = Distributed.from_env()
    runtime = Runtime.for_spec(spec, dist)
    stage = anchor_stage(spec, anchor, anchor_epoch, runtime)
    data = build_data(
        spec.data, spec.input_size, spec.num_classes, spec.train.batch_size, runtime.device, spec.train.seed
    )
    return fit(stage, spec, run, data, runtime, dist, run.last.is_file(), quiet)


def anchor_stage(spec: Spec, anchor: Path, anchor_epoch: int, runtime: Runtime) -> Stage:
    """The student (initial weights of every stage-2 student of the seed) learning by KD from one anchor."""
    seed_everything(spec.train.seed)
    student = build_student(spec)
    teacher = runtime.place(load_anchor(anchor, spec))
    method = runtime.place(create_method("kd", spec.distill, [], []))
    return Stage(
        kind="distill",
        title=f"{spec.name} rco student from anchor epoch {anchor_epoch}",
        model=runtime.place(student),
        evaluator=student,
        loss=distill_loss(student, teacher, method),
        kl_term="kd",
        frozen=[teacher],
        meta={"method": "rco", "teacher": str(anchor.parent.parent), "teacher_kind": "standard", "anchor": str(anchor)},
    )
