"""What DML and KDCL share: a teacher and a student trained together from scratch.

The teacher is the spec's teacher network with exactly the initial weights of the standard
teacher (and of the SFTN's teacher), the student has exactly the initial weights of every
stage-2 student of the same seed, so the baselines differ from the other runs only in how
they learn. The student is the run's model (it is what gets evaluated and checkpointed as a
``distill`` run); the teacher trains alongside as an extra module and its final accuracy is
added to the summary.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor

from splicer.assembly.build import build_student, compile_spec
from splicer.assembly.modules import BlockNet
from splicer.data import DataBundle, build_data
from splicer.spec import Spec
from splicer.training.distributed import Distributed
from splicer.training.engine import Runtime, Stage, fit, seed_everything
from splicer.training.evaluate import accuracy
from splicer.training.runs import open_run

JointLoss = Callable[[Tensor, Tensor, Tensor], dict[str, Tensor]]
"""(student logits, teacher logits, labels) -> named terms including "total"."""


def train_jointly(
    spec: Spec, method: str, terms: JointLoss, out: Path, resume: bool, quiet: bool, kl_term: str
) -> dict[str, Any]:
    """Train teacher and student of ``spec`` together with ``terms``; returns the student's run summary."""
    dist = Distributed.from_env()
    runtime = Runtime.for_spec(spec, dist)
    run = open_run(spec.name, method, out, resume)
    seed_everything(spec.train.seed)
    teacher = compile_spec(spec).sftn.teacher  # the standard teacher's initial weights
    seed_everything(spec.train.seed)
    student = build_student(spec)  # every stage-2 student's initial weights
    runtime.place(teacher)
    runtime.place(student)

    def loss(images: Tensor, labels: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        s_logits, t_logits = student(images), teacher(images)
        return terms(s_logits.float(), t_logits.float(), labels), s_logits

    stage = Stage(
        kind="distill",
        title=f"{spec.name} {method} student (with its teacher, from scratch)",
        model=student,
        evaluator=student,
        loss=loss,
        kl_term=kl_term,
        extra={"teacher": teacher},
        meta={"method": method, "teacher": "trained jointly", "teacher_kind": "online"},
    )
    data = build_data(
        spec.data, spec.input_size, spec.num_classes, spec.train.batch_size, runtime.device, spec.train.seed
    )
    summary = fit(stage, spec, run, data, runtime, dist, resume, quiet)
    return _with_teacher_accuracy(summary, teacher, data, runtime, run.summary, dist)


def _with_teacher_accuracy(
    summary: dict[str, Any], teacher: BlockNet, data: DataBundle, runtime: Runtime, path: Path, dist: Distributed
) -> dict[str, Any]:
    """The jointly trained teacher's final accuracy, added to the student's summary (and summary.json)."""
    top1, top5 = accuracy(teacher, data.eval, runtime)
    summary["teacher_final"] = {"top1": top1, "top5": top5}
    if dist.is_main:
        path.write_text(json.dumps(summary, indent=2) + "\n")
    return summary
