"""``branch_student:``: the SFTN's branches are built from another network than the student
distilled in stage 2 (paper table 9)."""

from __future__ import annotations

from splicer.assembly.build import build_student, compile_spec
from splicer.emission.layers import layer_tables
from splicer.emission.report import markdown_report, summary_lines
from splicer.spec import spec_from_dict
from tests.conftest import toy_spec

BRANCH_NET = {"model": "cifar:resnet8", "kwargs": {"widths": [4, 4, 8, 16]}, "blocks": ["layer1", "layer2", "layer3"]}


def _branch_listing(spec_dict: dict) -> list[list[tuple[str, str, str, str]]]:
    """Per branch: (layer kind, channels, output shape, block) of every layer, from the layer tables."""
    tables = layer_tables(compile_spec(spec_from_dict(spec_dict)))[1:]
    return [[(row.layer.rsplit("-", 1)[0], row.channels, row.output_shape, row.block) for row in t.rows] for t in tables]


def test_branches_are_the_branch_students_blocks_and_stage_2_keeps_the_student():
    with_branch = toy_spec(branch_student=BRANCH_NET)
    # Independent reference: an SFTN whose student *is* the branch network.
    reference = toy_spec(student=BRANCH_NET)
    listing = _branch_listing(with_branch)
    assert listing == _branch_listing(reference)
    assert listing != _branch_listing(toy_spec())  # not the toy student's blocks
    convs = [row for branch in listing for row in branch if row[0] == "Conv2d" and row[3].startswith("B_S")]
    assert convs and {row[2].split("x")[0] for row in convs} <= {"8", "16"}  # resnet8 widths 8, 16 after T^i

    spec = spec_from_dict(with_branch)
    student = build_student(spec)  # stage 2 distils the student, not the branch network
    widths = [m.out_channels for m in student.modules() if type(m).__name__ == "Conv2d"]
    assert max(widths) == 16 and spec.student.kwargs == {"width": 4}


def test_reports_say_which_network_is_which():
    result = compile_spec(spec_from_dict(toy_spec(branch_student=BRANCH_NET)))
    head = summary_lines(result)[0]
    assert "branch student cifar:resnet8" in head and "distilled student python:tests.toy_nets:tiny_resnet" in head
    assert "Student branch 1 (cifar:resnet8)" in markdown_report(result)
    assert "spec section `branch_student`" in markdown_report(result)
    resolved = result.resolved_spec()
    assert resolved.branch_student is not None and resolved.branch_student.blocks == ["layer1", "layer2", "layer3"]


def test_default_branch_student_is_the_student():
    spec = spec_from_dict(toy_spec())
    assert spec.branch_student is None and spec.branch_network is spec.student
    assert "student python:tests.toy_nets:tiny_resnet (branches and distilled student)" in summary_lines(
        compile_spec(spec)
    )[0]
