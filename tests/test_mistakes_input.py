"""Mistakes in what a user types or names, across every command: each is refused with one clear
message (exit status 2, no traceback, at most 10 lines, the culprit named) before anything runs,
and leaves every file of the working folder as it was.

The table is the test: add a mistake as one ``Mistake`` row. ``{name}`` files are written by
:func:`_working_folder`; the harness is in ``tests/mistakes.py``.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml

from tests.conftest import toy_spec
from tests.mistakes import REPO, assert_clear_refusal, folder_hashes, run_cli, run_subprocess

pytestmark = pytest.mark.usefixtures("one_thread")

TOY = "python:tests.toy_nets:tiny_resnet"


def _yaml(spec: dict) -> str:
    return yaml.safe_dump(spec, sort_keys=False)


def _working_folder(root: Path) -> None:
    """Every file the mistakes below name: a good spec, and files of the wrong kind."""
    import torch

    (root / "spec.yaml").write_text(_yaml(toy_spec()))
    (root / "pickled.yaml").write_bytes(pickle.dumps({"name": "x"}, protocol=4))
    torch.save({"weight": torch.zeros(2)}, root / "teacher.pt")
    (root / "utf16.yaml").write_bytes("name: toy\n".encode("utf-16"))
    (root / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    (root / "folder.yaml").mkdir()
    (root / "empty.yaml").write_text("")
    (root / "list.yaml").write_text("- name: toy\n- num_classes: 10\n")
    (root / "scalar.yaml").write_text("spec.yaml\n")
    (root / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    (root / "two_data.yaml").write_text(
        _yaml(toy_spec(data={"dataset": "synthetic"})) + "data:\n  resize: 8\n"
    )
    nested = _yaml(toy_spec()).replace(f"  model: {TOY}\n", f"  model: {TOY}\n  model: cifar:resnet8\n", 1)
    (root / "two_models.yaml").write_text(nested)
    (root / "branch_count.yaml").write_text(
        _yaml(toy_spec(branch_student={"model": "cifar:resnet8", "blocks": ["layer2", "layer3"]}))
    )
    two_blocks = {"model": TOY, "kwargs": {"width": 4}, "blocks": ["layer2", "layer3"]}
    (root / "branch_vs_teacher.yaml").write_text(
        _yaml(toy_spec(student=two_blocks, branch_student={"model": "cifar:resnet8", "blocks": ["layer2", "layer3"]}))
    )
    auto = {"teacher": {"model": TOY, "kwargs": {"width": 8}}, "student": {"model": TOY, "kwargs": {"width": 4}}}
    (root / "student_vs_branch.yaml").write_text(
        _yaml(toy_spec(**auto, branch_student={"model": "cifar:resnet8", "blocks": ["layer2", "layer3"]}))
    )
    (root / "vit32.yaml").write_text(
        _yaml(toy_spec(input_size=[3, 32, 32], teacher={"model": "timm:vit_tiny_patch16_224"}))
    )
    (root / "source_case.yaml").write_text(_yaml(toy_spec(student={"model": "Cifar:resnet8"})))
    (root / "cifar_typo.yaml").write_text(_yaml(toy_spec(student={"model": "cifar:resnet9"})))
    (root / "no_module.yaml").write_text(_yaml(toy_spec(student={"model": "python:no_such_module_xyz:make_net"})))
    (root / "text_checkpoint.yaml").write_text(
        _yaml(toy_spec(teacher={**toy_spec()["teacher"], "checkpoint": "spec.yaml"}))
    )
    (root / "method_typo.yaml").write_text(_yaml(toy_spec(distill={"methods": ["kd", "fitnet"]})))
    (root / "probe_two_data.yaml").write_text("num_classes: 10\ndata: {dataset: synthetic}\ndata: {resize: 8}\n")
    (root / "probe_list.yaml").write_text("- num_classes: 10\n")
    (root / "probe_typo.yaml").write_text("num_classes: 10\ndata: {dataset: synthetic, resise: 8}\n")
    (root / "not_a_run").mkdir()
    (root / "not_a_run" / "notes.txt").write_text("a folder without last.pt\n")


class Mistake(NamedTuple):
    name: str
    args: list[str]
    culprits: list[str]  # what the message must name: the file, field or value at fault


MISTAKES = [
    # build: the spec file is not a UTF-8 YAML mapping
    Mistake("build-pickle", ["build", "pickled.yaml"], ["pickled.yaml", "pickle", "expected a YAML spec"]),
    Mistake("build-torch-checkpoint", ["build", "teacher.pt"], ["teacher.pt", "PyTorch checkpoint"]),
    Mistake("build-utf16", ["build", "utf16.yaml"], ["utf16.yaml", "UTF-16"]),
    Mistake("build-latin1", ["build", "latin1.yaml"], ["latin1.yaml", "not UTF-8", "0xe9"]),
    Mistake("build-folder", ["build", "folder.yaml"], ["folder.yaml", "found a folder"]),
    Mistake("build-empty", ["build", "empty.yaml"], ["empty.yaml", "empty file"]),
    Mistake("build-list", ["build", "list.yaml"], ["list.yaml", "a list"]),
    Mistake("build-scalar", ["build", "scalar.yaml"], ["scalar.yaml", "a single value", "'spec.yaml'"]),
    Mistake("build-missing", ["build", "nope.yaml"], ["nope.yaml", "no such file"]),
    Mistake("build-image", ["build", "image.png"], ["image.png", "PNG image"]),
    # build: the spec's content
    Mistake("build-key-twice", ["build", "two_data.yaml"], ["two_data.yaml", "data: written twice", "lines"]),
    Mistake("build-nested-key-twice", ["build", "two_models.yaml"], ["two_models.yaml", "teacher.model: written twice"]),
    Mistake("build-branch-count", ["build", "branch_count.yaml"], ["branch_student.blocks", "2 blocks", "student has 3"]),
    Mistake(
        "build-branch-vs-teacher", ["build", "branch_vs_teacher.yaml"], ["branch_student.blocks", "teacher.blocks"]
    ),
    Mistake(
        "build-student-vs-branch", ["build", "student_vs_branch.yaml"], ["student.blocks", "3 blocks", "into 2"]
    ),
    Mistake(
        "build-vit-at-32",
        ["build", "vit32.yaml"],
        ["teacher.model", "timm:vit_tiny_patch16_224", "3x32x32", "3x224x224", "teacher.kwargs: {img_size: 32}"],
    ),
    Mistake("build-source-case", ["build", "source_case.yaml"], ["student.model", "'Cifar'", "did you mean 'cifar'"]),
    Mistake("build-cifar-typo", ["build", "cifar_typo.yaml"], ["student.model", "resnet9", "'resnet8'"]),
    Mistake("build-module-not-importable", ["build", "no_module.yaml"], ["no_such_module_xyz", "PYTHONPATH"]),
    Mistake(
        "build-text-as-checkpoint", ["build", "text_checkpoint.yaml"], ["spec.yaml", "state_dict file", "found text"]
    ),
    # inspect
    Mistake("inspect-pickle", ["inspect", "pickled.yaml"], ["pickled.yaml", "pickle"]),
    Mistake("inspect-utf16", ["inspect", "utf16.yaml"], ["utf16.yaml", "UTF-16"]),
    Mistake(
        "inspect-vit-at-32",
        ["inspect", "timm:vit_tiny_patch16_224", "--input-size", "3", "32", "32"],
        ["timm:vit_tiny_patch16_224", "3x32x32", "3x224x224", "--input-size 3 224 224"],
    ),
    Mistake("inspect-timm-typo", ["inspect", "timm:resnet_18"], ["resnet_18", "'resnet18'"]),
    Mistake("inspect-source-case", ["inspect", "Timm:resnet18"], ["'Timm'", "did you mean 'timm'"]),
    Mistake("inspect-graph-format", ["inspect", "spec.yaml", "--graph", "branches.pdf"], ["branches.pdf", ".svg"]),
    Mistake("inspect-folder", ["inspect", "not_a_run"], ["not_a_run", "expected a YAML spec", "found a folder"]),
    Mistake("inspect-module", ["inspect", "python:own_net_xyz:make_net"], ["own_net_xyz", "PYTHONPATH"]),
    # schema
    Mistake("schema-out-folder", ["schema", "--out", "not_a_run"], ["--out not_a_run", "is a folder"]),
    Mistake("schema-out-no-parent", ["schema", "--out", "nowhere/schema.json"], ["nowhere", "no folder"]),
    # train
    Mistake("train-checkpoint-as-spec", ["train", "teacher.pt"], ["teacher.pt", "PyTorch checkpoint"]),
    Mistake("train-key-twice", ["train", "two_data.yaml"], ["two_data.yaml", "data: written twice"]),
    Mistake("train-set-typo", ["train", "spec.yaml", "--set", "data.resise=16"], ["data.resise", "'resize'"]),
    Mistake("train-set-form", ["train", "spec.yaml", "--set", "data.resize"], ["--set 'data.resize'", "KEY.PATH=VALUE"]),
    Mistake("train-device", ["train", "spec.yaml", "--device", "gpu"], ["train.device", "'gpu'", "'cuda'"]),
    Mistake("train-branch-count", ["train", "branch_count.yaml"], ["branch_student.blocks"]),
    # distill
    Mistake(
        "distill-method-case", ["distill", "spec.yaml", "--teacher", "teacher.pt", "--method", "KD"], ["'KD'", "'kd'"]
    ),
    Mistake(
        "distill-baseline-as-method",
        ["distill", "spec.yaml", "--teacher", "teacher.pt", "--method", "dml"],
        ["--method dml", "splicer run SPEC --methods dml"],
    ),
    Mistake(
        "distill-spec-as-teacher",
        ["distill", "spec.yaml", "--teacher", "spec.yaml", "--method", "kd"],
        ["spec.yaml", "expected a splicer checkpoint", "found text"],
    ),
    Mistake(
        "distill-image-as-teacher",
        ["distill", "spec.yaml", "--teacher", "image.png", "--method", "kd"],
        ["image.png", "PNG image"],
    ),
    Mistake("distill-pickle-spec", ["distill", "pickled.yaml", "--teacher", "teacher.pt", "--method", "kd"], ["pickle"]),
    # eval
    Mistake("eval-spec-as-run", ["eval", "spec.yaml"], ["spec.yaml", "expected a splicer checkpoint"]),
    Mistake("eval-empty-file", ["eval", "empty.yaml"], ["empty.yaml", "empty file"]),
    Mistake("eval-folder-without-run", ["eval", "not_a_run"], ["not_a_run", "last.pt"]),
    Mistake("eval-device", ["eval", "teacher.pt", "--device", "gpu"], ["--device 'gpu'", "cuda"]),
    # run
    Mistake(
        "run-methods-typo",
        ["run", "spec.yaml", "--methods", "kd,fitnet"],
        ["--methods kd,fitnet", "'fitnet'", "did you mean 'fitnets'", "dml, kdcl, rco", "all"],
    ),
    Mistake("run-methods-case", ["run", "spec.yaml", "--methods", "KD"], ["'KD'", "did you mean 'kd'"]),
    Mistake("run-spec-methods-typo", ["run", "method_typo.yaml"], ["method_typo.yaml: distill.methods", "'fitnets'"]),
    Mistake("run-methods-empty", ["run", "spec.yaml", "--methods", ","], ["--methods", "no method given"]),
    Mistake("run-probe-binary", ["run", "spec.yaml", "--probe", "pickled.yaml"], ["pickled.yaml", "probe data file"]),
    Mistake("run-seeds", ["run", "spec.yaml", "--seeds", "a,b"], ["--seeds 'a,b'", "integers"]),
    Mistake("run-utf16-spec", ["run", "utf16.yaml"], ["utf16.yaml", "UTF-16"]),
    # export
    Mistake("export-format-typo", ["export", "not_a_run", "-f", "stat_dict"], ["'stat_dict'", "did you mean 'state_dict'"]),
    Mistake("export-format-case", ["export", "not_a_run", "-f", "ONNX"], ["'ONNX'", "did you mean 'onnx'"]),
    Mistake(
        "export-which-typo", ["export", "not_a_run", "-f", "state_dict", "--which", "bets"], ["'bets'", "'best'"]
    ),
    Mistake("export-checkpoint-file", ["export", "teacher.pt", "-f", "state_dict"], ["teacher.pt", "run folder"]),
    # probe
    Mistake("probe-data-binary", ["probe", "teacher.pt", "--data", "pickled.yaml"], ["pickled.yaml", "pickle"]),
    Mistake("probe-data-checkpoint", ["probe", "teacher.pt", "--data", "teacher.pt"], ["PyTorch checkpoint"]),
    Mistake("probe-data-utf16", ["probe", "teacher.pt", "--data", "utf16.yaml"], ["utf16.yaml", "UTF-16"]),
    Mistake(
        "probe-data-key-twice",
        ["probe", "teacher.pt", "--data", "probe_two_data.yaml"],
        ["probe_two_data.yaml", "data: written twice (lines 2 and 3)"],
    ),
    Mistake("probe-data-list", ["probe", "teacher.pt", "--data", "probe_list.yaml"], ["probe_list.yaml", "a list"]),
    Mistake("probe-data-typo", ["probe", "teacher.pt", "--data", "probe_typo.yaml"], ["data.resise", "'resize'"]),
    Mistake("probe-data-folder", ["probe", "teacher.pt", "--data", "folder.yaml"], ["folder.yaml", "found a folder"]),
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mistakes")
    _working_folder(root)
    return root


@pytest.mark.parametrize("mistake", MISTAKES, ids=[m.name for m in MISTAKES])
def test_a_mistake_is_one_clear_message_and_changes_nothing(mistake: Mistake, folder: Path) -> None:
    before = folder_hashes(folder)
    code, output = run_cli(mistake.args, folder)
    assert_clear_refusal(code, output, mistake.culprits)
    assert folder_hashes(folder) == before


def test_the_table_covers_every_command_with_many_mistakes() -> None:
    commands = {m.args[0] for m in MISTAKES}
    assert commands == {"build", "inspect", "schema", "train", "distill", "eval", "run", "probe", "export"}
    assert len({m.name for m in MISTAKES}) == len(MISTAKES) >= 35


def test_a_suggestion_equal_but_for_case_comes_first() -> None:
    from splicer.errors import closest

    assert closest("KD", ["dkd", "kd", "rkd"])[0] == "kd"
    assert closest("Resnet8", ["resnet8x4", "resnet8", "resnet20"])[0] == "resnet8"
    assert closest("fitnet", ["fitnets", "kd"]) == ["fitnets"]


# Real processes: torch writes its tracebacks straight to stderr, which only a real process shows.
@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "culprits"),
    [
        (["build", "pickled.yaml"], ["pickled.yaml", "pickle"]),
        (["inspect", "timm:vit_tiny_patch16_224", "--input-size", "3", "32", "32"], ["3x224x224", "--input-size"]),
    ],
    ids=["build-pickle", "inspect-vit-at-32"],
)
def test_a_mistake_in_a_real_process(args: list[str], culprits: list[str], folder: Path) -> None:
    before = folder_hashes(folder)
    code, output = run_subprocess(args, folder)
    assert_clear_refusal(code, output, culprits)
    assert folder_hashes(folder) == before


def test_inspect_a_timm_model_takes_timms_input_size_and_classes() -> None:
    code, output = run_cli(["inspect", "timm:vit_tiny_patch16_224"], REPO)
    assert code == 0, output
    assert "using timm's pretrained_cfg --input-size 3 224 224 --num-classes 1000" in output
    assert "timm:vit_tiny_patch16_224 at 3x224x224" in output
    code, output = run_cli(["inspect", "cifar:resnet8"], REPO)
    assert code == 0 and "using CIFAR-100's --input-size 3 32 32 --num-classes 100" in output
    code, output = run_cli(["inspect", "cifar:resnet8", "--input-size", "3", "32", "32", "--num-classes", "10"], REPO)
    assert code == 0 and "using" not in output


def test_flags_are_shown_as_flags_and_the_version_is_printed() -> None:
    from importlib.metadata import version

    for command in ([], ["build"], ["inspect"], ["schema"], ["train"], ["distill"], ["eval"], ["run"], ["probe"], ["export"]):
        code, output = run_cli([*command, "--help"], REPO)
        assert code == 0 and "<bool>" not in output, output
    code, output = run_cli(["--version"], REPO)
    assert code == 0 and output.strip() == f"splicer {version('splicer')}"


def test_distill_help_lists_every_registered_method() -> None:
    from splicer.cli.train_commands import METHOD_NAMES
    from splicer.training.methods import METHODS

    assert list(METHOD_NAMES) == sorted(METHODS)
    code, output = run_cli(["distill", "--help"], REPO)
    assert code == 0 and "fitnets" in output and "sskd" in output


@pytest.mark.slow
def test_example_3s_documented_command_works_as_written(tmp_path: Path) -> None:
    """README and examples/03_own_model.py give this command, from the repository root."""
    code, output = run_subprocess(
        ["inspect", "python:own_net:make_net", "--all", "--num-classes", "10", "--input-size", "3", "32", "32"],
        REPO,
        env={"PYTHONPATH": "examples"},
    )
    assert code == 0 and "stage1" in output, output
    code, output = run_cli(["inspect", "python:own_net:make_net", "--num-classes", "10"], REPO / "examples")
    assert code == 0 and "stage1" in output, output  # or from the module's own folder, without PYTHONPATH
    for text in ((REPO / "README.md").read_text(), (REPO / "examples" / "03_own_model.py").read_text()):
        assert "PYTHONPATH=examples splicer inspect python:own_net:make_net --all --num-classes 10 --input-size 3 32 32" in text


def _size_mismatch(x):  # noqa: ANN001, ANN202 - an fx leaf: a model that does not fit its input
    raise RuntimeError("a long torch message\nmat1 and mat2 shapes cannot be multiplied (2x48 and 64x10)")


def _splicer_bug(x):  # noqa: ANN001, ANN202 - an fx leaf: what a bug of ours would raise
    raise KeyError("node_7")


@pytest.mark.parametrize(("leaf", "user_error"), [(_size_mismatch, True), (_splicer_bug, False)])
def test_only_a_models_own_size_error_is_condensed(leaf, user_error) -> None:  # noqa: ANN001
    import torch
    from torch import fx

    from splicer.errors import UnsupportedModelError
    from splicer.trace.shapes import propagate_shapes

    graph = fx.Graph()
    x = graph.placeholder("x")
    graph.output(graph.call_function(leaf, (x,)))
    module = fx.GraphModule(torch.nn.Module(), graph)
    if user_error:
        with pytest.raises(UnsupportedModelError) as info:
            propagate_shapes(module, (3, 8, 8), name="teacher.model: toy", hint="try 3x32x32")
        assert str(info.value) == (
            "teacher.model: toy cannot run on an input of 3x8x8: "
            "mat1 and mat2 shapes cannot be multiplied (2x48 and 64x10); try 3x32x32"
        )
    else:
        with pytest.raises(RuntimeError) as info:  # not a SplicerError: its traceback is shown
            propagate_shapes(module, (3, 8, 8))
        assert isinstance(info.value.__cause__, KeyError)
