"""The build report: what was cut where, which transforms were chosen, and the layer tables."""

from __future__ import annotations

from torch import nn

from splicer.assembly.build import BuildResult
from splicer.emission.graph import branch_graph, to_mermaid
from splicer.emission.layers import COLUMNS, PartTable, layer_tables
from splicer.spec import Spec


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def _students(spec: Spec) -> str:
    """Which network the branches are built from and which one stage 2 distils."""
    if spec.branch_student is None:
        return f"student {spec.student.model} (branches and distilled student)"
    return f"branch student {spec.branch_student.model}, distilled student {spec.student.model}"


def summary_lines(result: BuildResult) -> list[str]:
    """The few lines ``splicer build`` prints: blocks, transforms, parameters, time."""
    spec, sftn = result.spec, result.sftn
    lines = [f"SFTN {spec.name}: teacher {spec.teacher.model}, {_students(spec)}, {len(sftn.teacher.blocks)} blocks"]
    for plan in (result.teacher, result.student):
        ends = ", ".join(f"{label} ({_shape(shape)})" for label, shape in zip(plan.block_labels, plan.block_shapes))
        lines.append(f"  {plan.role.replace('_', ' ')} block ends{' (auto)' if plan.auto else ''}: {ends}")
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
    out += [
        f"Student branches: `{spec.branch_network.model}` (spec section `{spec.branch_role}`); "
        f"distilled student (stage 2): `{spec.student.model}` (spec section `student`).",
        "",
    ]
    out += ["## Summary", "", "```", *summary_lines(result), "```", ""]
    out += ["## Blocks", "", "| Block | Teacher end | Teacher shape | Branch student end | Branch student shape |", "|---|---|---|---|---|"]
    for k, (t_label, t_shape, s_label, s_shape) in enumerate(
        zip(result.teacher.block_labels, result.teacher.block_shapes, result.student.block_labels, result.student.block_shapes),
        start=1,
    ):
        out.append(f"| {k} | `{t_label}` | {_shape(t_shape)} | `{s_label}` | {_shape(s_shape)} |")
    out += ["", "## Transforms", "", "| Branch | From teacher | To student | Layer | Parameters |", "|---|---|---|---|---|"]
    for i, (plan, branch) in enumerate(zip(result.transforms, sftn.branches), start=1):
        out.append(
            f"| {i} | B_T^{i} {_shape(plan.source)} | B_S^{i + 1} {_shape(plan.target)} | {plan.describe()} | "
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
