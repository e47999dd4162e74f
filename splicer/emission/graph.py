"""The SFTN's branch graph (which block feeds which), as networkx, Graphviz DOT and Mermaid.

The networkx graph is the one source of every rendering (DOT, Mermaid, the SVG/PNG picture in
:mod:`splicer.emission.picture`): each node carries its ``role``, where it sits (``branch``: 0
for the teacher, i for branch i; ``block``: the block index k, 0 for the input, N+1 for a head)
and its parameter count.
"""

from __future__ import annotations

import networkx as nx
from torch import nn

from splicer.assembly.build import BuildResult


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def format_count(n: int) -> str:
    """A parameter count for people: 980, 38.7K, 9.46M."""
    if n < 1_000:
        return str(n)
    if n < 1_000_000:
        return f"{n / 1e3:.1f}K"
    return f"{n / 1e6:.2f}M"


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def branch_graph(result: BuildResult) -> nx.DiGraph:
    """Nodes are blocks, transforms and heads (attributes ``label``, ``role``, ``branch``, ``block``,
    ``name``, ``end``, ``params``); edges carry tensors (``shape``)."""
    graph = nx.DiGraph()
    sftn = result.sftn
    n = len(result.teacher.block_ends)
    input_shape = tuple(result.spec.input_size)
    graph.add_node(
        "input", label=f"input {_shape(input_shape)}", role="input", branch=0, block=0, name="input", end="", params=0
    )
    previous = "input"
    for k in range(1, n + 1):
        node = f"T_B{k}"
        end = result.teacher.block_labels[k - 1]
        graph.add_node(
            node, label=f"B_T^{k} ({end})", role="teacher", branch=0, block=k, name=f"B_T^{k}", end=end,
            params=count_parameters(sftn.teacher.blocks[k - 1]),
        )
        graph.add_edge(previous, node, shape=_shape(input_shape if k == 1 else result.teacher.block_shapes[k - 2]))
        previous = node
    graph.add_node(
        "T_head", label="teacher head -> z_T", role="teacher", branch=0, block=n + 1, name="head_T", end="z_T",
        params=count_parameters(sftn.teacher.head),
    )
    graph.add_edge(previous, "T_head", shape=_shape(result.teacher.block_shapes[-1]))
    for i, (plan, branch) in enumerate(zip(result.transforms, sftn.branches), start=1):
        transform = f"R{i}_T"
        graph.add_node(
            transform, label=f"T^{i}: {plan.describe()}", role="transform", branch=i, block=i, name=f"T^{i}",
            end=plan.layer(), params=count_parameters(branch.transform),
        )
        graph.add_edge(f"T_B{i}", transform, shape=_shape(plan.source))
        previous = transform
        for k in range(i + 1, n + 1):
            node = f"R{i}_B{k}"
            end = result.student.block_labels[k - 1]
            graph.add_node(
                node, label=f"B_S^{k} ({end})", role="student", branch=i, block=k, name=f"B_S^{k}", end=end,
                params=count_parameters(branch.blocks[k - i - 1]),
            )
            graph.add_edge(previous, node, shape=_shape(result.student.block_shapes[k - 2]))
            previous = node
        head = f"R{i}_head"
        graph.add_node(
            head, label=f"student head -> z_R^{i}", role="student", branch=i, block=n + 1, name="head_S",
            end=f"z_R^{i}", params=count_parameters(branch.head),
        )
        graph.add_edge(previous, head, shape=_shape(result.student.block_shapes[-1]))
    return graph


_DOT_STYLE = {
    "input": "shape=oval",
    "teacher": 'shape=box, style=filled, fillcolor="#cfe2f3"',
    "transform": 'shape=box, style=filled, fillcolor="#fce5cd"',
    "student": 'shape=box, style=filled, fillcolor="#d9ead3"',
}


def to_dot(graph: nx.DiGraph, name: str = "sftn") -> str:
    """Graphviz DOT text (``dot -Tsvg``), teacher left to right, branches below."""
    lines = [f'digraph "{name}" {{', "  rankdir=LR;", '  node [fontname="Helvetica", fontsize=10];']
    for node, data in graph.nodes(data=True):
        lines.append(f'  "{node}" [label="{_escape(data["label"])}", {_DOT_STYLE[data["role"]]}];')
    for src, dst, data in graph.edges(data=True):
        lines.append(f'  "{src}" -> "{dst}" [label="{data["shape"]}", fontsize=8];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_mermaid(graph: nx.DiGraph) -> str:
    """Mermaid flowchart text (renders in GitHub markdown)."""
    lines = ["flowchart LR"]
    for node, data in graph.nodes(data=True):
        lines.append(f'  {node}["{_escape(data["label"]).replace("^", "")}"]')
    for src, dst, data in graph.edges(data=True):
        lines.append(f'  {src} -- "{data["shape"]}" --> {dst}')
    return "\n".join(lines) + "\n"


def _escape(text: str) -> str:
    return text.replace('"', "'")
