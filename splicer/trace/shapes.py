"""Shape inference on traced graphs, with fake tensors so that no real compute is spent."""

from __future__ import annotations

import torch
from torch import fx
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from splicer.errors import UnsupportedModelError


def propagate_shapes(graph_module: fx.GraphModule, input_size: tuple[int, ...], batch: int = 2) -> None:
    """Fill ``node.meta['tensor_meta']`` for every node, for a ``(batch, *input_size)`` input.

    Fake tensors (``FakeTensorMode``) cost milliseconds even for large models; a model whose
    ops have no fake implementation falls back to one real forward in eval mode.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    was_training = graph_module.training
    graph_module.eval()
    try:
        try:
            with mode:
                example = torch.empty(batch, *input_size)
            ShapeProp(graph_module, fake_mode=mode).propagate(example)
        except Exception:  # noqa: BLE001 - some ops lack fake kernels; real tensors always work
            with torch.no_grad():
                ShapeProp(graph_module).propagate(torch.randn(batch, *input_size))
    except RuntimeError as exc:
        raise UnsupportedModelError(
            f"{type(graph_module).__name__} cannot run on an input of size {tuple(input_size)}: {exc}"
        ) from None
    finally:
        graph_module.train(was_training)


def tensor_shape(node: fx.Node) -> tuple[int, ...] | None:
    """The per-sample shape (batch dimension dropped) of a node's tensor value, else None."""
    meta = node.meta.get("tensor_meta")
    if isinstance(meta, TensorMetadata):
        return tuple(int(d) for d in meta.shape[1:])
    return None
