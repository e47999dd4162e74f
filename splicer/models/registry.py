"""Resolve a model reference (``cifar:vgg13``, ``timm:resnet18``, ``torchvision:resnet34``,
``python:package.module:factory``) to a freshly initialised ``nn.Module``.

Weights are never downloaded: a spec's ``checkpoint`` loads a local state_dict instead.
"""

from __future__ import annotations

import ast
import importlib
import keyword
from pathlib import Path
from typing import Any

import torch
from torch import nn

from splicer.errors import ModelSourceError, did_you_mean


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
            module = importlib.import_module(module_name)
        except ImportError as exc:
            return f"cannot import module {module_name!r}: {exc}"
        if not callable(getattr(module, factory, None)):
            public = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
            return f"module {module_name!r} has no callable {factory!r}{did_you_mean(factory, public)}"
    return None


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
            model = getattr(importlib.import_module(module_name), factory)(num_classes=num_classes, **kwargs)
    except TypeError as exc:
        raise ModelSourceError(f"cannot create {reference} with kwargs {kwargs}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ModelSourceError(f"{reference} returned a {type(model).__name__}, not a torch.nn.Module")
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, reference)
    return model


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
    state = torch.load(path, map_location="cpu", weights_only=True)
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
