"""Record how a model initialises its tensors, so that ``sftn.py`` can replay it without the model's code.

A network written layer by layer is rebuilt from torch.nn constructors, which do not initialise
as the model did (the CIFAR zoo draws He-normal convs, torchvision's ResNets zero some norms,
...), and a tensor the model created itself (a layer-scale ``gamma``) has no constructor at all.
So while splicer creates a fresh instance, every ``torch.nn.init`` call is recorded in order
(tensor path, shape, dtype, function, arguments); ``sftn.py`` replays them from the same random
state, which gives the weights ``splicer.build`` gives under the same ``torch.manual_seed``.
Tensors no call drew (BN running statistics) are set to their constant value after the draws.

A model that initialises any other way (timm's own ``trunc_normal_``, ``.data`` edits,
rescaling after init, a non-constant buffer) is not replayable: :func:`record_initialisation`
then says why, and the network is created in the file from its reference instead.
"""

from __future__ import annotations

import ast
import functools
import inspect
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

# (path or None for a tensor the model dropped, shape, dtype name, torch.nn.init function, keyword arguments)
InitOp = tuple[str | None, tuple[int, ...], str, str, dict[str, Any]]

_INIT_FUNCTIONS = (
    "constant_", "dirac_", "eye_", "kaiming_normal_", "kaiming_uniform_", "normal_", "ones_", "orthogonal_",
    "sparse_", "trunc_normal_", "uniform_", "xavier_normal_", "xavier_uniform_", "zeros_",
)


class NotReplayable(Exception):
    """The model initialises some tensor in a way a list of torch.nn.init calls cannot replay."""


def record_initialisation(create: Callable[[], nn.Module]) -> list[InitOp]:
    """The torch.nn.init calls that ``create`` makes, checked to replay its tensors exactly; raises :class:`NotReplayable`.

    Runs on a copy of the global random state, so the caller's draws are untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model, calls = _recorded(create)
        tensors, rng_after = _tensors(model), torch.get_rng_state()
        paths = {id(t): path for path, t in reversed(tensors.items())}
        ops: list[InitOp] = [
            (paths.get(id(t)), tuple(t.shape), str(t.dtype).removeprefix("torch."), name, kwargs)
            for t, name, kwargs in calls
        ]
        drawn = {op[0] for op in ops}
        constants = {path: _constant(value) for path, value in tensors.items() if path not in drawn}
        varied = [path for path, constant in constants.items() if constant is None]
        torch.manual_seed(0)
        replay_initialisation([], ops)
        if not torch.equal(torch.get_rng_state(), rng_after):  # e.g. a tensor drawn by torch.randn
            where = f"{varied[0]} is drawn at random" if varied else "it draws random numbers"
            raise NotReplayable(f"{where} without torch.nn.init")
        if varied:
            raise NotReplayable(f"{varied[0]} starts from values that are not one constant, set without torch.nn.init")
        ops += [
            (path, tuple(tensors[path].shape), str(tensors[path].dtype).removeprefix("torch."), "constant_", {"val": value})
            for path, value in constants.items()
        ]
        torch.manual_seed(0)
        replayed = replay_initialisation([], ops)
        for path, value in tensors.items():
            if not torch.equal(replayed[path], value):
                raise NotReplayable(f"{path} is changed after torch.nn.init drew it")
    return ops


def replay_initialisation(parts: Iterable[nn.Module], ops: list[InitOp]) -> dict[str, torch.Tensor]:
    """Run ``ops`` on the tensors of ``parts`` at their paths; returns every tensor it set, by path.

    A tensor no part holds (one of a block that this part of the SFTN does not run) is drawn all
    the same, into a scratch tensor, so that the draws after it are the model's.
    """
    tensors: dict[str, torch.Tensor] = {}
    for part in parts:
        tensors.update(part.named_parameters(remove_duplicate=False))
        tensors.update(part.named_buffers(remove_duplicate=False))
    touched: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for path, shape, dtype, name, kwargs in ops:
            tensor = tensors.get(path) if path is not None else None
            if tensor is None:
                tensor = torch.zeros(shape, dtype=getattr(torch, dtype))
                if path is not None:
                    tensors[path] = tensor
            getattr(nn.init, name)(tensor, **kwargs)
            if path is not None:
                touched[path] = tensor
    return touched


def ops_literal(ops: list[InitOp], name: str) -> str:
    """``ops`` as a module-level list in ``sftn.py``, one call a line."""
    lines = "".join(f"    {op!r},\n" for op in ops)
    return f"{name} = [  # (path, shape, dtype, torch.nn.init function, arguments), in the model's order\n{lines}]"


def _recorded(create: Callable[[], nn.Module]) -> tuple[nn.Module, list[tuple[torch.Tensor, str, dict[str, Any]]]]:
    """``create()``, and the outermost torch.nn.init calls it made: (tensor, function, keyword arguments)."""
    calls: list[tuple[torch.Tensor, str, dict[str, Any]]] = []
    depth = [0]
    originals = {name: getattr(nn.init, name) for name in _INIT_FUNCTIONS}

    def recording(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(original)

        @functools.wraps(original)
        def call(*args: Any, **kwargs: Any) -> Any:
            if depth[0] == 0:
                bound = signature.bind(*args, **kwargs)
                arguments = dict(bound.arguments)
                tensor = arguments.pop("tensor")
                if arguments.get("generator", None) is not None:
                    raise NotReplayable(f"nn.init.{name} draws from its own generator")
                arguments.pop("generator", None)
                if any(not _is_literal(value) for value in arguments.values()):
                    raise NotReplayable(f"nn.init.{name} gets arguments that are no literals: {arguments}")
                calls.append((tensor, name, arguments))  # the tensor is kept, so its id is never reused
            depth[0] += 1
            try:
                return original(*args, **kwargs)
            finally:
                depth[0] -= 1

        return call

    for name, original in originals.items():
        setattr(nn.init, name, recording(name, original))
    try:
        model = create()
    finally:
        for name, original in originals.items():
            setattr(nn.init, name, original)
    return model, calls


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = dict(model.named_parameters(remove_duplicate=False))
    tensors.update(model.named_buffers(remove_duplicate=False))
    return tensors


def _constant(value: torch.Tensor) -> float | int | bool | None:
    """The one value every element of ``value`` holds, None where they differ (or it is empty)."""
    if value.numel() == 0:
        return None
    constant = value.flatten()[0].item()
    return constant if torch.all(value == constant) and _is_literal(constant) else None


def _is_literal(value: object) -> bool:
    try:
        return ast.literal_eval(repr(value)) == value
    except (ValueError, SyntaxError):
        return False
