"""The SFTN's branch graph (which block feeds which), as networkx, Graphviz DOT and Mermaid."""

from __future__ import annotations

import networkx as nx

from splicer.assembly.build import BuildResult


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def branch_graph(result: BuildResult) -> nx.DiGraph:
    """Nodes are blocks, transforms and heads (attribute ``label``); edges carry tensors (``shape``)."""
    graph = nx.DiGraph()
    n = len(result.teacher.block_ends)
    input_shape = tuple(result.spec.input_size)
    graph.add_node("input", label=f"input {_shape(input_shape)}", role="input")
    previous = "input"
    for k in range(1, n + 1):
        node = f"T_B{k}"
        graph.add_node(node, label=f"B_T^{k} ({result.teacher.block_labels[k - 1]})", role="teacher")
        graph.add_edge(previous, node, shape=_shape(input_shape if k == 1 else result.teacher.block_shapes[k - 2]))
        previous = node
    graph.add_node("T_head", label="teacher head -> z_T", role="teacher")
    graph.add_edge(previous, "T_head", shape=_shape(result.teacher.block_shapes[-1]))
    for i, plan in enumerate(result.transforms, start=1):
        transform = f"R{i}_T"
        graph.add_node(transform, label=f"T^{i}: {plan.describe()}", role="transform")
        graph.add_edge(f"T_B{i}", transform, shape=_shape(plan.source))
        previous = transform
        for k in range(i + 1, n + 1):
            node = f"R{i}_B{k}"
            graph.add_node(node, label=f"B_S^{k} ({result.student.block_labels[k - 1]})", role="student")
            graph.add_edge(previous, node, shape=_shape(result.student.block_shapes[k - 2]))
            previous = node
        head = f"R{i}_head"
        graph.add_node(head, label=f"student head -> z_R^{i}", role="student")
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
