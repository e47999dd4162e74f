"""Anchor checkpoints: a standard teacher run that also keeps its weights at equal epoch
intervals, the route RCO's student follows (Jin et al., 2019, one-stage EEI).

Opt-in (``splicer train --standard --anchors N``, or ``splicer run`` when RCO is compared),
so that ordinary runs stay small. The run is trained in N segments that each end at an
anchor epoch and resume from the previous one; since a resumed run ends with exactly the
weights of an uninterrupted one (see :func:`splicer.training.engine.fit`), the teacher is
the same as without anchors, and ``anchors/epoch-NNNN.pt`` are its states on the way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from splicer.errors import SplicerError
from splicer.spec import Spec
from splicer.training.checkpoint import copy_atomic, load_checkpoint
from splicer.training.distributed import Distributed
from splicer.training.engine import Runtime
from splicer.training.runs import RunDir

ANCHOR_FOLDER = "anchors"


def equal_intervals(epochs: int, count: int) -> list[int]:
    """The epochs that end each of ``count`` equal intervals of ``epochs`` (the last is ``epochs``)."""
    if count < 1:
        raise SplicerError(f"--anchors {count}: need at least 1 anchor")
    return sorted({max(1, round(epochs * k / count)) for k in range(1, count + 1)})


def anchor_path(run: Path, epoch: int) -> Path:
    return Path(run) / ANCHOR_FOLDER / f"epoch-{epoch:04d}.pt"


def list_anchors(run: Path) -> list[tuple[int, Path]]:
    """(epoch, checkpoint) of every anchor a teacher run saved, in training order."""
    folder = Path(run) / ANCHOR_FOLDER
    found = sorted(folder.glob("epoch-*.pt")) if folder.is_dir() else []
    return [(int(path.stem.split("-")[1]), path) for path in found]


def train_anchored_teacher(
    spec: Spec, out: Path, count: int, resume: bool = False, quiet: bool = False
) -> dict[str, Any]:
    """Train the standard teacher of ``spec`` in ``out``, saving ``count`` anchors at equal epoch intervals."""
    from splicer.training.stage1 import train_teacher

    dist = Distributed.from_env()
    Runtime.for_spec(spec, dist)  # joins the process group: the ranks wait below for rank 0's copies
    run = RunDir(Path(out))
    done = load_checkpoint(run.last)["epoch"] if resume and run.last.is_file() else 0
    summary = None
    for end in equal_intervals(spec.train.epochs, count):
        target = anchor_path(run.path, end)
        if end < done and not target.is_file():
            raise SplicerError(
                f"{run.path}: trained past epoch {end} without saving its anchor; anchors can only be saved while "
                "the teacher trains. Train the standard teacher again in a new folder with --anchors"
            )
        if end > done:
            segment = spec.model_copy(update={"train": spec.train.model_copy(update={"epochs": end})})
            summary = train_teacher(segment, True, run.path, run.last.is_file(), quiet)
            done = end
        if dist.is_main and not target.is_file():
            target.parent.mkdir(exist_ok=True)
            copy_atomic(run.last, target)
    dist.barrier()  # every anchor is on disk before any rank's RCO student reads it
    return summary if summary is not None else json.loads(run.summary.read_text())
