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
    for name in ("sftn.py", "train_sftn.py", "report.md", "branch_graph.dot", "branch_graph.mmd", "branch_graph.svg", "branch_graph.png"):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "spec.resolved.yaml").is_file()
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


def _inspect(*args: str, columns: int = 80):
    result = runner.invoke(app, ["inspect", *args], env={"COLUMNS": str(columns)})
    assert result.exit_code == 0, result.output
    return result.output


def test_inspect_spec_is_a_short_overview_that_fits_80_columns():
    spec = str(REPO / "specs" / "vgg13_vgg8.yaml")
    overview = _inspect(spec).splitlines()
    layers = _inspect(spec, "--layers").splitlines()
    assert max(map(len, overview)) <= 80 and max(map(len, layers)) <= 80
    assert len(overview) < 40 and len(layers) > 3 * len(overview)
    text = "\n".join(overview)
    assert "cifar:vgg13" in text and "parameters: teacher 9.46M" in text and "Conv2d-36" not in text
    block_rows = [line for line in overview if line.split()[:2] in (["1", "stage2"], ["4", "stage5"])]
    assert len(block_rows) == 2 and "128x16x16" in block_rows[0]  # one line per block
    branch_rows = [line for line in overview if "1x1 conv" in line]
    assert len(branch_rows) == 3 and "B_S^2..4, head" in branch_rows[0]  # one line per branch
    assert any(line.split()[:2] == ["Conv2d-36", "ReLU-13"] and line.split()[-1] == "T^1" for line in layers)


def test_inspect_follows_the_terminal_width(write_spec):
    spec = str(write_spec(toy_spec()))
    assert max(map(len, _inspect(spec, columns=50).splitlines())) <= 50
    assert max(map(len, _inspect(spec, "--layers", columns=60).splitlines())) <= 60
    wide = _inspect(spec, "--layers", columns=140).splitlines()
    assert any(line.split()[:4] == ["add-10", "BatchNorm2d-8,", "Identity-9", "8x16x16"] for line in wide)


def test_inspect_json_for_tools(write_spec):
    data = json.loads(_inspect(str(write_spec(toy_spec())), "--json", "--layers"))
    assert data["format"] == "splicer.inspect/1"
    assert {"name", "source", "input_size", "num_classes", "teacher", "student", "branches", "parameters",
            "equivalence_error", "notes", "compile_seconds", "layers"} <= set(data)
    assert [b["end"] for b in data["teacher"]["blocks"]] == ["layer1", "layer2", "layer3"]
    assert [b["student_blocks"] for b in data["branches"]] == [[2, 3], [3]]
    assert data["branches"][0]["transform"]["source_shape"] == data["teacher"]["blocks"][0]["shape"]
    params = data["parameters"]
    assert params["total"] == params["teacher"] + params["branches"]
    assert params["teacher"] == sum(b["parameters"] for b in data["teacher"]["blocks"]) + data["teacher"]["head_parameters"]
    assert data["layers"][0]["columns"][0] == "Layer" and len(data["layers"]) == 3


def test_inspect_graph_writes_the_file(write_spec, tmp_path):
    spec = str(write_spec(toy_spec()))
    for name in ("g.png", "g.mmd"):
        output = _inspect(spec, "--graph", str(tmp_path / name))
        assert f"wrote {tmp_path / name}" in output and (tmp_path / name).stat().st_size > 0
    assert (tmp_path / "g.mmd").read_text().startswith("flowchart LR")
    bad = runner.invoke(app, ["inspect", spec, "--graph", str(tmp_path / "g.pdf")])
    assert bad.exit_code == 2 and "unknown format .pdf" in bad.output and not (tmp_path / "g.pdf").exists()


def test_inspect_model_lists_cut_points():
    result = runner.invoke(app, ["inspect", "python:tests.toy_nets:tiny_resnet", "--input-size", "3", "16", "16", "--all"])
    assert result.exit_code == 0, result.output
    assert "layer2" in result.output and "32x4x4" in result.output


def test_schema_is_json():
    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0
    assert json.loads(result.output)["title"] == "Spec"


def test_spec_flags_on_a_model_reference_are_one_message():
    result = runner.invoke(app, ["inspect", "python:tests.toy_nets:tiny_resnet", "--json"])
    assert result.exit_code == 2 and "need a spec file" in result.output and "Traceback" not in result.output
def test_inspect_model_shows_each_cut_points_layout():
    """DeiT-distilled at 224: a 14x14 patch grid after two prefix tokens (class and distillation)."""
    result = runner.invoke(
        app, ["inspect", "timm:deit_tiny_distilled_patch16_224", "--input-size", "3", "224", "224"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    assert "tokens 2+14x14 x192" in result.output
    assert "auto: blocks.2, blocks.5, blocks.8, norm (isotropic: equal groups by depth)" in result.output
