"""Stage 1 from a teacher you have: the SFTN teacher's initial weights from a splicer run, a local
state_dict or the library's pretrained weights, with the head re-initialised on request.

Every source is brought to the original model's own keys (a splicer teacher checkpoint stores the
block-cut keys ``blocks.<i>.<module path>`` and ``head.<module path>``; the cut keeps module paths,
so dropping that prefix gives the original key) and loaded into the original model, whose
parameters the SFTN's teacher blocks share.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from splicer.errors import ModelSourceError, SpecError
from splicer.models.weights_fit import WeightsFit, shape_text

if TYPE_CHECKING:
    from splicer.assembly.build import NetworkPlan
    from splicer.assembly.modules import BlockNet
    from splicer.spec import Spec

PRETRAINED_SOURCES = ("timm", "torchvision")


def load_teacher_start(spec: Spec, plan: NetworkPlan, teacher: BlockNet) -> list[str]:
    """Load the teacher's initial weights (``teacher.checkpoint`` or ``teacher.pretrained``) into
    ``plan.model``; returns notes on what was done (the source, any re-initialised head tensors)."""
    network = spec.teacher
    where = f"{spec.source}: teacher"
    if network.pretrained:
        state, expect_all = pretrained_state(network.model, network.kwargs, where), True
        origin = f"the pretrained weights of {network.model}"
    else:
        assert network.checkpoint is not None
        state, origin, expect_all = _checkpoint_state(Path(network.checkpoint), where)
    head = set(teacher.head.state_dict())  # the head's module paths are the original model's
    expected = plan.model.state_dict()
    used = {_original_key(key) for key in teacher.state_dict()}
    wanted = set(expected) if expect_all else used  # a splicer checkpoint holds only what the cut network uses
    fit = WeightsFit.compare(state, expected, wanted)
    missing, unexpected, mismatched = sorted(fit.missing), sorted(fit.unexpected), sorted(fit.mismatched)
    class_count = all(_class_count_only(k, head, state, expected, spec.num_classes) for k in mismatched)
    if missing or unexpected or not class_count:
        problems = _describe(missing, unexpected, mismatched, state, expected)
        raise ModelSourceError(f"{where}: cannot start from {origin}, they do not fit {network.model}: {problems}")
    notes = [f"teacher: starts from {origin}"]
    if mismatched:
        classes = state[mismatched[0]].shape[0]
        if network.head != "reset":
            raise ModelSourceError(
                f"{where}: {origin}: their head has {classes} classes, the spec's num_classes is {spec.num_classes} "
                f"({_shapes(mismatched, state, expected)}); set `teacher.head: reset` (--set teacher.head=reset) "
                "to re-initialise the head and keep the other weights"
            )
        notes.append(
            f"teacher.head: reset: the weights have {classes} classes, the spec {spec.num_classes}; "
            "freshly initialised "
            f"{_shapes(mismatched, state, expected)}"
        )
        state = {k: v for k, v in state.items() if k not in mismatched}
    plan.model.load_state_dict(state, strict=False)  # every key was checked above; reset ones keep their fresh init
    return notes


def pretrained_state(reference: str, kwargs: dict[str, Any], where: str) -> dict[str, torch.Tensor]:
    """The library's pretrained weights of ``reference``, fetched by the library's own mechanism
    (timm: Hugging Face hub or torch hub; torchvision: its weights enum), at their own class count."""
    source, _, name = reference.partition(":")
    if source not in PRETRAINED_SOURCES:
        raise SpecError(
            f"{where}.pretrained: {reference} has no library weights (only timm: and torchvision: models have); "
            "pass a local state_dict instead: splicer train SPEC --from FILE"
        )
    try:
        with torch.random.fork_rng(devices=[]):  # building the pretrained model leaves the seeded stream alone
            if source == "timm":
                import timm

                with _hub_offline_unless_reachable():
                    return timm.create_model(name, pretrained=True, **kwargs).state_dict()
            import torchvision.models

            return dict(torchvision.models.get_model_weights(name).DEFAULT.get_state_dict(progress=False))
    except Exception as exc:  # noqa: BLE001  offline, no weights for this name, a hub error: one message for all
        reason = " ".join(str(exc).split())[:300]
        raise ModelSourceError(
            f"{where}.pretrained: could not get the pretrained weights of {reference} "
            f"({type(exc).__name__}: {reason}). "
            "Offline? On a machine with internet save them, e.g. "
            f"{_save_hint(source, name)}, copy the file here and pass it instead: "
            "splicer train SPEC --from FILE (which replaces teacher.pretrained: true)"
        ) from None


@contextmanager
def _hub_offline_unless_reachable() -> Iterator[None]:
    """The Hugging Face hub in its offline mode (its local cache only) when the hub cannot be reached:
    without it, each missing file is retried for a minute before the hub gives up."""
    import huggingface_hub.constants as hub

    if hub.HF_HUB_OFFLINE or _reachable("huggingface.co"):
        yield
        return
    hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = False


def _reachable(host: str, seconds: float = 5.0) -> bool:
    """Whether a TCP connection to ``host`` opens; assumed so behind a proxy (which the library uses)."""
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    try:
        socket.create_connection((host, 443), timeout=seconds).close()
    except OSError:
        return False
    return True


def _save_hint(source: str, name: str) -> str:
    if source == "timm":
        return f"torch.save(timm.create_model({name!r}, pretrained=True).state_dict(), {name + '.pt'!r})"
    return (
        f"torch.save(torchvision.models.get_model({name!r}, weights='DEFAULT').state_dict(), {name + '.pt'!r})"
    )


def _checkpoint_state(path: Path, where: str) -> tuple[dict[str, torch.Tensor], str, bool]:
    """Weights in the original model's keys from a run folder, a splicer checkpoint or a state_dict file;
    with whether the file must hold every key of the model (a plain state_dict) or only those used."""
    from splicer.files import unreadable_checkpoint
    from splicer.training.checkpoint import TEACHER_KINDS, resolve_checkpoint, teacher_state

    if path.is_dir():
        path = resolve_checkpoint(path)
    if not path.is_file():
        raise ModelSourceError(f"{where}.checkpoint: {path}: no such run folder or checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  a truncated or foreign file: torch raises many types
        refusal = unreadable_checkpoint(path, exc, "a run folder, a splicer checkpoint or a state_dict file")
        raise ModelSourceError(f"{where}.checkpoint: {refusal}") from None
    if isinstance(state, dict) and "kind" in state and "model" in state:
        if state["kind"] not in TEACHER_KINDS:
            raise ModelSourceError(
                f"{where}.checkpoint: {path} is a {state['kind']} run; start a teacher from a teacher run "
                "(standard or SFTN) or a state_dict file"
            )
        blocks = teacher_state(state)
        return {_original_key(k): v for k, v in blocks.items()}, f"the {state['kind']} teacher in {path}", False
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelSourceError(f"{where}.checkpoint: {path} holds no state_dict (a dict of tensors)")
    return state, f"the weights in {path}", True


def _original_key(key: str) -> str:
    """``blocks.<i>.<path>`` or ``head.<path>`` (a cut teacher's key) -> ``<path>`` (the original model's)."""
    parts = key.split(".")
    return ".".join(parts[2:] if parts[0] == "blocks" else parts[1:])


def _class_count_only(
    key: str, head: set[str], state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], classes: int
) -> bool:
    """Whether ``key`` is a head tensor that differs only in its class dimension (the first)."""
    have, want = state[key].shape, expected[key].shape
    return key in head and len(have) == len(want) >= 1 and want[0] == classes and have[1:] == want[1:]


def _shapes(keys: list[str], state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> str:
    return ", ".join(f"{k} {shape_text(state[k])} -> {shape_text(expected[k])}" for k in keys)


def _describe(
    missing: list[str],
    unexpected: list[str],
    mismatched: list[str],
    state: dict[str, torch.Tensor],
    expected: dict[str, torch.Tensor],
) -> str:
    def few(keys: list[str]) -> str:
        return ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")

    parts = []
    if missing:
        parts.append(f"missing {few(missing)}")
    if unexpected:
        parts.append(f"unexpected {few(unexpected)}")
    if mismatched:
        parts.append(f"other shapes: {_shapes(mismatched[:5], state, expected)}")
    return "; ".join(parts) + ". Is it a checkpoint of this model with these kwargs?"
