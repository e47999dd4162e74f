"""Where a traced model can be cut into blocks.

A node is a valid cut point when it is the only value live across it: every later node
depends on earlier ones only through it. Then the part of the graph before it and the part
after it are two modules joined by one tensor, which is what a block boundary must be.
Parameters and buffers (``get_attr``) are not values here: any block can fetch them.
"""

from __future__ import annotations

import dataclasses
import operator
from dataclasses import dataclass

from torch import fx, nn
from torch.fx.passes.shape_prop import TensorMetadata

from splicer.errors import CutError, closest
from splicer.trace.layouts import FeatureLayout, infer_layouts, same_stage
from splicer.trace.shapes import tensor_shape
from splicer.trace.tracer import TracedModel


@dataclass(frozen=True)
class CutPoint:
    """A valid block end: the node, the module whose output it is (if any), its shape and layout."""

    node: str
    module_path: str | None
    shape: tuple[int, ...]
    position: int
    stage_end: bool = False
    layout: FeatureLayout | None = None  # None: not a feature (logits, attention scores, ...)

    @property
    def label(self) -> str:
        """The name a user would write in a spec: the module path when there is one."""
        return self.module_path or self.node


def batch_size_nodes(nodes: list[fx.Node]) -> dict[fx.Node, str]:
    """Nodes that only read the batch size (``x.shape[0]``, ``x.size(0)``): ``"value"``, and the
    ``x.shape`` they index: ``"helper"``.

    A batch size read once at the top and used at the bottom would make every cut look invalid;
    since every tensor in a CNN has the same batch size, each block re-reads it from its own input.
    """
    batch = _leading_size(nodes[0]) if nodes else None
    values: set[fx.Node] = set()
    for node in nodes:
        if node.op == "call_method" and node.target == "size" and (node.args[1:] == (0,) or node.kwargs == {"dim": 0}):
            tensor = node.args[0]
        elif node.op == "call_function" and node.target is operator.getitem and node.args[1:] == (0,):
            shape = node.args[0]
            tensor = shape.args[0] if isinstance(shape, fx.Node) and _is_whole_shape(shape) else None
        else:
            continue
        # dim 0 is the batch only where it has the batch's size (not batch x heads in attention)
        if isinstance(tensor, fx.Node) and batch is not None and _leading_size(tensor) == batch:
            values.add(node)
    found = {node: "value" for node in values}
    for node in nodes:
        if _is_whole_shape(node) and node.users and all(user in values for user in node.users):
            found[node] = "helper"
    return found


def _leading_size(node: fx.Node) -> int | None:
    meta = node.meta.get("tensor_meta")
    return int(meta.shape[0]) if isinstance(meta, TensorMetadata) and len(meta.shape) else None


def _is_whole_shape(node: fx.Node) -> bool:
    if node.op == "call_function" and node.target is getattr and node.args[1:] == ("shape",):
        return True
    return node.op == "call_method" and node.target == "size" and len(node.args) == 1 and not node.kwargs


def live_values(traced: TracedModel) -> list[list[fx.Node]]:
    """For each node position, the values computed at or before it and used after it.

    Parameters (``get_attr``) and batch-size reads are not counted: any block can re-create them.
    """
    nodes = traced.nodes
    position = {node: i for i, node in enumerate(nodes)}
    free = batch_size_nodes(nodes)
    dies_at: dict[int, list[fx.Node]] = {}
    for node in nodes:
        if node.op in ("get_attr", "output") or not node.users or node in free:
            continue
        dies_at.setdefault(max(position[user] for user in node.users), []).append(node)
    live: dict[fx.Node, None] = {}
    result = []
    for i, node in enumerate(nodes):
        for dead in dies_at.get(i, []):
            live.pop(dead, None)
        if node.op not in ("get_attr", "output") and node.users and node not in free:
            live[node] = None
        result.append(list(live))
    return result


def module_outputs(traced: TracedModel) -> dict[str, str]:
    """Node name -> outermost module path whose last op that node is (``stage2`` for its ReLU)."""
    modules = {name for name, _ in traced.graph_module.named_modules() if name}
    last_node_of: dict[str, str] = {}
    for node in traced.nodes:
        qualname = traced.qualnames.get(node.name)
        if not qualname or node.op == "get_attr":
            continue
        parts = qualname.split(".")
        for depth in range(1, len(parts) + 1):
            prefix = ".".join(parts[:depth])
            if prefix in modules:
                last_node_of[prefix] = node.name
    outermost: dict[str, str] = {}
    for path, node_name in last_node_of.items():
        if node_name not in outermost or path.count(".") < outermost[node_name].count("."):
            outermost[node_name] = path
    return outermost


def find_cut_points(traced: TracedModel, model: nn.Module | None = None) -> list[CutPoint]:
    """Every valid cut point of a shape-propagated graph, with its feature layout and stage ends marked.

    ``model`` (the original) lends timm's generic token attributes where the graph does not
    show the token grid (see :mod:`splicer.trace.layouts`); stage ends: :func:`graph_stage_ends`.
    """
    nodes = traced.nodes
    live = live_values(traced)
    outputs = module_outputs(traced)
    output_node = nodes[-1]
    logits = output_node.args[0] if output_node.args else None
    found: list[CutPoint] = []
    for i, node in enumerate(nodes):
        if node.op in ("placeholder", "get_attr", "output") or node is logits:
            continue
        shape = tensor_shape(node)
        if shape is None or live[i] != [node]:
            continue
        found.append(CutPoint(node.name, outputs.get(node.name), shape, i))
    layouts = infer_layouts(traced.graph_module, [c.node for c in found], model)
    found = [dataclasses.replace(c, layout=layouts.get(c.node)) for c in found]
    marked = {c.node for c in graph_stage_ends(found)}
    return [dataclasses.replace(c, stage_end=c.node in marked) for c in found]


def feature_cuts(cut_points: list[CutPoint]) -> list[CutPoint]:
    """Cut points holding a spatial feature (a known layout, grid larger than 1x1): candidate block ends."""
    return [c for c in cut_points if c.layout is not None and c.layout.grid != (1, 1)]


def graph_stage_ends(cut_points: list[CutPoint]) -> list[CutPoint]:
    """One stage end per run of cut points at one grid size (maps and tokens alike), or shrinking
    by a few pixels through unpadded convolutions (:func:`splicer.trace.layouts.same_stage`).

    The chosen cut point is the output of the shallowest module in the run (``layer1``
    rather than ``layer2.0.act1``, a pre-activation that opens the next stage), the latest
    on ties. Globally pooled maps (1x1) belong to the head, not to a stage.
    """
    runs: list[list[CutPoint]] = []
    for cut in feature_cuts(cut_points):
        if runs and same_stage(runs[-1][-1].layout.grid, cut.layout.grid):
            runs[-1].append(cut)
        else:
            runs.append([cut])
    ends = []
    for run in runs:
        modules = [c for c in run if c.module_path]
        if modules:
            shallowest = min(c.module_path.count(".") for c in modules)
            ends.append([c for c in modules if c.module_path.count(".") == shallowest][-1])
        else:
            ends.append(run[-1])
    return ends


def resolve_block_ends(
    traced: TracedModel, names: list[str], cut_points: list[CutPoint], where: str
) -> list[fx.Node]:
    """Map the spec's block ends (node names or module paths) to graph nodes, checking each.

    ``where`` prefixes error messages (``specs/x.yaml: teacher.blocks``).
    """
    nodes_by_name = {node.name: node for node in traced.nodes}
    by_module = {path: node for node, path in module_outputs(traced).items()}
    all_module_paths = module_last_nodes(traced)
    valid = {c.node: c for c in cut_points}
    resolved: list[fx.Node] = []
    for index, name in enumerate(names):
        field = f"{where}[{index}]"
        node_name = name if name in nodes_by_name else by_module.get(name) or all_module_paths.get(name)
        if node_name is None:
            choices = [c.label for c in cut_points] + [c.node for c in cut_points]
            near = closest(name, choices, n=3)
            hint = f"; closest valid cut points: {', '.join(near)}" if near else ""
            raise CutError(
                f"{field}: {name!r} is neither a node nor a module of the model{hint}. "
                f"List the model's cut points with `splicer inspect`."
            )
        node = nodes_by_name[node_name]
        if node_name not in valid:
            raise CutError(f"{field}: {name!r} is not a valid block end: {_why_invalid(traced, node, cut_points)}")
        resolved.append(node)
    positions = [valid[n.name].position for n in resolved]
    if positions != sorted(positions):
        order = ", ".join(names[i] for i in sorted(range(len(names)), key=lambda i: positions[i]))
        raise CutError(f"{where}: block ends must be listed in the order the model computes them: {order}")
    return resolved


def module_last_nodes(traced: TracedModel) -> dict[str, str]:
    """Module path -> its last node, for any module (also those whose output is not a cut point)."""
    modules = {name for name, _ in traced.graph_module.named_modules() if name}
    last: dict[str, str] = {}
    for node in traced.nodes:
        qualname = traced.qualnames.get(node.name, "")
        parts = qualname.split(".")
        for depth in range(1, len(parts) + 1):
            prefix = ".".join(parts[:depth])
            if prefix in modules:
                last[prefix] = node.name
    return last


def _why_invalid(traced: TracedModel, node: fx.Node, cut_points: list[CutPoint]) -> str:
    nodes = traced.nodes
    index = nodes.index(node)
    output = nodes[-1]
    if output.args and node is output.args[0]:
        return "it is the model's output; the last block end must come before the classification head"
    if tensor_shape(node) is None:
        return "its value is not a single tensor"
    crossing = [n.name for n in live_values(traced)[index] if n is not node]
    before = [c for c in cut_points if c.position < index]
    after = [c for c in cut_points if c.position > index]
    nearest = [c.label for c in (before[-1:] + after[:1])]
    where = f"; nearest valid cut points: {', '.join(nearest)}" if nearest else ""
    return (
        f"other values cross the cut there ({', '.join(crossing)}), e.g. inside a residual block{where}"
    )
