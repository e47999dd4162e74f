"""Checkpoints that survive a crash mid-write and load with ``torch.load(weights_only=True)``.

A checkpoint holds only tensors, containers, numbers and strings: state_dicts, RNG states
(as tensors), counters and the spec as a plain dict. It is written to a temporary file,
flushed to disk and renamed over the old one, so ``last.pt`` is always a complete, good
checkpoint, never a half-written or diverged one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from splicer.errors import SplicerError
from splicer.files import unreadable_checkpoint

if TYPE_CHECKING:
    from torch import nn

    from splicer.assembly.tapped import TappedBlockNet
    from splicer.spec import Spec

FORMAT = 1
"""Version of the checkpoint layout, stored under "format"."""

TEACHER_KINDS = ("sftn", "standard")
STUDENT_KINDS = ("student", "distill")
PHASE_KIND = "phase"
"""A method's phase before the main distillation (``RUN/phases/<name>``); it holds no whole network."""


def save_atomic(payload: dict[str, Any], path: Path) -> None:
    """Write ``payload`` to ``path`` so that readers see the old file or the complete new one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        torch.save(payload, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def copy_atomic(source: Path, target: Path) -> None:
    """Copy a checkpoint (last.pt to best.pt) with the same all-or-nothing guarantee."""
    tmp = target.with_name(target.name + ".tmp")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint written by splicer, loaded on the CPU without unpickling arbitrary objects; refused
    when it holds something else or weights that are not finite (see :mod:`checkpoint_checks`)."""
    from splicer.training.checkpoint_checks import check_finite, check_is_run_checkpoint

    if not path.is_file():
        raise SplicerError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: torch raises many different types
        raise unreadable_checkpoint(path, exc, "a splicer checkpoint (.pt)") from None
    check_is_run_checkpoint(state, path)
    check_finite(state, path)
    return state


def resolve_checkpoint(run: str | Path, which: str = "last") -> Path:
    """A run folder (its ``<which>.pt``) or a checkpoint file, as users pass them on the command line."""
    path = Path(run)
    if path.is_dir():
        if not (path / f"{which}.pt").is_file():
            raise SplicerError(f"{run}: no {which}.pt in this folder; {_what_instead(path)}")
        return path / f"{which}.pt"
    if not path.is_file():
        raise SplicerError(f"{run}: no such run folder or checkpoint file")
    return path


def _what_instead(folder: Path) -> str:
    """What a folder without a checkpoint holds, and which of its runs to pass instead."""
    from splicer.training.runs import folder_contents

    found = folder_contents(folder)
    runs = sorted(p.parent for p in folder.glob("**/last.pt"))
    if found is not None and found[0] in ("experiment", "sweep") and runs:
        shown = ", ".join(str(run) for run in runs[:2])
        return f"it holds {found[1]}; pass one of its {len(runs)} runs, e.g. {shown}"
    return "is it a finished or started `splicer train` run?"


def rng_state(device: torch.device) -> dict[str, Any]:
    """The global RNG states a training step can draw from (dropout, stochastic layers), as tensors."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore what :func:`rng_state` saved (CUDA states only when running on CUDA again)."""
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda"):
        torch.cuda.set_rng_state_all(state["cuda"])


def teacher_state(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The state_dict of the teacher network (a BlockNet) in a stage-1 checkpoint.

    An SFTN checkpoint holds the whole SFTN: the teacher's entries sit under ``teacher.``
    and the student branches, which stage 2 drops, under ``branches.``. A standard
    checkpoint holds the teacher alone.
    """
    model = checkpoint["model"]
    if checkpoint["kind"] == "standard":
        return dict(model)
    prefix = "teacher."
    return {key[len(prefix) :]: value for key, value in model.items() if key.startswith(prefix)}


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state_dict's names, dtypes, shapes and values: it names the weights, not the file,
    so a copied or moved run is still recognised as the same teacher."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def network_from_checkpoint(checkpoint: dict[str, Any], path: Path, spec: Spec | None = None) -> TappedBlockNet:
    """The network a checkpoint trained, as a TappedBlockNet (logits, block features, pre-activations), on the CPU.

    Teacher checkpoints (SFTN or standard) give ``build(spec).teacher`` without branches;
    student checkpoints give ``build_student(spec)``. ``spec`` defaults to the one stored in
    the checkpoint. Building draws from a forked RNG so that loading a network never
    changes the random stream of the training that follows.
    """
    return original_from_checkpoint(checkpoint, path, spec)[0]


def original_from_checkpoint(
    checkpoint: dict[str, Any], path: Path, spec: Spec | None = None
) -> tuple[TappedBlockNet, nn.Module]:
    """The network a checkpoint trained (see :func:`network_from_checkpoint`) and the original model it was cut from.

    The blocks hold the original model's own modules and parameters (the compiler traces
    the model and cuts the trace without copying weights), so loading the checkpoint into
    the network loads it into the original model too: ``timm.create_model(...)``'s keys,
    ready for ``splicer export``.
    """
    from splicer.assembly.build import block_net, compile_spec, plan_network
    from splicer.spec import spec_from_dict
    from splicer.training.checkpoint_checks import check_fits

    if spec is None:
        spec = spec_from_dict(checkpoint["spec"], source=f"{path} (spec)")
    kind = checkpoint["kind"]
    if kind == PHASE_KIND:
        raise SplicerError(
            f"{path}: this is the {checkpoint['meta'].get('phase')!r} phase of a {checkpoint['meta'].get('method')} "
            f"distillation, which trains only the method's own modules; use the run folder that holds its phases/"
        )
    with torch.random.fork_rng(devices=[]):
        if kind in TEACHER_KINDS:
            result = compile_spec(spec, initial_weights=False)  # the checkpoint's weights replace them
            network, original, state = result.sftn.teacher, result.teacher.model, teacher_state(checkpoint)
        else:
            plan = plan_network(spec, spec.student, "student", spec.source)
            network, original, state = block_net(plan), plan.model, checkpoint["model"]
    check_fits(network, state, checkpoint, path, "teacher" if kind in TEACHER_KINDS else "student", spec)
    network.load_state_dict(state)
    return network, original
