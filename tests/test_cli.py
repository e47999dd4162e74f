"""The command line as a user runs it: outputs written, errors without tracebacks."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from splicer.cli.main import app
from tests.conftest import REPO, toy_spec

runner = CliRunner()


def test_build_writes_every_artifact(tmp_path):
    result = runner.invoke(app, ["build", str(REPO / "specs" / "vgg13_vgg8.yaml"), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "T^1: 1x1 conv: 128x16x16 -> 128x16x16" in result.output
    assert "parameters: teacher 9.46M" in result.output
    for name in ("sftn.py", "report.md", "branch_graph.dot", "branch_graph.mmd", "spec.resolved.yaml"):
        assert (tmp_path / name).is_file(), name
    report = (tmp_path / "report.md").read_text()
    assert "| Conv2d-36 | ReLU-13 | 128x16x16 | 1x1 | 128 | 1 | 0 | 128x16x16 | T^1 |" in report
    assert "```mermaid" in report
    dot = (tmp_path / "branch_graph.dot").read_text()
    assert dot.startswith('digraph "vgg13_vgg8"') and '"T_B1" -> "R1_T"' in dot


def test_bad_spec_is_one_message_and_exit_2(write_spec):
    spec = toy_spec()
    spec["teacher"]["blocks"] = ["layer1", "layr2", "layer3"]
    path = write_spec(spec)
    result = runner.invoke(app, ["build", str(path)])
    assert result.exit_code == 2
    assert "error: " in result.output and "'layr2'" in result.output and "layer2" in result.output
    assert "Traceback" not in result.output


def test_inspect_spec_prints_tables_and_graph():
    result = runner.invoke(app, ["inspect", str(REPO / "specs" / "vgg13_vgg8.yaml")])
    assert result.exit_code == 0, result.output
    assert "Conv2d-36" in result.output and "flowchart LR" in result.output


def test_inspect_model_lists_cut_points():
    result = runner.invoke(app, ["inspect", "python:tests.toy_nets:tiny_resnet", "--input-size", "3", "16", "16", "--all"])
    assert result.exit_code == 0, result.output
    assert "layer2" in result.output and "32x4x4" in result.output


def test_schema_is_json():
    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0
    assert json.loads(result.output)["title"] == "Spec"


def test_inspect_model_shows_each_cut_points_layout():
    """DeiT-distilled at 224: a 14x14 patch grid after two prefix tokens (class and distillation)."""
    result = runner.invoke(
        app, ["inspect", "timm:deit_tiny_distilled_patch16_224", "--input-size", "3", "224", "224"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    assert "tokens 2+14x14 x192" in result.output
    assert "auto: blocks.2, blocks.5, blocks.8, norm (isotropic: equal groups by depth)" in result.output
