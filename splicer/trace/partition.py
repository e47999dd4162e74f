"""Cut a traced graph into blocks at given cut points.

Each block is a GraphModule whose input is the previous cut value; the last part, from
the last block end to the logits, is the head. Submodules keep their qualified names, so
a block's state_dict keys are the original model's (``stage2.0.conv.weight``).
"""

from __future__ import annotations

from torch import fx, nn

from splicer.trace.cuts import batch_size_nodes


def split_graph(graph_module: fx.GraphModule, cut_nodes: list[fx.Node], root: nn.Module | None = None) -> list[fx.GraphModule]:
    """Split at ``cut_nodes`` (valid cut points, in order) into ``len(cut_nodes) + 1`` modules.

    ``root`` supplies the parameters (default: the traced model's own); passing a fresh
    instance of the same architecture gives freshly initialised blocks with the same graph.
    """
    root = graph_module if root is None else root
    boundaries = set(cut_nodes)
    batch_nodes = batch_size_nodes(list(graph_module.graph.nodes))
    parts: list[fx.GraphModule] = []
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    part_input: list[fx.Node] = []  # the current part's placeholder

    def fetch(node: fx.Node) -> fx.Node:
        if node not in env:
            if batch_nodes.get(node) == "value":  # re-read the batch size from this part's input
                env[node] = graph.call_method("size", (part_input[0], 0))
            elif node.op == "get_attr":  # parameters: every part fetches its own
                env[node] = graph.node_copy(node, fetch)
            else:
                raise ValueError(f"{node.name} crosses a cut; cut only at valid cut points")
        return env[node]

    index = 0
    for node in graph_module.graph.nodes:
        if node.op == "get_attr" or node in batch_nodes:
            continue  # created on first use by fetch
        if node.op == "output":
            graph.output(fx.graph.map_arg(node.args[0], fetch))
            parts.append(_finish(root, graph, index))
            break
        env[node] = graph.node_copy(node, fetch)
        if node.op == "placeholder":
            part_input[:] = [env[node]]
        if node in boundaries:
            graph.output(env[node])
            parts.append(_finish(root, graph, index))
            index += 1
            graph = fx.Graph()
            placeholder = graph.placeholder(node.name)
            placeholder.meta = dict(node.meta)
            env = {node: placeholder}
            part_input[:] = [placeholder]
    return parts


def _finish(root: nn.Module, graph: fx.Graph, index: int) -> fx.GraphModule:
    graph.lint()
    return fx.GraphModule(root, graph, f"Block{index + 1}")
