"""The build report: what was cut where, which transforms were chosen, and the layer tables."""

from __future__ import annotations

from torch import nn

from splicer.assembly.build import BuildResult
from splicer.emission.graph import branch_graph, to_mermaid
from splicer.emission.layers import COLUMNS, PartTable, layer_tables
from splicer.trace.cuts import CutPoint


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def layout_text(cut: CutPoint) -> str:
    """A block end's layout (``tokens 1+14x14 x384``), or its bare shape when it has none."""
    return cut.layout.describe() if cut.layout is not None else _shape(cut.shape)


def summary_lines(result: BuildResult) -> list[str]:
    """The few lines ``splicer build`` prints: blocks, transforms, parameters, time."""
    spec, sftn = result.spec, result.sftn
    lines = [f"SFTN {spec.name}: teacher {spec.teacher.model}, student {spec.student.model}, {len(sftn.teacher.blocks)} blocks"]
    for plan in (result.teacher, result.student):
        ends = ", ".join(f"{c.label} ({layout_text(c)})" for c in plan.block_ends)
        lines.append(f"  {plan.role} block ends{' (auto)' if plan.auto else ''}: {ends}")
    for i, plan in enumerate(result.transforms, start=1):
        lines.append(f"  T^{i}: {plan.describe()}")
    branch_params = sum(count_parameters(b) for b in sftn.branches)
    lines.append(
        f"  parameters: teacher {count_parameters(sftn.teacher) / 1e6:.2f}M, branches {branch_params / 1e6:.2f}M, "
        f"total {count_parameters(sftn) / 1e6:.2f}M"
    )
    if result.equivalence_error is not None:
        lines.append(f"  teacher blocks in sequence vs original: max abs diff {result.equivalence_error:.2g}")
    lines += [f"  note: {note}" for note in result.notes]
    lines.append(f"  compiled in {result.seconds:.2f} s")
    return lines


def markdown_table(table: PartTable) -> str:
    head = "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n"
    rows = "".join(
        "| "
        + " | ".join(
            [r.layer, r.input_layer, r.input_shape, r.filter_size, r.channels, r.stride, r.padding, r.output_shape, r.block]
        )
        + " |\n"
        for r in table.rows
    )
    return head + rows


def markdown_report(result: BuildResult, tables: list[PartTable] | None = None) -> str:
    """The whole report as markdown: summary, transforms, branch graph, layer tables."""
    spec, sftn = result.spec, result.sftn
    tables = tables if tables is not None else layer_tables(result)
    out = [f"# SFTN `{spec.name}`", "", f"Compiled from `{result.source}` by splicer.", ""]
    out += ["## Summary", "", "```", *summary_lines(result), "```", ""]
    out += [
        "## Blocks",
        "",
        "| Block | Teacher end | Teacher shape | Teacher layout | Student end | Student shape | Student layout |",
        "|---|---|---|---|---|---|---|",
    ]
    for k, (t_end, s_end) in enumerate(zip(result.teacher.block_ends, result.student.block_ends), start=1):
        out.append(
            f"| {k} | `{t_end.label}` | {_shape(t_end.shape)} | {layout_text(t_end)} | `{s_end.label}` | "
            f"{_shape(s_end.shape)} | {layout_text(s_end)} |"
        )
    out += [
        "",
        "## Transforms",
        "",
        "Each transform views the teacher feature as a map (prefix tokens dropped and the patch grid restored, or "
        "channels-last permuted), applies the paper's conv + BN + ReLU, and puts the result in the layout the student "
        "block expects (flattened to tokens after learned prefix tokens, or permuted channels-last).",
        "",
        "| Branch | From teacher | To student | Transform | Parameters |",
        "|---|---|---|---|---|",
    ]
    for i, (plan, branch, t_end, s_end) in enumerate(
        zip(result.transforms, sftn.branches, result.teacher.block_ends, result.student.block_ends), start=1
    ):
        out.append(
            f"| {i} | B_T^{i} {layout_text(t_end)} | B_S^{i + 1} {layout_text(s_end)} | {plan.describe()} | "
            f"{count_parameters(branch.transform):,} |"
        )
    out += ["", "## Parameters", "", "| Part | Parameters |", "|---|---|"]
    out.append(f"| teacher | {count_parameters(sftn.teacher):,} |")
    for i, branch in enumerate(sftn.branches, start=1):
        out.append(f"| branch {i} | {count_parameters(branch):,} |")
    out += ["", "## Branch graph", "", "```mermaid", to_mermaid(branch_graph(result)).rstrip(), "```", ""]
    out += ["## Layers", ""]
    for table in tables:
        out += [f"### {table.title}", "", markdown_table(table)]
    return "\n".join(out)
