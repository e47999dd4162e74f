"""`splicer export`: each format, loaded in a fresh process as a user would, gives splicer's logits.

Four one-epoch runs on the synthetic task are shared by the module: an SFTN (torchvision
teacher, timm branches) and a student distilled from it, a standard teacher from the CIFAR
zoo and a student trained alone from a `python:` factory. The exported files are checked by
tests/exported_logits.py in a process where splicer cannot be imported (the CIFAR zoo's
factory is splicer's own, so that one case runs in a plain process).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from splicer.cli.main import app
from splicer.data import build_data
from splicer.data.augment import Normalize
from splicer.spec import spec_from_dict
from splicer.training.checkpoint import load_checkpoint, network_from_checkpoint
from splicer.training.stage1 import train_teacher
from splicer.training.stage2 import distill, train_student
from tests.conftest import REPO
from tests.standalone import run_without_splicer

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]
runner = CliRunner()
CHECKER = REPO / "tests" / "exported_logits.py"
TOLERANCE = 1e-4
DATA = {"dataset": "synthetic", "synthetic_train": 64, "synthetic_test": 32}
TRAIN = {"epochs": 1, "batch_size": 32, "lr": 0.05, "device": "cpu"}
LIBRARIES = {
    "name": "libraries",
    "num_classes": 10,
    "input_size": [3, 32, 32],
    "teacher": {"model": "torchvision:resnet18", "blocks": ["layer1", "layer2", "layer3"]},
    "student": {"model": "timm:test_resnet", "blocks": ["layer1", "layer2", "layer4"]},
    "data": DATA,
    "train": TRAIN,
}
OWN = {
    "name": "own",
    "num_classes": 10,
    "input_size": [3, 16, 16],
    "teacher": {"model": "cifar:resnet8"},
    "student": {
        "model": "python:tests.toy_nets:tiny_resnet",
        "kwargs": {"width": 4},
        "blocks": ["layer1", "layer2", "layer3"],
    },
    "data": DATA,
    "train": TRAIN,
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    libraries, own = (spec_from_dict(spec, source="test") for spec in (LIBRARIES, OWN))
    train_teacher(libraries, out=root / "sftn", quiet=True)
    distill(libraries, root / "sftn", "kd", out=root / "kd", quiet=True)
    train_teacher(own, standard=True, out=root / "standard", quiet=True)
    train_student(own, out=root / "student", quiet=True)
    return {name: root / name for name in ("sftn", "kd", "standard", "student")}


def export(*args: str) -> str:
    result = runner.invoke(app, ["export", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result.output


def expected_logits(run: Path, folder: Path) -> tuple[Path, Path]:
    """Images in [0, 1] and the logits splicer's network (best.pt) gives on them after the data pipeline's
    normalisation, saved as files in ``folder``."""
    path = run / "best.pt"
    checkpoint = load_checkpoint(path)
    spec = spec_from_dict(checkpoint["spec"], source="test")
    data = build_data(spec.data, spec.input_size, spec.num_classes, 1, torch.device("cpu"), spec.train.seed)
    pixels = torch.randint(0, 256, (5, *spec.input_size), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    normalize = Normalize(data.mean, data.std, torch.device("cpu"))
    with torch.no_grad():
        logits = network_from_checkpoint(checkpoint, path).eval()(normalize(pixels))
    images, expected = folder / f"{run.name}.images.pt", folder / f"{run.name}.expected.pt"
    torch.save(pixels.float() / 255, images)
    torch.save(logits, expected)
    return images, expected


@pytest.fixture(scope="module")
def exported(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The file of each case: run and format (one at the default --out, one of the last checkpoint, one normalised)."""
    out = tmp_path_factory.mktemp("exported")
    export(runs["sftn"], "--format", "state_dict")
    export(runs["kd"], "--format", "pt2", "--normalize", "--out", out / "kd.pt2")
    export(runs["kd"], "--format", "safetensors", "--which", "last", "--out", out / "kd.safetensors")
    export(runs["kd"], "--format", "onnx", "--out", out / "kd.onnx")
    export(runs["student"], "--format", "safetensors", "--out", out / "student.safetensors")
    export(runs["standard"], "--format", "state_dict", "--out", out / "standard.pth")
    return {
        "sftn.state_dict": runs["sftn"] / "export" / "best.pth",
        "kd.pt2": out / "kd.pt2",
        "kd.safetensors": out / "kd.safetensors",
        "kd.onnx": out / "kd.onnx",
        "student.safetensors": out / "student.safetensors",
        "standard.state_dict": out / "standard.pth",
    }


def check_in_fresh_process(cases: list[dict[str, str]], folder: Path, guard: bool) -> dict[str, float]:
    manifest = folder / f"cases-{'guarded' if guard else 'plain'}.json"
    manifest.write_text(json.dumps(cases))
    if guard:
        done = run_without_splicer(CHECKER, str(manifest), cwd=REPO)
    else:
        done = subprocess.run(
            [sys.executable, str(CHECKER), str(manifest)], cwd=REPO, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_every_format_gives_splicers_logits_in_a_fresh_process(
    runs: dict[str, Path], exported: dict[str, Path], tmp_path: Path
):
    # the last checkpoint of a one-epoch run is its best one: best.pt's logits hold for kd's --which last too
    expected = {name: expected_logits(run, tmp_path) for name, run in runs.items()}
    cases = {}
    for key, file in exported.items():
        images, logits = expected[key.split(".")[0]]
        cases[key] = {"file": str(file), "images": str(images), "expected": str(logits)}
    guarded = [case for key, case in cases.items() if key != "standard.state_dict"]
    differences = check_in_fresh_process(guarded, tmp_path, guard=True)
    differences |= check_in_fresh_process([cases["standard.state_dict"]], tmp_path, guard=False)
    assert set(differences) == {str(file) for file in exported.values()}
    assert all(difference <= TOLERANCE for difference in differences.values()), differences


def sidecar(file: Path) -> dict:
    return json.loads(file.with_name(file.name + ".json").read_text())


def test_sidecars_describe_the_network_its_input_and_its_run(runs: dict[str, Path], exported: dict[str, Path]):
    teacher = sidecar(exported["sftn.state_dict"])
    summary = json.loads((runs["sftn"] / "summary.json").read_text())
    checkpoint = load_checkpoint(runs["sftn"] / "best.pt")
    assert teacher["format"] == "state_dict" and teacher["network"] == "teacher"
    assert teacher["model"]["create"] == (
        "import torchvision.models; model = torchvision.models.get_model('resnet18', weights=None, num_classes=10)"
    )
    assert teacher["input_size"] == [3, 32, 32] and teacher["normalization_built_in"] is False
    assert teacher["mean"] == summary["data"]["mean"] and teacher["std"] == summary["data"]["std"]
    assert teacher["classes"] == [f"pattern{k}" for k in range(10)]
    assert teacher["accuracy"] == {"eval_split": "test", "final": summary["final"], "best": summary["best"]}
    assert teacher["checkpoint"] == {"which": "best", "epoch": 1, "kind": "sftn", "method": None, "teacher_kind": None}
    assert teacher["spec"] == checkpoint["spec"]
    assert teacher["spec"]["teacher"]["blocks"] == ["layer1", "layer2", "layer3"]
    assert teacher["splicer_version"] and teacher["check"]["max_abs_diff"] <= TOLERANCE
    onnx = sidecar(exported["kd.onnx"])
    assert onnx["network"] == "student" and onnx["checkpoint"]["method"] == "kd"
    assert isinstance(onnx["onnx"]["opset"], int) and onnx["onnx"]["external_data"] is None
    assert sidecar(exported["kd.pt2"])["normalization_built_in"] is True
    cifar = sidecar(exported["standard.state_dict"])["model"]["create"]
    assert cifar == "from splicer.models.cifar import CIFAR_MODELS; model = CIFAR_MODELS['resnet8'](num_classes=10)"
    assert not list(exported["kd.onnx"].parent.glob(".*partial")), "the scratch folder is removed"


def test_a_run_without_summary_takes_the_data_facts_from_the_data_set(runs: dict[str, Path], tmp_path: Path):
    copy = shutil.copytree(runs["student"], tmp_path / "interrupted", ignore=shutil.ignore_patterns("export"))
    (copy / "summary.json").unlink()
    export(copy, "--format", "state_dict", "--which", "last")
    written = sidecar(copy / "export" / "last.pth")
    facts = json.loads((runs["student"] / "summary.json").read_text())["data"]
    assert written["accuracy"] is None
    assert written["mean"] == pytest.approx(facts["mean"]) and written["classes"] == facts["classes"]


def test_the_weights_training_started_from_are_not_needed(runs: dict[str, Path], tmp_path: Path):
    """A spec's `checkpoint:` (initial weights) that is not where the run trained still exports: trained weights
    replace it."""
    copy = shutil.copytree(runs["student"], tmp_path / "moved", ignore=shutil.ignore_patterns("export"))
    state = torch.load(copy / "best.pt", weights_only=True)
    state["spec"]["student"]["checkpoint"] = str(tmp_path / "gone.pth")
    torch.save(state, copy / "best.pt")
    export(copy, "--format", "state_dict")
    assert sidecar(copy / "export" / "best.pth")["spec"]["student"]["checkpoint"] == str(tmp_path / "gone.pth")


def test_user_errors_are_refused_with_what_to_do(
    runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    def refused(*args: object) -> str:
        result = runner.invoke(app, ["export", *map(str, args)])
        assert result.exit_code == 2, result.output
        return " ".join(result.output.split())

    student = runs["student"]
    assert "valid: state_dict, safetensors, onnx, pt2" in refused(student, "--format", "tflite")
    assert "a checkpoint file, not a run folder" in refused(student / "best.pt", "--format", "pt2")
    assert "no such folder" in refused(tmp_path / "nowhere", "--format", "pt2")
    (tmp_path / "experiment" / "seed0").mkdir(parents=True)
    assert "experiment folder of `splicer run`" in refused(tmp_path / "experiment", "--format", "pt2")
    assert "--which 'first'" in refused(student, "--format", "pt2", "--which", "first")
    assert "holds the model's weights alone" in refused(student, "--format", "safetensors", "--normalize")
    target = tmp_path / "student.pth"
    export(student, "--format", "state_dict", "--out", target)
    assert "pass --force to overwrite" in refused(student, "--format", "state_dict", "--out", target)
    export(student, "--format", "state_dict", "--out", target, "--force")
    assert "this is a folder" in refused(student, "--format", "state_dict", "--out", tmp_path)
    find_spec = importlib.util.find_spec
    without_onnxruntime = lambda name, *rest: None if name == "onnxruntime" else find_spec(name, *rest)  # noqa: E731
    monkeypatch.setattr(importlib.util, "find_spec", without_onnxruntime)
    assert "onnxruntime, which is not installed: pip install 'splicer[export]'" in refused(student, "--format", "onnx")


def test_the_predictor_example_runs_on_an_exported_program(runs: dict[str, Path], tmp_path: Path):
    """examples/05_predict_without_splicer.py takes `splicer export --format pt2` (here without --normalize:
    the example normalises with the sidecar's mean and std) and names splicer's top class with its probability."""
    from PIL import Image

    program = tmp_path / "student.pt2"
    export(runs["student"], "--format", "pt2", "--out", program)
    pixels = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    files = [tmp_path / f"image{k}.png" for k in range(2)]
    for image, file in zip(pixels, files):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(file)
    predictor = REPO / "examples" / "05_predict_without_splicer.py"
    done = run_without_splicer(predictor, str(program), *map(str, files), "--top", "1", cwd=tmp_path)
    info = sidecar(program)
    path = runs["student"] / "best.pt"
    with torch.no_grad():
        network = network_from_checkpoint(load_checkpoint(path), path).eval()
        probabilities = network(Normalize(info["mean"], info["std"], torch.device("cpu"))(pixels)).softmax(1)
    for row in probabilities:
        top = int(row.argmax())
        assert f"{info['classes'][top]} {row[top].item():.1%}" in done.stdout, done.stdout
