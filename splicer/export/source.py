"""What ``splicer export`` reads from a run folder: the trained network as its original model,
and what that network expects of its input."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from splicer.assembly.tapped import TappedBlockNet
from splicer.errors import SplicerError, did_you_mean
from splicer.spec import Spec, spec_from_dict
from splicer.training.checkpoint import TEACHER_KINDS, load_checkpoint, original_from_checkpoint
from splicer.training.runs import RunDir

WHICH = ("best", "last")


@dataclass
class ExportSource:
    """One checkpoint of a run, rebuilt: splicer's network and the original model sharing its trained weights."""

    run: RunDir
    which: str
    checkpoint: dict[str, Any]
    role: str  # "teacher" (an SFTN's or a standard teacher, branches dropped) or "student"
    spec: Spec  # as trained: every field with the value it had (the checkpoint's copy)
    network: TappedBlockNet  # eval mode
    model: nn.Module  # the original model (timm, torchvision, cifar zoo or the user's factory), eval mode
    mean: list[float]
    std: list[float]
    classes: list[str] | None
    summary: dict[str, Any] | None  # summary.json of a finished run

    @property
    def network_spec(self) -> Any:
        """The spec section of the exported network (``teacher`` or ``student``)."""
        return getattr(self.spec, self.role)


def open_source(folder: RunDir, which: str) -> ExportSource:
    """Rebuild the network of the ``which`` checkpoint (best or last) of a run folder that :func:`check_run` passed."""
    path = getattr(folder, which)
    checkpoint = load_checkpoint(path)
    spec = spec_from_dict(checkpoint["spec"], source=f"{path} (spec)")
    network, model = original_from_checkpoint(checkpoint, path, _without_initial_weights(spec))
    network.eval()
    model.eval()
    role = "teacher" if checkpoint["kind"] in TEACHER_KINDS else "student"
    summary = json.loads(folder.summary.read_text()) if folder.summary.is_file() else None
    facts = summary.get("data") if summary else None
    if facts is None:  # an unfinished run, or one trained before summaries recorded the data
        facts = _data_facts_from_data_set(spec)
    return ExportSource(
        folder, which, checkpoint, role, spec, network, model, facts["mean"], facts["std"], facts["classes"], summary
    )


def check_run(run: str | Path, which: str) -> RunDir:
    """The run folder ``run``, which must hold a ``which`` checkpoint; what it is instead, and what to pass, if not."""
    if which not in WHICH:
        raise SplicerError(f"--which {which!r}: unknown checkpoint{did_you_mean(which, WHICH) or ';'} use one of {', '.join(WHICH)}")
    folder = RunDir(Path(run))
    path = folder.path
    if path.is_file():
        raise SplicerError(
            f"{run}: a checkpoint file, not a run folder; pass the run folder that holds it ({path.parent}), "
            "where the spec, the data's statistics and the accuracy are too"
        )
    if not path.is_dir():
        raise SplicerError(
            f"{run}: no such folder; RUN is a run folder of `splicer train` or `splicer distill` (it holds "
            "last.pt and best.pt), e.g. runs/<spec name>/distill-kd-sftn-<time>"
        )
    if getattr(folder, which).is_file():
        return folder
    if (path / "report.json").is_file() or any(path.glob("seed*/")):
        raise SplicerError(
            f"{run}: this is an experiment folder of `splicer run`; export one of its runs, e.g. {path}/seed0/sftn "
            f"or {path}/seed0/kd-from-sftn"
        )
    if which == "best" and folder.last.is_file():
        raise SplicerError(f"{run}: no best.pt yet (the run has not been evaluated); pass --which last")
    raise SplicerError(
        f"{run}: no {which}.pt in this folder; RUN is a run folder of `splicer train` or `splicer distill`"
    )


def _data_facts_from_data_set(spec: Spec) -> dict[str, Any]:
    """Mean, std and class names as training computed them, from the data set itself (slower than summary.json)."""
    from splicer.data import build_data
    from splicer.training.engine import data_facts

    return data_facts(
        build_data(spec.data, spec.input_size, spec.num_classes, 1, torch.device("cpu"), spec.train.seed)
    )



def _without_initial_weights(spec: Spec) -> Spec:
    """``spec`` without the networks' ``checkpoint:`` and ``pretrained:`` (weights to start training from):
    the trained weights replace them, so an export needs no such file (or network) where it runs."""
    update = {
        role: network.model_copy(update={"checkpoint": None, "pretrained": False})
        for role in ("teacher", "student", "branch_student")
        if (network := getattr(spec, role)) is not None
    }
    return spec.model_copy(update=update)
