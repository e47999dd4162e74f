"""The build report: what was cut where, which transforms were chosen, and the layer tables.

:func:`summary_data` is the one structured summary (``splicer inspect --json`` prints it, the
terminal overview is drawn from it); its keys are documented there and only ever added to.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from splicer.assembly.build import BuildResult
from splicer.emission.graph import branch_graph, count_parameters, to_mermaid
from splicer.emission.layers import COLUMNS, PartTable, layer_tables
from splicer.spec import Spec
from splicer.trace.cuts import CutPoint


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def _students(spec: Spec) -> str:
    """Which network the branches are built from and which one stage 2 distils."""
    if spec.branch_student is None:
        return f"student {spec.student.model} (branches and distilled student)"
    return f"branch student {spec.branch_student.model}, distilled student {spec.student.model}"


def layout_text(cut: CutPoint) -> str:
    """A block end's layout (``tokens 1+14x14 x384``), or its bare shape when it has none."""
    return cut.layout.describe() if cut.layout is not None else _shape(cut.shape)


def summary_lines(result: BuildResult) -> list[str]:
    """The few lines ``splicer build`` prints: blocks, transforms, parameters, time."""
    spec, sftn = result.spec, result.sftn
    lines = [f"SFTN {spec.name}: teacher {spec.teacher.model}, {_students(spec)}, {len(sftn.teacher.blocks)} blocks"]
    for plan in (result.teacher, result.student):
        ends = ", ".join(f"{c.label} ({layout_text(c)})" for c in plan.block_ends)
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


SUMMARY_FORMAT = "splicer.inspect/1"


def summary_data(result: BuildResult, tables: list[PartTable] | None = None) -> dict[str, Any]:
    """The SFTN summary as plain data (JSON-ready). Keys:

    ``format`` (``splicer.inspect/1``), ``name``, ``source``, ``input_size``, ``num_classes``;
    ``teacher`` and ``student``: ``model``, ``auto`` (blocks chosen by ``blocks: auto``),
    ``blocks`` (per block: ``index`` from 1, ``end`` (the cut point), ``shape`` (per sample),
    ``layout`` (e.g. ``NCHW 64x8x8`` or ``tokens 1+14x14 x384``), ``parameters``), ``head_parameters``, ``parameters`` (the whole network; for the student,
    the plain student outside the SFTN); ``branches``: per branch ``index`` i, ``from_block``
    (teacher block i), ``transform`` (``layer``, ``description``, ``source_shape``,
    ``target_shape``, ``parameters``), ``student_blocks`` (indices i+1..N), ``parameters`` (the
    whole branch: transform, student blocks, head); ``parameters``: ``teacher``, ``branches``,
    ``total`` (of the SFTN); ``equivalence_error`` (max abs difference of the teacher's blocks in
    sequence against the original model, or null when not checked); ``notes``;
    ``compile_seconds``; with ``tables`` also ``layers``: per part ``title``, ``columns``, ``rows``.
    """
    spec, sftn = result.spec, result.sftn
    n = len(sftn.teacher.blocks)

    def network(plan: Any, model: str, blocks: list[Any], head: Any, whole: Any) -> dict[str, Any]:
        return {
            "model": model,
            "auto": plan.auto,
            "blocks": [
                {
                    "index": k,
                    "end": cut.label,
                    "shape": list(cut.shape),
                    "layout": layout_text(cut),
                    "parameters": count_parameters(block),
                }
                for k, (cut, block) in enumerate(zip(plan.block_ends, blocks), start=1)
            ],
            "head_parameters": count_parameters(head),
            "parameters": count_parameters(whole),
        }

    branches = []
    for i, (plan, branch) in enumerate(zip(result.transforms, sftn.branches), start=1):
        branches.append(
            {
                "index": i,
                "from_block": i,
                "transform": {
                    "layer": plan.layer(),
                    "description": plan.describe(),
                    "source_shape": list(plan.source),
                    "target_shape": list(plan.target),
                    "parameters": count_parameters(branch.transform),
                },
                "student_blocks": list(range(i + 1, n + 1)),
                "parameters": count_parameters(branch),
            }
        )
    data: dict[str, Any] = {
        "format": SUMMARY_FORMAT,
        "name": spec.name,
        "source": str(result.source),
        "input_size": list(spec.input_size),
        "num_classes": spec.num_classes,
        "teacher": network(
            result.teacher, spec.teacher.model, list(sftn.teacher.blocks), sftn.teacher.head, sftn.teacher
        ),
        "student": network(
            result.student, spec.student.model, result.student.parts[:-1], result.student.parts[-1], result.student.model
        ),
        "branches": branches,
        "parameters": {
            "teacher": count_parameters(sftn.teacher),
            "branches": sum(count_parameters(b) for b in sftn.branches),
            "total": count_parameters(sftn),
        },
        "equivalence_error": result.equivalence_error,
        "notes": list(result.notes),
        "compile_seconds": round(result.seconds, 3),
    }
    if tables is not None:
        data["layers"] = [
            {"title": t.title, "columns": list(COLUMNS), "rows": [list(dataclasses.astuple(row)) for row in t.rows]} for t in tables
        ]
    return data


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
    out += [
        "## Blocks",
        "",
        "| Block | Teacher end | Teacher shape | Teacher layout | Branch student end | Branch student shape | Branch student layout |",
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
    out += ["", "## Branch graph", "", "![branch graph](branch_graph.svg)", ""]  # written next to this report
    out += ["```mermaid", to_mermaid(branch_graph(result)).rstrip(), "```", ""]
    out += ["## Layers", ""]
    for table in tables:
        out += [f"### {table.title}", "", markdown_table(table)]
    return "\n".join(out)
