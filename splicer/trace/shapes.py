"""Shape inference on traced graphs, with fake tensors so that no real compute is spent."""

from __future__ import annotations

import contextlib
import io
import re
import sys

import torch
from torch import fx
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from splicer.errors import UnsupportedModelError


# What a model raises when an input does not fit it (torch ops' size checks, timm's shape asserts);
# anything else escaping a forward is a bug and keeps its traceback.
INPUT_MISMATCH = (RuntimeError, AssertionError, ValueError, IndexError)


def propagate_shapes(
    graph_module: fx.GraphModule, input_size: tuple[int, ...], batch: int = 2, name: str | None = None, hint: str = ""
) -> None:
    """Fill ``node.meta['tensor_meta']`` for every node, for a ``(batch, *input_size)`` input.

    Fake tensors (``FakeTensorMode``) cost milliseconds even for large models; a model whose
    ops have no fake implementation falls back to one real forward in eval mode. A model that
    cannot run on the input is one :class:`UnsupportedModelError`: ``name`` (the network), the size,
    the last line of torch's message and ``hint`` (what size would work); torch's own tracebacks,
    which ShapeProp prints as it fails, are kept back then.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    was_training = graph_module.training
    graph_module.eval()
    printed = io.StringIO()
    try:
        with contextlib.redirect_stderr(printed):
            try:
                with mode:
                    example = torch.empty(batch, *input_size)
                ShapeProp(graph_module, fake_mode=mode).propagate(example)
            except Exception:  # noqa: BLE001 - some ops lack fake kernels; real tensors always work
                with torch.no_grad():
                    ShapeProp(graph_module).propagate(torch.randn(batch, *input_size))
    except RuntimeError as exc:
        cause = exc.__cause__ if exc.__cause__ is not None else exc  # ShapeProp wraps the model's error
        if not isinstance(cause, INPUT_MISMATCH):
            sys.stderr.write(printed.getvalue())
            raise
        size = "x".join(str(d) for d in input_size)
        raise UnsupportedModelError(
            f"{name or type(graph_module).__name__} cannot run on an input of {size}: {last_line(cause).rstrip('.')}"
            + (f"; {hint}" if hint else "")
        ) from None
    else:
        sys.stderr.write(printed.getvalue())  # warnings stay visible
    finally:
        graph_module.train(was_training)


def last_line(exc: BaseException) -> str:
    """The line of an exception's message that says what went wrong, without fx's proxy names."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[-1] if lines else type(exc).__name__
    return re.sub(r"\s*\(Proxy\([^)]*\)\)|Proxy\([^)]*\)\s*", "", text)


def tensor_shape(node: fx.Node) -> tuple[int, ...] | None:
    """The per-sample shape (batch dimension dropped) of a node's tensor value, else None."""
    meta = node.meta.get("tensor_meta")
    if isinstance(meta, TensorMetadata):
        return tuple(int(d) for d in meta.shape[1:])
    return None
