"""Layer tables in the style of the paper's table 12: one row per layer, with shapes.

Each part of an SFTN (the teacher, each branch) is traced with its real modules and shape-
propagated from its real input shape, so the table shows what runs, not what the spec says.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import fx, nn

from splicer.assembly.build import BuildResult
from splicer.trace.shapes import propagate_shapes, tensor_shape
from splicer.trace.tracer import trace_model

# Ops that only move data around: they get no row, their input stands in for them.
_PLUMBING = {"flatten", "view", "reshape", "size", "getattr", "getitem", "contiguous", "clone", "squeeze", "unsqueeze"}


@dataclass(frozen=True)
class LayerRow:
    """One layer of a table-12 style listing."""

    layer: str  # e.g. Conv2d-36
    input_layer: str
    input_shape: str
    filter_size: str
    channels: str
    stride: str
    padding: str
    output_shape: str
    block: str  # B_T^1, T^1, B_S^2, head_T, head_S


COLUMNS = ("Layer", "Input Layer", "Input Shape", "Filter Size", "Channels", "Stride", "Paddings", "Output Shape", "Block")


@dataclass
class PartTable:
    """The rows of one part of the SFTN: the teacher, or one student branch."""

    title: str
    rows: list[LayerRow]


def layer_tables(result: BuildResult) -> list[PartTable]:
    """The teacher's table, then one table per branch, numbered on as the paper does."""
    sftn, spec = result.sftn, result.spec
    counter = [0]
    teacher_rows = _rows(
        sftn.teacher, spec.input_size, "Image", counter, lambda path: _block_label(path, "T", 1)
    )
    tables = [PartTable(f"Teacher ({spec.teacher.model})", teacher_rows)]
    block_last_row = _last_row_per_block(teacher_rows)
    for i, branch in enumerate(sftn.branches, start=1):
        source_shape = result.teacher.block_shapes[i - 1]

        def label(path: str, i: int = i) -> str:
            if path.startswith("transform"):
                return f"T^{i}"
            return _block_label(path, "S", i + 1)

        rows = _rows(branch, source_shape, block_last_row[f"B_T^{i}"], counter, label)
        tables.append(PartTable(f"Student branch {i} ({spec.branch_network.model})", rows))
    return tables


def _block_label(path: str, who: str, first: int) -> str:
    parts = path.split(".")
    if parts[0] == "blocks":
        return f"B_{who}^{first + int(parts[1])}"
    return f"head_{who}"


def _last_row_per_block(rows: list[LayerRow]) -> dict[str, str]:
    last: dict[str, str] = {}
    for row in rows:
        last[row.block] = row.layer
    return last


def _rows(
    module: nn.Module, input_shape: tuple[int, ...], input_label: str, counter: list[int], label: Callable[[str], str]
) -> list[LayerRow]:
    traced = trace_model(module, name=type(module).__name__)
    gm = traced.graph_module
    propagate_shapes(gm, input_shape)
    modules = dict(gm.named_modules())
    row_of: dict[fx.Node, str] = {}
    shape_of: dict[fx.Node, tuple[int, ...] | None] = {}  # plumbing reports its input's shape
    rows: list[LayerRow] = []
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            row_of[node] = input_label
            shape_of[node] = tuple(input_shape)
            continue
        if node.op in ("output", "get_attr"):
            continue
        inputs = [a for a in node.all_input_nodes if a.op != "get_attr"]
        source = inputs[0] if inputs else None
        kind = _kind(node, modules)
        if kind in _PLUMBING or tensor_shape(node) is None:
            row_of[node] = row_of.get(source, input_label) if source is not None else input_label
            shape_of[node] = shape_of.get(source) if source is not None else None
            continue
        counter[0] += 1
        name = f"{kind}-{counter[0]}"
        row_of[node] = name
        module_obj = modules.get(node.target) if node.op == "call_module" else None
        filt, channels, stride, padding = _attributes(module_obj)
        in_shape = shape_of.get(source) if source is not None else None
        shape_of[node] = tensor_shape(node)
        rows.append(
            LayerRow(
                layer=name,
                input_layer=", ".join(row_of.get(a, input_label) for a in inputs) or "-",
                input_shape=_fmt(in_shape),
                filter_size=filt,
                channels=channels,
                stride=stride,
                padding=padding,
                output_shape=_fmt(tensor_shape(node)),
                block=label(traced.qualnames.get(node.name, node.name)),
            )
        )
    return rows


def _kind(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return type(modules[node.target]).__name__
    if node.op == "call_method":
        return str(node.target)
    return getattr(node.target, "__name__", str(node.target))


def _attributes(module: nn.Module | None) -> tuple[str, str, str, str]:
    """Filter size, channels, stride and padding of a layer, '-' where they do not apply."""
    if module is None:
        return "-", "-", "-", "-"
    kernel = getattr(module, "kernel_size", None)
    channels = getattr(module, "out_channels", None) or getattr(module, "num_features", None) or getattr(
        module, "out_features", None
    )
    stride = getattr(module, "stride", None)
    padding = getattr(module, "padding", None)
    if isinstance(kernel, int):
        kernel = (kernel, kernel)
    return _pair(kernel, "x", square=True), str(channels) if channels else "-", _pair(stride, "x"), _pair(padding, "x")


def _pair(value: object, sep: str, square: bool = False) -> str:
    """``3`` for a stride of (3, 3); ``3x3`` for a kernel (``square``), as the paper writes them."""
    if value is None:
        return "-"
    if isinstance(value, (tuple, list)):
        return str(value[0]) if len(set(value)) == 1 and not square else sep.join(map(str, value))
    return str(value)


def _fmt(shape: tuple[int, ...] | None) -> str:
    return "x".join(map(str, shape)) if shape else "-"
