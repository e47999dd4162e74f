"""The branch graph as a picture (SVG, PNG) that a person can open without other tools.

The teacher's blocks run left to right along the top row; each branch hangs from the teacher
block it starts at: its transform T^i right below that block, then the student blocks, each in
the column of the teacher block it stands in for, and the student head. The shortest branch is
the nearest to the teacher, so no edge crosses another. Edges carry tensor shapes, boxes carry
parameter counts. Drawn with matplotlib (Agg, imported only when a picture is asked for), so no
system package is needed. In the SVG every box is a group with an id (``node-<graph node>``),
text stays text (searchable, selectable), and nothing depends on the date, so rebuilding an
unchanged spec writes the same file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import networkx as nx

from splicer.assembly.build import BuildResult
from splicer.emission.graph import branch_graph, count_parameters, format_count
from splicer.errors import SplicerError

PICTURE_FORMATS = (".svg", ".png")

# Sizes in inches: the axes span the whole figure with one data unit per inch. Boxes are at
# least _BOX_W wide and widen (up to _BOX_W_MAX) to the widest label, measured by matplotlib's
# renderer; the gap between columns stays, for edge shapes and branch names.
_BOX_W, _BOX_W_MAX, _BOX_H = 1.6, 3.2, 0.8
_GAP_X, _PITCH_Y = 0.85, 1.45
_TEXT_PAD = 0.07  # between a label and its box's border
_INPUT_W = 0.8  # the input box, as a fraction of the others
_MARGIN, _TITLE_H = 0.3, 1.2
_COLOURS = {  # fill, border
    "input": ("#f3f3f3", "#888888"),
    "teacher": ("#cfe2f3", "#3d6f99"),
    "transform": ("#fce5cd", "#b45f06"),
    "student": ("#d9ead3", "#38761d"),
}
_NAME_MAX = 44  # characters of a block end shown before it is cut with an ellipsis
_MIN_SIZE = 5.0  # points: a label wider than the widest box shrinks down to this


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _cell(graph: nx.DiGraph, node: str, n_blocks: int, box_w: float) -> tuple[float, float]:
    """The box centre: column = block index, row 0 = teacher, branch i in row N - i."""
    data = graph.nodes[node]
    row = 0 if data["branch"] == 0 else n_blocks - data["branch"]
    return _MARGIN + box_w / 2 + data["block"] * (box_w + _GAP_X), -row * _PITCH_Y


def _box_lines(data: dict[str, Any]) -> list[tuple[str, float, float, dict[str, Any]]]:
    """A box's labels: (text, font size, offset from the box centre, text properties)."""
    middle = _middle_text(data)
    if not middle.startswith("$") and len(middle) > _NAME_MAX:
        middle = middle[: _NAME_MAX - 1] + "…"
    lines = [
        (_title_text(data), 10.5, 0.2, {"weight": "bold"}),
        (middle, 9.5 if middle.startswith("$") else 8.0, -0.02, {"family": "monospace"}),
    ]
    if data["role"] != "input":
        lines.append((f"{format_count(data['params'])} params", 7.5, -0.24, {"color": "#444444"}))
    return lines


def _text_width(fig: Any, text: str, size: float, props: dict[str, Any]) -> float:
    """The drawn width of ``text`` in inches, by the figure's renderer."""
    artist = fig.text(0, 0, text, fontsize=size, **props)
    width = artist.get_window_extent(fig.canvas.get_renderer()).width / fig.dpi
    artist.remove()
    return float(width)


def _layout_labels(graph: nx.DiGraph) -> tuple[float, dict[str, list[tuple[str, float, float, dict[str, Any]]]]]:
    """The box width that holds every label, and each box's labels at the size that fits it."""
    plt = _pyplot()
    scratch = plt.figure()
    try:
        lines = {node: _box_lines(data) for node, data in graph.nodes(data=True)}
        widths = {node: [_text_width(scratch, t, size, props) for t, size, _, props in ls] for node, ls in lines.items()}
    finally:
        plt.close(scratch)
    share = {node: _INPUT_W if graph.nodes[node]["role"] == "input" else 1.0 for node in lines}
    needed = max((max(w) + 2 * _TEXT_PAD) / share[node] for node, w in widths.items())
    box_w = min(max(_BOX_W, needed), _BOX_W_MAX)
    fitted = {}
    for node, node_lines in lines.items():
        room = box_w * share[node] - 2 * _TEXT_PAD
        fitted[node] = [
            (text, max(_MIN_SIZE, size * min(1.0, room / width)) if width > 0 else size, dy, props)
            for (text, size, dy, props), width in zip(node_lines, widths[node])
        ]
    return box_w, fitted


def _title_text(data: dict[str, Any]) -> str:
    role, name = data["role"], data["name"]
    if role == "input":
        return "input"
    if name.startswith("head"):
        return "teacher head" if role == "teacher" else "student head"
    letter, index = name.split("^")
    return f"${letter}^{{{index}}}$"  # B_T^1 -> mathtext subscript and superscript


def _middle_text(data: dict[str, Any]) -> str:
    """The box's middle line: the block end (a module path or fx node), the transform, the logits."""
    if data["role"] == "input":
        return data["label"].removeprefix("input ")
    if data["name"].startswith("head"):
        letter, _, index = data["end"].partition("^")  # z_T, z_R^i
        return f"$\\rightarrow {letter}^{{{index}}}$" if index else f"$\\rightarrow {letter}$"
    return _literal(data["end"])


def _literal(text: str) -> str:
    """User text shown as is: a ``$`` would start matplotlib's mathtext."""
    return text.replace("$", r"\$")


def draw_branch_graph(graph: nx.DiGraph, title: str, subtitle: str = "") -> Any:
    """A matplotlib Figure of the branch graph (see the module docstring for the layout)."""
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch

    plt = _pyplot()
    n_blocks = max(d["block"] for d in graph.nodes.values()) - 1
    box_w, labels = _layout_labels(graph)
    width = 2 * _MARGIN + box_w + (n_blocks + 1) * (box_w + _GAP_X)
    width = max(width, 2 * _MARGIN + 0.11 * max(len(title), 0.75 * len(subtitle)))  # long names stay in view
    height = _TITLE_H + _MARGIN + _BOX_H + (n_blocks - 1) * _PITCH_Y + 0.1
    fig = plt.figure(figsize=(width, height))
    ax = fig.add_axes((0, 0, 1, 1))
    top = _BOX_H / 2 + _TITLE_H
    ax.set_xlim(0, width)
    ax.set_ylim(top - height, top)
    ax.set_axis_off()
    ax.text(_MARGIN, top - 0.3, _literal(title), fontsize=12, weight="bold", va="center", gid="title")
    if subtitle:
        ax.text(_MARGIN, top - 0.6, _literal(subtitle), fontsize=9, color="#444444", va="center")

    for node, data in graph.nodes(data=True):
        x, y = _cell(graph, node, n_blocks, box_w)
        fill, border = _COLOURS[data["role"]]
        node_w = box_w * (_INPUT_W if data["role"] == "input" else 1.0)
        ax.add_patch(
            FancyBboxPatch(
                (x - node_w / 2, y - _BOX_H / 2), node_w, _BOX_H, boxstyle="round,pad=0,rounding_size=0.08",
                facecolor=fill, edgecolor=border, linewidth=1.2, gid=f"node-{node}",
            )
        )
        for text, size, dy, props in labels[node]:
            ax.text(x, y + dy, text, ha="center", va="center", fontsize=size, gid=f"label-{node}", **props)

    for src, dst, data in graph.edges(data=True):
        (x0, y0), (x1, y1) = _cell(graph, src, n_blocks, box_w), _cell(graph, dst, n_blocks, box_w)
        start_w = box_w * (_INPUT_W if graph.nodes[src]["role"] == "input" else 1)
        if y0 == y1:  # along a row
            start, end = (x0 + start_w / 2, y0), (x1 - box_w / 2, y1)
            label_at, align = ((start[0] + end[0]) / 2, y0 + 0.1), {"ha": "center", "va": "bottom"}
        else:  # a branch dropping from its teacher block
            start, end = (x0, y0 - _BOX_H / 2), (x1, y1 + _BOX_H / 2)
            label_at, align = (x0 + 0.06, y0 - _BOX_H / 2 - (_PITCH_Y - _BOX_H) / 2), {"ha": "left", "va": "center"}
        ax.add_patch(
            FancyArrowPatch(
                start, end, arrowstyle="-|>", mutation_scale=11, linewidth=1.1, color="#555555",
                shrinkA=0, shrinkB=0, gid=f"edge-{src}-{dst}",
            )
        )
        ax.text(*label_at, data["shape"], fontsize=7.5, color="#222222", family="monospace", **align)

    for i in range(1, n_blocks):  # name each branch just left of its transform, where no edge runs
        x, y = _cell(graph, f"R{i}_T", n_blocks, box_w)
        ax.text(x - box_w / 2 - 0.1, y, f"branch {i}", ha="right", va="center", fontsize=9, style="italic", gid=f"branch-{i}")
    legend = (("teacher", "teacher"), ("transform", "transform"), ("student", "student (branch)"))
    handles = [Patch(facecolor=_COLOURS[role][0], edgecolor=_COLOURS[role][1], label=label) for role, label in legend]
    ax.legend(
        handles=handles, loc="upper left", fontsize=8, frameon=False, ncol=3, borderaxespad=0, borderpad=0,
        bbox_to_anchor=(_MARGIN, top - 0.78), bbox_transform=ax.transData,
    )
    return fig


def save_figure(fig: Any, path: Path) -> None:
    """Write a figure as SVG or PNG (by the file's extension), atomically; text in the SVG stays text."""
    import matplotlib

    fmt = path.suffix.lower()
    if fmt not in PICTURE_FORMATS:
        raise SplicerError(f"{path}: cannot draw a picture as {fmt or 'a file without extension'}; use .svg or .png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=fmt)
    os.close(fd)
    try:
        with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "splicer"}):
            metadata = {"Date": None} if fmt == ".svg" else {"Software": None}
            fig.savefig(tmp, format=fmt[1:], dpi=150, metadata=metadata)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a picture is for sharing
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_branch_pictures(graph: nx.DiGraph, paths: list[Path], title: str, subtitle: str = "") -> None:
    """Draw the branch graph once and write it to every path (.svg or .png)."""
    plt = _pyplot()
    fig = draw_branch_graph(graph, title, subtitle)
    try:
        for path in paths:
            save_figure(fig, path)
    finally:
        plt.close(fig)


def write_result_pictures(result: BuildResult, paths: list[Path]) -> None:
    """The branch graph of a compiled SFTN, titled with its pair and parameter counts."""
    spec, sftn = result.spec, result.sftn
    n = len(sftn.teacher.blocks)
    branches = sum(count_parameters(b) for b in sftn.branches)
    title = f"SFTN {spec.name}: teacher {spec.teacher.model}, student {spec.student.model}"
    subtitle = (
        f"{n} blocks, {n - 1} branch{'es' if n > 2 else ''}, input {'x'.join(map(str, spec.input_size))}; "
        f"parameters: teacher {format_count(count_parameters(sftn.teacher))}, branches {format_count(branches)}, "
        f"total {format_count(count_parameters(sftn))}"
    )
    write_branch_pictures(branch_graph(result), paths, title, subtitle)
