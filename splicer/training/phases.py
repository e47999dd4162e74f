"""The phases a distillation method declares (FT's paraphraser, SSKD's teacher head), trained
in order before the main distillation, each with the engine's :func:`fit` in its own
sub-run ``RUN/phases/<name>``: its progress, metrics, checkpoints and summary.

Resume needs no bookkeeping of its own: a phase with a checkpoint is resumed by ``fit``,
which restores its modules and the RNG and trains only the epochs still missing (none for
a finished phase), so the next phase or the main run starts from exactly the state an
uninterrupted run would have had.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

from splicer.assembly.modules import BlockNet
from splicer.data import DataBundle
from splicer.errors import SplicerError
from splicer.spec import Spec
from splicer.training.checkpoint import PHASE_KIND
from splicer.training.distributed import Distributed
from splicer.training.engine import Runtime, Stage, fit
from splicer.training.methods import DistillMethod, Phase
from splicer.training.runs import RunDir

_NAME = re.compile(r"^[a-z0-9_-]+$")


def train_phases(
    method: DistillMethod,
    student: BlockNet,
    teacher: BlockNet,
    spec: Spec,
    run: RunDir,
    data: DataBundle,
    runtime: Runtime,
    dist: Distributed,
    resume: bool,
    quiet: bool,
    title: str,
    meta: dict[str, Any],
) -> None:
    """Train the method's phases, in order, each in ``run/phases/<name>``.

    With ``resume`` and a main checkpoint, the phases are done: that checkpoint holds
    everything they trained, so they are neither rerun nor reloaded.
    """
    if resume and run.last.is_file():
        return
    for phase in method.phases(student, teacher, spec.train.epochs):
        _check(phase, method)
        phase_run = run.phase(phase.name)
        stage = Stage(
            kind=PHASE_KIND,
            title=f"{title}, {phase.name} phase",
            model=nn.ModuleDict(phase.trains),
            evaluator=None,
            loss=phase.loss,
            meta={**meta, "phase": phase.name},
            lr_setting=phase.lr_setting,
        )
        resume_phase = resume and phase_run.last.is_file()
        with phase_training(phase, [student, teacher, method]):
            fit(stage, phase_spec(spec, phase), phase_run, data, runtime, dist, resume_phase, quiet)


def phase_spec(spec: Spec, phase: Phase) -> Spec:
    """``spec`` with the phase's schedule as its training recipe (stored in the phase's spec.yaml)."""
    schedule = {"epochs": phase.epochs, "lr": phase.lr, "milestones": list(phase.milestones)}
    recipe = spec.train.model_copy(update=schedule)
    return spec.model_copy(update={"train": recipe})


@contextmanager
def phase_training(phase: Phase, networks: list[nn.Module]) -> Iterator[None]:
    """Within: all of ``networks`` frozen and in eval mode except the modules the phase trains;
    afterwards each parameter's ``requires_grad`` is restored (modes are the next stage's to set)."""
    parameters = [p for network in networks for p in network.parameters()]
    flags = [p.requires_grad for p in parameters]
    for network in networks:
        network.eval()
        network.requires_grad_(False)
    for module in phase.trains.values():
        module.train()
        module.requires_grad_(True)
    try:
        yield
    finally:
        for parameter, flag in zip(parameters, flags, strict=True):
            parameter.requires_grad_(flag)


def _check(phase: Phase, method: DistillMethod) -> None:
    """A method's phase must name a folder and train something, for at least one epoch."""
    owner = type(method).__name__
    if not _NAME.match(phase.name):
        raise SplicerError(f"{owner}: phase name {phase.name!r} must be lower-case letters, digits, '-' or '_'")
    if phase.epochs < 1:
        raise SplicerError(f"{owner}: phase {phase.name!r} has {phase.epochs} epochs; it needs at least 1")
    if not any(p.numel() for module in phase.trains.values() for p in module.parameters()):
        raise SplicerError(f"{owner}: phase {phase.name!r} trains no parameters")
