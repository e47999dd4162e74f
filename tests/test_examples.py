"""Every script in examples/ runs, as a user runs it, on small inputs; so none goes stale."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO
from tests.image_folders import write_colour_folder
from tests.standalone import run_without_splicer

EXAMPLES = REPO / "examples"


def run_example(name: str, *args: str, cwd: Path) -> str:
    """Run examples/<name> in a fresh process with this checkout's splicer; returns its stdout."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"{name} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_every_example_is_tested_and_linked_from_the_readme():
    scripts = sorted(p.name for p in EXAMPLES.glob("[0-9]*.py"))
    source = Path(__file__).read_text()
    readme = (REPO / "README.md").read_text()
    assert len(scripts) >= 6
    for name in scripts:
        assert f'"{name}"' in source, f"{name} is not run by a test"
        assert f"examples/{name}" in readme, f"{name} is not linked from README.md"


def test_python_api_on_the_vgg_pair(tmp_path):
    out = run_example("01_python_api.py", "--batch", "2", cwd=tmp_path)
    assert "vgg13_vgg8: 4 teacher blocks, 3 student branches" in out
    assert "branch 1: reads teacher feature (128, 16, 16), gives logits (2, 100)" in out
    assert "sftn.teacher(images) equals the SFTN's teacher logits" in out


def test_timm_pair_with_auto_blocks(tmp_path):
    out = run_example(
        "02_timm_auto_blocks.py", "--teacher", "timm:resnet18", "--student", "timm:mobilenetv3_small_050",
        "--size", "32", "--classes", "10", "--out", str(tmp_path / "build"), cwd=tmp_path,
    )
    assert "teacher timm:resnet18:" in out and re.search(r"layer4\s+512x1x1", out)
    assert "T^3: 1x1 conv: 256x2x2 -> 24x2x2" in out
    assert "blocks: auto chose" in out and (tmp_path / "build" / "report.md").is_file()


def test_own_model_with_chosen_block_ends(tmp_path):
    out = run_example("03_own_model.py", "--size", "16", "--out", str(tmp_path / "build"), cwd=tmp_path)
    assert "stage1.0" in out and "valid cut points" in out  # the inspect --all listing
    assert "T^1: 1x1 conv: 16x16x16 -> 8x16x16" in out and "max abs diff 0" in out
    assert (tmp_path / "build" / "sftn.py").is_file() and (tmp_path / "build" / "train_sftn.py").is_file()


@pytest.fixture(scope="module")
def distilled(tmp_path_factory) -> tuple[Path, Path, str]:
    """Example 4 run on a tiny generated image folder: (runs folder, data folder, stdout)."""
    root = tmp_path_factory.mktemp("example4")
    data = write_colour_folder(root / "images", classes=4, per_class=16, side=16)
    out = run_example(
        "04_train_and_distill.py", str(data), "--teacher", "cifar:resnet8", "--student", "cifar:resnet8",
        "--size", "16", "--epochs", "1", "--batch-size", "16", "--device", "cpu", "--out", str(root / "runs"), cwd=root,
    )
    return root / "runs", data, out


def test_train_both_teachers_and_distil(distilled):
    runs, _, out = distilled
    assert re.search(r"sftn\s+[\d.]+%\s+[\d.]+%", out) and re.search(r"standard\s+[\d.]+%\s+[\d.]+%", out)
    for run in ("teacher-sftn", "teacher-standard", "kd-from-sftn", "kd-from-standard"):
        assert (runs / run / "last.pt").is_file(), run


def test_exported_student_predicts_without_splicer(distilled, tmp_path):
    from splicer.data import build_data
    from splicer.spec import spec_from_dict
    from splicer.training.checkpoint import load_checkpoint, network_from_checkpoint

    runs, data, _ = distilled
    run_example("05_export_student.py", str(runs / "kd-from-sftn"), cwd=tmp_path)
    program = runs / "kd-from-sftn" / "export" / "student.pt2"  # the default: beside the run, not in the cwd
    assert program.is_file() and program.with_suffix(".json").is_file() and not list(tmp_path.iterdir())
    images = [data / "test" / "class0" / "000.png", data / "test" / "class3" / "001.png"]
    done = run_without_splicer(
        EXAMPLES / "05_predict_without_splicer.py", str(program), *map(str, images), "--top", "1", cwd=tmp_path
    )
    # The same images through splicer's own student and normalisation give the same top class and score.
    best = runs / "kd-from-sftn" / "best.pt"
    checkpoint = load_checkpoint(best)
    spec = spec_from_dict(checkpoint["spec"])
    student = network_from_checkpoint(checkpoint, best, spec).eval()
    bundle = build_data(spec.data, spec.input_size, spec.num_classes, 16, torch.device("cpu"), 0)
    batch = next(iter(bundle.eval))[0][[0, 13]]  # eval order: class folders, then files, sorted; 4 per class
    with torch.no_grad():
        probabilities = student(batch).softmax(1)
    for path, row in zip(images, probabilities):
        top = int(row.argmax())
        assert f"{path}: class{top} {row[top].item():.1%}" in done.stdout, done.stdout  # the path given, not a bare name
