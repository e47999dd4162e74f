"""Trace a model into a torch.fx graph, reusing torchvision's and timm's tracing helpers.

torchvision's ``NodePathTracer`` records each node's module path (``layer1.0.relu``), which
lets a user name a block end by module path. timm registers modules and functions that
must stay opaque (their ``forward`` has shape-dependent control flow); when timm is loaded
we pass its lists on, exactly as timm's own feature extractor does.
"""

from __future__ import annotations

import functools
import inspect
import sys
from dataclasses import dataclass, field

import torch
from torch import fx, nn
from torch.nn import functional as F
from torchvision.models.feature_extraction import NodePathTracer

from splicer.errors import UnsupportedModelError


@dataclass
class TracedModel:
    """A traced model: its GraphModule, the module path of every node, and modules the tracer added."""

    graph_module: fx.GraphModule
    qualnames: dict[str, str] = field(default_factory=dict)  # node name -> module path of the op
    added_modules: dict[str, nn.Module] = field(default_factory=dict)  # see _dropout_as_modules

    @property
    def nodes(self) -> list[fx.Node]:
        return list(self.graph_module.graph.nodes)


def _timm_leaves() -> tuple[list[type[nn.Module]], list]:
    """timm's not-traceable modules and functions; empty unless timm is already imported."""
    if "timm" not in sys.modules:
        return [], []
    from timm.layers import _fx as timm_fx

    return list(timm_fx.get_notrace_modules()), list(timm_fx.get_notrace_functions())


def _concrete_defaults(model: nn.Module) -> dict[str, object]:
    """Pin optional forward arguments (``attn_mask=None``) to their defaults.

    Left symbolic they become placeholders that stay live to the end of the graph and make
    every cut point look invalid.
    """
    params = list(inspect.signature(model.forward).parameters.values())[1:]
    return {
        p.name: p.default
        for p in params
        if p.default is not inspect.Parameter.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def _drop_pinned_inputs(graph: fx.Graph) -> None:
    """Remove the placeholders of pinned optional arguments and the asserts fx adds for them.

    fx keeps such an argument as a placeholder whose only users check that it still has its
    pinned value; the model's own computation never reads it.
    """
    order = {node: i for i, node in enumerate(graph.nodes)}
    for placeholder in [n for n in graph.nodes if n.op == "placeholder"][1:]:
        reached, frontier = set(), [placeholder]
        while frontier:
            node = frontier.pop()
            for user in node.users:
                if user not in reached:
                    reached.add(user)
                    frontier.append(user)
        if any(node.op == "output" for node in reached):
            continue
        for node in sorted(reached, key=order.__getitem__, reverse=True):
            graph.erase_node(node)
        graph.erase_node(placeholder)


_FUNCTIONAL_DROPOUT = {
    F.dropout: nn.Dropout,
    F.dropout1d: nn.Dropout1d,
    F.dropout2d: nn.Dropout2d,
    F.dropout3d: nn.Dropout3d,
    F.alpha_dropout: nn.AlphaDropout,
}


def _dropout_as_modules(graph_module: fx.GraphModule) -> dict[str, nn.Module]:
    """Turn ``F.dropout(x, p, training=self.training)`` into dropout modules.

    Tracing evaluates ``self.training`` once and bakes the result into the graph, so a model
    traced for training would drop activations in eval mode too. A module reads its own
    training flag at run time, as the original code did.
    """
    added: dict[str, nn.Module] = {}
    for node in list(graph_module.graph.nodes):
        module_type = _FUNCTIONAL_DROPOUT.get(node.target) if node.op == "call_function" else None
        if module_type is None:
            continue
        args = dict(zip(("input", "p", "training", "inplace"), node.args)) | dict(node.kwargs)
        name = f"splicer_dropout_{len(added)}"
        added[name] = module_type(p=args.get("p", 0.5), inplace=args.get("inplace", False))
        graph_module.add_submodule(name, added[name])
        with graph_module.graph.inserting_before(node):
            replacement = graph_module.graph.call_module(name, (args["input"],))
        replacement.meta = dict(node.meta)
        node.replace_all_uses_with(replacement)
        graph_module.graph.erase_node(node)
        replacement.name = node.name
    if added:
        graph_module.recompile()
    return added


@functools.cache
def _reads_training_flag(module_type: type[nn.Module]) -> bool:
    """Whether a module class's forward branches on ``self.training`` in Python."""
    if module_type.__module__.startswith("torch.nn."):
        return False
    try:
        source = inspect.getsource(module_type.forward)
    except (OSError, TypeError):
        return False
    return "self.training" in source


class ModeAwareTracer(NodePathTracer):
    """torchvision's tracer, also keeping opaque every submodule whose forward reads ``self.training``.

    Tracing evaluates ``self.training`` once, so stochastic depth or a hand-written norm
    traced through in training mode would stay in training mode for ever; kept as a module
    call, it reads its flag at run time, as the original code did.
    """

    def is_leaf_module(self, module: nn.Module, qualname: str) -> bool:
        if qualname and _reads_training_flag(type(module)):
            return True
        return super().is_leaf_module(module, qualname)


def trace_model(model: nn.Module, name: str = "model") -> TracedModel:
    """Symbolically trace ``model`` (x -> logits) keeping timm's leaf modules opaque."""
    leaf_modules, autowrap = _timm_leaves()
    tracer = ModeAwareTracer(leaf_modules=leaf_modules, autowrap_functions=tuple(autowrap))
    try:
        graph = tracer.trace(model, concrete_args=_concrete_defaults(model) or None)
    except (torch.fx.proxy.TraceError, TypeError, RuntimeError, AttributeError, NotImplementedError) as exc:
        raise UnsupportedModelError(
            f"{name}: torch.fx cannot trace {type(model).__name__}: {exc}. splicer needs a model that "
            "torch.fx can trace (no Python control flow on tensor values or shapes in forward); "
            "register offending modules with timm.layers.register_notrace_module to keep them opaque."
        ) from None
    _drop_pinned_inputs(graph)
    graph_module = fx.GraphModule(tracer.root, graph, type(model).__name__)
    added = _dropout_as_modules(graph_module)
    qualnames = {node.name: qualname for node, qualname in tracer.node_to_qualname.items()}
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        names = ", ".join(p.name for p in placeholders)
        raise UnsupportedModelError(
            f"{name}: forward takes inputs {names}; splicer needs models whose forward takes one image batch"
        )
    return TracedModel(graph_module, qualnames, added)
