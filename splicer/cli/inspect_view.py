"""What ``splicer inspect SPEC`` prints: a one-screen overview, and every layer with ``--layers``.

Both are drawn from :func:`splicer.emission.report.summary_data` (what ``--json`` prints) and
fitted to the console's width (the terminal's, or ``COLUMNS``): tables wrap inside their cells,
notes wrap at word boundaries.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from splicer.emission.layers import COLUMNS, PartTable
from splicer.emission.graph import format_count


def _shape(shape: list[int]) -> str:
    return "x".join(map(str, shape))


# The layer table's columns, named short enough that a row fits in 80 characters.
_LAYER_HEADERS = ("Layer", "Input layer", "Input", "Filter", "Chan.", "Stride", "Pad", "Output", "Block")


def _table(*headers: str, title: str, padding: tuple[int, int, int, int] = (0, 1, 0, 0)) -> Any:
    from rich import box
    from rich.table import Table

    table = Table(
        title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
        padding=padding,
    )
    for header in headers:
        table.add_column(header, overflow="fold")
    return table


def print_overview(data: dict[str, Any], console: Any) -> None:
    """Summary lines, one row per block, one row per branch, the notes, and where to look next."""
    from rich.text import Text

    teacher, student, params = data["teacher"], data["student"], data["parameters"]
    n = len(teacher["blocks"])

    def say(text: str, style: str = "") -> None:
        console.print(Text(text, style=style))  # Text: user strings are never read as markup

    say(f"SFTN {data['name']} ({data['source']})", "bold")
    say(f"teacher {teacher['model']}, student {student['model']}")
    count = f"{n - 1} branch{'es' if n > 2 else ''}"
    say(f"input {_shape(data['input_size'])}, {data['num_classes']} classes; {n} blocks, {count}")
    say(
        f"parameters: teacher {format_count(params['teacher'])}, branches {format_count(params['branches'])}, "
        f"total {format_count(params['total'])}"
    )

    def end(net: dict[str, Any], who: str) -> str:
        return f"{who} end (auto)" if net["auto"] else f"{who} end"

    blocks = _table(
        "Block", end(teacher, "Teacher"), "Layout", "Params", end(student, "Student"), "Layout", "Params",
        title="Blocks",
    )
    for t, s in zip(teacher["blocks"], student["blocks"]):
        blocks.add_row(
            str(t["index"]), t["end"], t["layout"], format_count(t["parameters"]),
            s["end"], s["layout"], format_count(s["parameters"]),
        )
    blocks.add_row(
        "head", "-> z_T", "", format_count(teacher["head_parameters"]),
        "-> z_S", "", format_count(student["head_parameters"]),
    )
    console.print()
    console.print(blocks)

    branches = _table(
        "Branch", "Transform T^i", "Shapes", "Then", "Params", title="Branches (branch i starts at B_T^i)"
    )
    for b in data["branches"]:
        t = b["transform"]
        first, last = b["student_blocks"][0], b["student_blocks"][-1]
        students = f"B_S^{first}" if first == last else f"B_S^{first}..{last}"
        branches.add_row(
            str(b["index"]), t["layer"], f"{_shape(t['source_shape'])} -> {_shape(t['target_shape'])}",
            f"{students}, head", format_count(b["parameters"]),
        )
    console.print()
    console.print(branches)
    console.print()

    if data["equivalence_error"] is not None:
        say(f"teacher blocks in sequence vs original: max abs diff {data['equivalence_error']:.2g}")
    for note in data["notes"]:
        say(f"note: {note}")
    say(f"compiled in {data['compile_seconds']:.2f} s")
    say("more: --layers (every layer), --graph FILE (.svg/.png), --json", "dim")


def print_layers(tables: list[PartTable], console: Any) -> None:
    """The paper's table-12 listing (its columns: ``splicer.emission.layers.COLUMNS``): every layer of
    the teacher and of each branch, one space between columns. Shapes and numbers keep their
    width; when the console is narrow the two name columns share what is left and wrap."""
    assert len(_LAYER_HEADERS) == len(COLUMNS)
    for part in tables:
        cells = [list(dataclasses.astuple(row)) for row in part.rows]
        widths = [max([len(header)] + [len(row[c]) for row in cells]) for c, header in enumerate(_LAYER_HEADERS)]
        names = max(20, console.width - sum(widths[2:]) - (len(widths) - 1))  # room for Layer and Input layer
        if widths[0] + widths[1] > names:
            widths[0] = min(widths[0], max(10, names // 2))
            widths[1] = max(10, names - widths[0])
        table = _table(*_LAYER_HEADERS, title=part.title, padding=(0, 0, 0, 0))  # the box's divider is the space
        for column, width in zip(table.columns, widths):
            column.width = width
        for row in cells:
            table.add_row(*row)
        console.print()
        console.print(table)
