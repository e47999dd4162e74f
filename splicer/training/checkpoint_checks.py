"""Checks of a loaded checkpoint against what a command expects, each failing in a few lines.

A checkpoint is refused when it is not a splicer run's (a plain state_dict, another tool's
file), when its weights are not finite, or when it does not fit the network a spec builds;
the message names the file, what it holds, the settings that differ and the first tensors
that do not fit, never one line per tensor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from splicer.errors import SplicerError
from splicer.models.weights_fit import WeightsFit, shape_text

REQUIRED = ("kind", "model", "spec")
"""Entries every checkpoint splicer writes has (``splicer train``, ``distill``, ``run``)."""

SHOWN = 2
"""Tensors named as examples in a message."""


def check_is_run_checkpoint(state: Any, path: Path) -> None:
    """``state`` is a splicer training checkpoint; otherwise say what the file holds instead."""
    if isinstance(state, dict) and all(key in state for key in REQUIRED):
        return
    expected = "a checkpoint written by `splicer train`, `distill` or `run` (a run's last.pt or best.pt)"
    hint = ""
    if isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values()):
        hint = ". A bare state_dict is loaded through a spec's teacher.checkpoint: or student.checkpoint:"
    raise SplicerError(f"{path}: this file holds {_describe(state)}; expected {expected}{hint}")


def _describe(state: Any) -> str:
    if not isinstance(state, dict):
        return f"a {type(state).__name__}, not a dict of entries"
    if state and all(isinstance(value, torch.Tensor) for value in state.values()):
        first = next(iter(state))
        return f"a plain state_dict ({len(state)} tensors, e.g. {first!r}) without the run's spec"
    keys = list(state)
    missing = [key for key in REQUIRED if key not in state]
    shown = ", ".join(repr(k) for k in keys[:5]) + (", ..." if len(keys) > 5 else "")
    return f"a dict with entries {shown or '(none)'} and no {', '.join(repr(m) for m in missing)} entry"


def check_finite(state: dict[str, Any], path: Path) -> None:
    """Refuse weights with NaN or inf values: nothing trained from or scored with them means anything."""
    tensors = {name: t for name, t in state["model"].items() if isinstance(t, torch.Tensor) and t.is_floating_point()}
    bad = [name for name, tensor in tensors.items() if not torch.isfinite(tensor).all()]
    if bad:
        raise SplicerError(
            f"{path}: {len(bad)} of {len(tensors)} weight tensors of this {state['kind']} checkpoint hold NaN or inf "
            f"values (first: {', '.join(bad[:SHOWN])}); its weights are unusable. Use another checkpoint "
            "(e.g. the run's best.pt), or train the network again"
        )


def check_fits(network: torch.nn.Module, weights: dict[str, torch.Tensor], checkpoint: dict[str, Any], path: Path,
               role: str, spec: Any) -> None:
    """Refuse weights that do not fit ``network`` (the ``role`` network of ``spec``) with a short account:
    the settings that differ between the checkpoint's spec and this one, how many tensors do not fit and
    the first of them, shape against shape."""
    own = network.state_dict()
    fit = WeightsFit.compare(weights, own)
    if fit.fits:
        return
    wrong = [
        f"{name} is {shape_text(weights[name])} in the checkpoint, {shape_text(own[name])} here"
        for name in fit.mismatched
    ]
    problems = []
    if wrong:
        problems.append(f"{len(wrong)} of {len(own)} tensors differ in shape ({'; '.join(wrong[:SHOWN])})")
    if fit.missing:
        problems.append(f"{len(fit.missing)} tensors are missing from it (e.g. {', '.join(fit.missing[:SHOWN])})")
    if fit.unexpected:
        problems.append(
            f"{len(fit.unexpected)} tensors are not in this network (e.g. {', '.join(fit.unexpected[:SHOWN])})"
        )
    differ = settings_differ(checkpoint.get("spec", {}), spec, role)
    settings = f"Settings that differ: {differ}. " if differ else ""
    model = getattr(spec, role).model
    raise SplicerError(
        f"{path}: this {checkpoint['kind']} checkpoint does not fit the {role} {model} of spec {spec.name!r}: "
        f"{'; '.join(problems)}.\n{settings}Pass a checkpoint trained from this spec, or the spec it was trained with"
    )


def settings_differ(trained: dict[str, Any], spec: Any, role: str) -> str:
    """The settings of the ``role`` network that differ, checkpoint first: model, kwargs, classes, input size."""
    here = spec.model_dump(mode="json")
    pairs = [
        (f"{role}.model", trained.get(role, {}).get("model"), here[role]["model"]),
        ("num_classes", trained.get("num_classes"), here["num_classes"]),
        ("input_size", trained.get("input_size"), here["input_size"]),
    ]
    ours, theirs = here[role].get("kwargs") or {}, trained.get(role, {}).get("kwargs") or {}
    pairs += [(f"{role}.kwargs.{key}", theirs.get(key), ours.get(key)) for key in sorted({*ours, *theirs})]
    return "; ".join(
        f"{name} {_text(old)} in the checkpoint, {_text(new)} here" for name, old, new in pairs if old != new
    )


def _text(value: Any) -> str:
    return "(unset)" if value is None else "x".join(map(str, value)) if isinstance(value, list) else str(value)


def check_same_task(teacher: dict[str, Any], teacher_path: Path, run: dict[str, Any], run_path: Path) -> None:
    """A teacher compared with a run (KL, CKA) must share its classes and input size."""
    ours, theirs = run["spec"], teacher["spec"]
    differ = [
        f"{name} {_text(theirs.get(name))} (teacher) vs {_text(ours.get(name))} (run)"
        for name in ("num_classes", "input_size")
        if theirs.get(name) != ours.get(name)
    ]
    if differ:
        raise SplicerError(
            f"--teacher {teacher_path}: this teacher was trained for another task than {run_path}: {'; '.join(differ)}. "
            "KL and CKA compare networks of the same classes and input; pass the teacher the run learned from"
        )
