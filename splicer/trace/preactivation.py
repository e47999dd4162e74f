"""Pre-activation taps: each block end's value before its final ReLU, found in the cut graph.

Methods such as OH (Heo et al., 2019) and AB (Heo et al., 2019) distil the value a block
end had before its final ReLU. A block end that is a ReLU node (an ``nn.ReLU`` module,
``F.relu``/``torch.relu`` or ``x.relu()``, in place or not) has that value as its input;
:func:`find_preactivation` records it, and :func:`tapped_forward` turns the block's graph
into code that returns it alongside the block's output. The ReLU becomes out-of-place in
that code, so an in-place ReLU cannot overwrite the value it reads.

For OH's margin, :func:`find_preactivation` also names the BatchNorm whose output the ReLU
reads: directly, through identity-like modules, or through a residual sum, where the BN of
the operand with the most weight layers behind it is taken (the residual branch, not a
projection shortcut: the authors take ``bn2`` of a ResNet block).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from splicer.errors import UnsupportedPairError
from splicer.trace.cuts import CutPoint
from splicer.trace.tracer import TracedModel

_RELU_FUNCTIONS = (torch.relu, torch.relu_, F.relu, F.relu_)
_RELU_METHODS = ("relu", "relu_")
_SUMS = (operator.add, operator.iadd, torch.add)
_WEIGHT_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.ConvTranspose2d)
_IDENTITY_LIKE = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)
"""Modules that pass values through unchanged when the network is in eval mode (a frozen teacher)."""

TappedForward = Callable[[nn.Module, Tensor], tuple[Tensor, Tensor]]
"""(block, input) -> (the block's output, the value its final ReLU read)."""


@dataclass(frozen=True)
class PreActivationTap:
    """Where one block end's pre-activation is, or why there is none.

    ``activation`` and ``pre_activation`` are node names in the block's graph; both are
    None when the block does not end in a ReLU. ``norm`` is the module path of the
    BatchNorm feeding that ReLU (None if none was found). ``suggestions`` are cut points
    after a ReLU-less block end, at the same shape, that do end in a ReLU.
    """

    block_end: str
    ends_with: str
    activation: str | None = None
    pre_activation: str | None = None
    norm: str | None = None
    suggestions: tuple[str, ...] = ()

    @property
    def found(self) -> bool:
        return self.activation is not None

    def error(self, role: str, method: str | None = None) -> UnsupportedPairError:
        """The user-facing reason why ``method`` (a distillation method's name) cannot use this block end."""
        hint = (
            f"; cut points at the same shape that do end in a ReLU: {', '.join(self.suggestions)} "
            f"(list one in {role}.blocks instead of {self.block_end!r})"
            if self.suggestions
            else ""
        )
        return UnsupportedPairError(
            f"{f'distill method {method!r}' if method else 'pre-activation features'} need"
            f"{'s' if method else ''} the pre-activation (the value before the final ReLU) of every block "
            f"end, but {role} block end {self.block_end!r} ends with {self.ends_with}, not a ReLU. Methods that "
            f"distil pre-activation features (OH, AB) cannot be used with this block end{hint}"
        )


def is_relu(root: nn.Module, node: fx.Node) -> bool:
    """Whether ``node`` applies a plain ReLU (module, function or method, in place or not)."""
    if node.op == "call_module":
        return type(root.get_submodule(str(node.target))) is nn.ReLU
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS
    if node.op == "call_method":
        return node.target in _RELU_METHODS
    return False


def describe(root: nn.Module, node: fx.Node) -> str:
    """What a node computes, as an error message names it: ``add (add_3)``, ``BatchNorm2d (norm.bn)``."""
    if node.op == "call_module":
        return f"{type(root.get_submodule(str(node.target))).__name__} ({node.target})"
    if node.op == "call_function":
        return f"{getattr(node.target, '__name__', node.target)} ({node.name})"
    if node.op == "call_method":
        return f".{node.target}() ({node.name})"
    if node.op == "placeholder":
        return "its input, unchanged"
    return f"{node.op} {node.target} ({node.name})"


def find_preactivation(block: fx.GraphModule, block_end: str) -> PreActivationTap:
    """The tap of a cut block (a GraphModule whose output is its block end's value)."""
    output = next(n for n in block.graph.nodes if n.op == "output")
    end = output.args[0]
    if not isinstance(end, fx.Node):
        return PreActivationTap(block_end, f"a non-tensor output {end!r}")
    if not is_relu(block, end):
        return PreActivationTap(block_end, describe(block, end))
    pre = end.args[0] if end.args else end.kwargs["input"]
    norm = _norm_before(block, pre)
    return PreActivationTap(block_end, describe(block, end), end.name, pre.name, norm)


def find_preactivations(
    traced: TracedModel, cut_points: list[CutPoint], block_ends: list[CutPoint], blocks: list[fx.GraphModule]
) -> list[PreActivationTap]:
    """One tap per block; block ends without a ReLU get the ReLU cut points that could replace them."""
    taps = []
    nodes = traced.nodes
    relu_cuts = [c for c in cut_points if is_relu(traced.graph_module, nodes[c.position])]
    for index, (end, block) in enumerate(zip(block_ends, blocks, strict=True)):
        tap = find_preactivation(block, end.label)
        if not tap.found:
            limit = block_ends[index + 1].position if index + 1 < len(block_ends) else len(nodes)
            near = tuple(c.label for c in relu_cuts if end.position < c.position < limit and c.shape == end.shape)
            tap = PreActivationTap(tap.block_end, tap.ends_with, suggestions=near[:3])
        taps.append(tap)
    return taps


def tapped_forward(block: fx.GraphModule, tap: PreActivationTap) -> TappedForward:
    """Code that runs ``block`` (passed as its first argument) and also returns the pre-activation.

    The code is generated from a copy of the block's graph whose final ReLU is out of place;
    it reads every submodule and parameter from the block it is given, so it shares the
    block's weights and follows it across devices, and the block itself stays unchanged.
    """
    if not tap.found:
        raise ValueError(f"block end {tap.block_end!r} has no pre-activation tap")
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in block.graph.nodes:
        if node.op == "output":
            end, pre = node.args[0], _by_name(block, tap.pre_activation)
            graph.output((env[end], env[pre]))
        elif node.name == tap.activation:
            env[node] = graph.call_function(torch.relu, (env[_by_name(block, tap.pre_activation)],))
        else:
            env[node] = graph.node_copy(node, lambda n: env[n])
    graph.lint()
    code = graph.python_code(root_module="self")
    namespace = dict(code.globals)
    exec(compile(code.src, f"<splicer pre-activation tap of {tap.block_end}>", "exec"), namespace)  # noqa: S102
    return namespace["forward"]


def _by_name(block: fx.GraphModule, name: str | None) -> fx.Node:
    return next(n for n in block.graph.nodes if n.name == name)


def _norm_before(block: fx.GraphModule, node: fx.Node) -> str | None:
    """Module path of the BatchNorm whose output ``node`` is, looking through identities and residual sums."""
    node = _skip_identities(block, node)
    if node.op == "call_module" and isinstance(block.get_submodule(str(node.target)), nn.modules.batchnorm._BatchNorm):
        return str(node.target)
    if (node.op == "call_function" and node.target in _SUMS) or (node.op == "call_method" and node.target in ("add", "add_")):
        operands = [a for a in node.args if isinstance(a, fx.Node)]
        norms = [(_weight_layers_behind(block, a), _norm_before(block, a)) for a in operands]
        norms = [(depth, norm) for depth, norm in norms if norm is not None]
        if not norms:
            return None
        deepest = max(depth for depth, _ in norms)
        candidates = {norm for depth, norm in norms if depth == deepest}
        return candidates.pop() if len(candidates) == 1 else None
    return None


def _skip_identities(block: fx.GraphModule, node: fx.Node) -> fx.Node:
    while node.op == "call_module" and isinstance(block.get_submodule(str(node.target)), _IDENTITY_LIKE):
        node = node.args[0]
    return node


def _weight_layers_behind(block: fx.GraphModule, node: fx.Node) -> int:
    """How many conv/linear modules ``node`` depends on within the block."""
    seen: set[fx.Node] = set()
    frontier = [node]
    count = 0
    while frontier:
        current = frontier.pop()
        if current in seen:
            continue
        seen.add(current)
        if current.op == "call_module" and isinstance(block.get_submodule(str(current.target)), _WEIGHT_LAYERS):
            count += 1
        frontier.extend(current.all_input_nodes)
    return count
