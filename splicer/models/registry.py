"""Resolve a model reference (``cifar:vgg13``, ``timm:resnet18``, ``torchvision:resnet34``,
``python:package.module:factory``) to a freshly initialised ``nn.Module``.

Weights are never downloaded: a spec's ``checkpoint`` loads a local state_dict instead.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import keyword
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from splicer.errors import ModelSourceError, did_you_mean
from splicer.files import unreadable_checkpoint


def check_model_reference(reference: str) -> str | None:
    """Why ``reference`` names no known model, or None when it does. Cheap: builds nothing."""
    source, _, name = reference.partition(":")
    if source == "cifar":
        from splicer.models.cifar import CIFAR_MODELS

        if _cifar_key(name) is None:
            valid = sorted(CIFAR_MODELS)
            return f"unknown CIFAR model {name!r}{did_you_mean(name, valid)} Valid: {', '.join(valid)}"
    elif source == "timm":
        import timm

        if not timm.is_model(name):
            return f"unknown timm model {name!r}{did_you_mean(name, timm.list_models())} (see timm.list_models())"
    elif source == "torchvision":
        import torchvision.models

        valid = torchvision.models.list_models()
        if name not in valid:
            return f"unknown torchvision model {name!r}{did_you_mean(name, valid)} (see torchvision.models.list_models())"
    elif source == "python":
        module_name, _, factory = name.rpartition(":")
        if not module_name or not factory:
            return f"python model reference {reference!r} needs the form python:MODULE:FACTORY"
        try:
            module = import_user_module(module_name)
        except ImportError as exc:
            missing = getattr(exc, "name", None)
            if missing is not None and module_name.split(".")[0] == missing.split(".")[0]:
                return (
                    f"cannot import module {module_name!r} ({exc}): a python: model's module must be importable; "
                    f"run splicer from the folder that holds it, or put that folder on PYTHONPATH "
                    f"(e.g. PYTHONPATH=examples splicer inspect {reference})"
                )
            return f"cannot import module {module_name!r}: {type(exc).__name__}: {exc}"
        if not callable(getattr(module, factory, None)):
            public = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
            return f"module {module_name!r} has no callable {factory!r}{did_you_mean(factory, public)}"
    return None


def import_user_module(name: str) -> Any:
    """Import the module of a ``python:`` reference. Like ``python -m``, the current folder is searched
    too (after everything else, and only for this import), so ``splicer`` finds a module next to the user."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        cwd = os.getcwd()
        if exc.name != name.split(".")[0] or cwd in sys.path or "" in sys.path:
            raise
        sys.path.append(cwd)
        try:
            return importlib.import_module(name)
        finally:
            sys.path.remove(cwd)


def create_model(
    reference: str, num_classes: int, kwargs: dict[str, Any] | None = None, checkpoint: str | Path | None = None
) -> nn.Module:
    """Instantiate the model named by ``reference`` with ``num_classes`` outputs."""
    problem = check_model_reference(reference)
    if problem:
        raise ModelSourceError(problem)
    kwargs = dict(kwargs or {})
    source, _, name = reference.partition(":")
    try:
        if source == "cifar":
            from splicer.models.cifar import CIFAR_MODELS

            model = CIFAR_MODELS[_cifar_key(name)](num_classes=num_classes, **kwargs)
        elif source == "timm":
            import timm

            model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
        elif source == "torchvision":
            import torchvision.models

            model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
        else:
            module_name, _, factory = name.rpartition(":")
            model = getattr(import_user_module(module_name), factory)(num_classes=num_classes, **kwargs)
    except TypeError as exc:
        raise ModelSourceError(f"cannot create {reference} with kwargs {kwargs}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ModelSourceError(f"{reference} returned a {type(model).__name__}, not a torch.nn.Module")
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, reference)
    return model


def default_task(reference: str) -> tuple[tuple[int, int, int], int, str]:
    """The input size and class count a model reference is made for, and where they come from:
    timm's pretrained config for ``timm:``, ImageNet's for ``torchvision:``, CIFAR-100's otherwise."""
    source, _, name = reference.partition(":")
    if source == "timm":
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(name)
        if cfg is not None and cfg.input_size is not None:
            return tuple(cfg.input_size), int(cfg.num_classes or 1000), "timm's pretrained_cfg"  # type: ignore[return-value]
        return (3, 224, 224), 1000, "ImageNet's"
    if source == "torchvision":
        return (3, 224, 224), 1000, "ImageNet's"
    return (3, 32, 32), 100, "CIFAR-100's"


def native_input_size(model: nn.Module) -> tuple[int, int, int] | None:
    """The input size a timm model was made for (its ``pretrained_cfg``), else None."""
    cfg = getattr(model, "pretrained_cfg", None)
    size = cfg.get("input_size") if isinstance(cfg, dict) else None
    return tuple(int(d) for d in size) if size is not None and len(size) == 3 else None  # type: ignore[return-value]


def input_size_hint(model: nn.Module, input_size: tuple[int, ...], kwargs_field: str | None) -> str:
    """What would make ``model`` run: its own input size, and the keyword that gives it another one.

    ``kwargs_field`` is where the user writes keyword arguments (``teacher.kwargs``); None where there is none.
    """
    native = native_input_size(model)
    if native is None or tuple(native) == tuple(input_size):
        return ""
    text = f"the model is made for {'x'.join(map(str, native))} (timm's pretrained_cfg input_size)"
    init = inspect.signature(type(model).__init__).parameters
    if "img_size" in init and len(input_size) == 3 and kwargs_field is not None:
        side = input_size[1] if input_size[1] == input_size[2] else list(input_size[1:])
        text += f"; to build it for this input, set {kwargs_field}: {{img_size: {side}}}"
    return text


def constructor_source(reference: str, num_classes: int, kwargs: dict[str, Any] | None = None) -> tuple[str, str]:
    """The import line and the call expression that create the model as :func:`create_model` does.

    For emitted source that rebuilds a model without splicer; ``cifar:`` models are splicer's own
    and have none (the emitted source writes their layers out instead).
    """
    source, _, name = reference.partition(":")
    kwargs = dict(kwargs or {})
    if ast.literal_eval(repr(kwargs)) != kwargs:
        raise ModelSourceError(f"the kwargs of {reference} cannot be written as a Python literal: {kwargs!r}")
    if all(key.isidentifier() and not keyword.iskeyword(key) for key in kwargs):
        arguments = ", ".join(f"{key}={value!r}" for key, value in {"num_classes": num_classes, **kwargs}.items())
    else:
        arguments = f"num_classes={num_classes}, **{kwargs!r}"
    if source == "timm":
        return "import timm", f"timm.create_model({name!r}, pretrained=False, {arguments})"
    if source == "torchvision":
        return "import torchvision.models", f"torchvision.models.get_model({name!r}, weights=None, {arguments})"
    if source == "python":
        module_name, _, factory = name.rpartition(":")
        return f"import {module_name}", f"{module_name}.{factory}({arguments})"
    raise ModelSourceError(f"{reference} is splicer's own model; it has no constructor outside splicer")


def load_checkpoint(model: nn.Module, path: str | Path, reference: str) -> None:
    """Load a local state_dict (optionally nested under 'state_dict' or 'model') into ``model``."""
    path = Path(path)
    if not path.is_file():
        raise ModelSourceError(f"checkpoint {path} for {reference} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: torch raises many different types
        raise unreadable_checkpoint(path, exc, f"a state_dict file for {reference}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelSourceError(f"checkpoint {path} does not fit {reference}: {exc}") from None


def _cifar_key(name: str) -> str | None:
    from splicer.models.cifar import CIFAR_MODELS

    lowered = {key.lower(): key for key in CIFAR_MODELS}
    return lowered.get(name.lower())
