"""Feature methods across architectures: every block end (tokens, NHWC, NCHW) reaches a method through one
adapter per layout (splicer.synthesis.layouts), so every feature method distils ViT->CNN, CNN->ViT,
Swin (NHWC)->CNN and ViT->ViT pairs; OH and AB still refuse block ends without a final ReLU; and
`splicer run --methods all` skips what a pair cannot run and says why."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from typer.testing import CliRunner

from splicer.assembly.build import build, build_student
from splicer.cli.main import app
from splicer.errors import UnsupportedPairError
from splicer.spec import spec_from_dict
from splicer.synthesis.layouts import as_map, as_vector
from splicer.trace.layouts import FeatureLayout
from splicer.experiments.experiment import run_experiment
from splicer.training.methods import METHODS
from splicer.training.stage2 import distill_loss, feature_report, method_for_pair

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()

VIT = {
    "model": "timm:vit_tiny_patch16_224",
    "kwargs": {"img_size": 32, "patch_size": 8, "depth": 3, "embed_dim": 32, "num_heads": 2},
    "blocks": ["blocks.0", "blocks.1", "norm"],
}
VIT_FINE = {  # a second ViT with another patch grid (8x8) and width, so ViT->ViT features differ in size
    "model": "timm:vit_tiny_patch16_224",
    "kwargs": {"img_size": 32, "patch_size": 4, "depth": 3, "embed_dim": 24, "num_heads": 2},
    "blocks": ["blocks.0", "blocks.1", "norm"],
}
SWIN = {
    "model": "timm:swin_tiny_patch4_window7_224",
    "kwargs": {"img_size": 32, "window_size": 4, "depths": [1, 1, 1], "num_heads": [1, 2, 4], "embed_dim": 16},
    "blocks": "auto",
}
CNN = {"model": "cifar:resnet8", "blocks": "auto"}
PAIRS = {"vit-cnn": (VIT, CNN), "cnn-vit": (CNN, VIT), "swin-cnn": (SWIN, CNN), "vit-vit": (VIT, VIT_FINE)}
FEATURE_METHODS = ["fitnets", "at", "sp", "vid", "rkd", "pkt", "ft", "crd", "sskd", "ofa"]
PRE_RELU_METHODS = ["oh", "ab"]
FEATURE_TERMS = {"rkd": {"distance", "angle"}, "sskd": {"tf", "ss"}, "ofa": {"ofa"}}


def pair_spec(teacher: dict, student: dict, **extra: object) -> dict:
    return {
        "name": "hetero",
        "num_classes": 10,
        "input_size": [3, 32, 32],
        "teacher": teacher,
        "student": student,
        "distill": {"options": {"crd": {"negatives": 16}}},
        **extra,
    }


@pytest.fixture(scope="module", params=sorted(PAIRS))
def pair(request: pytest.FixtureRequest):
    """(name, spec, teacher, student) of one pair, built once; the teacher in eval mode, trainable on purpose
    (its forward runs under no_grad, so no gradient may reach it)."""
    spec = spec_from_dict(pair_spec(*PAIRS[request.param]))
    torch.manual_seed(0)
    return request.param, spec, build(spec, verify=False).teacher.eval(), build_student(spec).train()


# --- the adapters -------------------------------------------------------------------------------


def test_each_layout_becomes_a_map_and_a_vector_as_documented():
    tokens = torch.randn(2, 1 + 2 * 3, 5)  # class token + a 2x3 patch grid, 5 channels
    layout = FeatureLayout("tokens", 5, (2, 3), 1)
    grid = as_map(tokens, layout)
    assert grid.shape == (2, 5, 2, 3)
    for i in range(2):
        for j in range(3):
            assert torch.equal(grid[:, :, i, j], tokens[:, 1 + 3 * i + j, :])
    assert torch.equal(as_vector(tokens, layout), tokens[:, 0])  # the class token, as the ViT head reads it
    no_prefix = FeatureLayout("tokens", 5, (2, 3), 0)
    assert torch.allclose(as_vector(tokens[:, 1:], no_prefix), tokens[:, 1:].mean(dim=1))
    nhwc = torch.randn(2, 4, 3, 6)
    assert torch.equal(as_map(nhwc, FeatureLayout("nhwc", 6, (4, 3))), nhwc.permute(0, 3, 1, 2))
    assert torch.allclose(as_vector(nhwc, FeatureLayout("nhwc", 6, (4, 3))), nhwc.mean(dim=(1, 2)))
    nchw = torch.randn(2, 6, 4, 3)
    assert as_map(nchw, FeatureLayout("nchw", 6, (4, 3))) is nchw and as_map(nchw, None) is nchw
    assert torch.allclose(as_vector(nchw, None), nchw.mean(dim=(2, 3)))


# --- one step of every feature method on every pair -----------------------------------------------


def _clear(*modules: torch.nn.Module) -> None:
    for module in modules:
        for p in module.parameters():
            p.grad = None


@pytest.mark.parametrize("name", FEATURE_METHODS)
def test_every_feature_method_takes_a_step_on_every_layout_pair(pair, name: str):
    """Gradients reach the student (its first block through the feature terms alone) and the method's own
    trainable modules; none reaches the teacher or a module the method keeps frozen for its phase."""
    pair_name, spec, teacher, student = pair
    method = method_for_pair(spec, name, teacher, student)
    method.bind_data(SimpleNamespace(train_labels=torch.arange(40) % 10))
    _clear(teacher, student)
    generator = torch.Generator().manual_seed(1)
    images, labels = torch.randn(4, 3, 32, 32, generator=generator), torch.arange(4) % 10
    loss = method.objective(student, teacher) or distill_loss(student, teacher, method)
    terms, logits = loss(images, labels, torch.arange(4)) if method.needs_indices else loss(images, labels)
    assert logits.shape == (4, 10) and torch.isfinite(terms["total"])
    feature_terms = FEATURE_TERMS.get(name, {"feature"})
    assert feature_terms <= set(terms)
    first_block = [p for p in student.blocks[0].parameters() if p.requires_grad]
    grads = torch.autograd.grad(sum(terms[t] for t in feature_terms), first_block, retain_graph=True, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads), f"{pair_name}: {name}'s features reach no student block"
    terms["total"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    trainable = [p for p in method.parameters() if p.requires_grad]
    frozen = [p for p in method.parameters() if not p.requires_grad]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)
    assert all(p.grad is None for p in frozen)
    for phase in method.phases(student, teacher, main_epochs=8):  # FT's paraphraser, SSKD's teacher head
        _clear(teacher, student, method)
        for module in phase.trains.values():
            module.requires_grad_(True)
        phase_terms, _ = phase.loss(images, labels)
        phase_terms["total"].backward()
        trained = {id(p) for module in phase.trains.values() for p in module.parameters()}
        assert all(p.grad is not None for module in phase.trains.values() for p in module.parameters())
        others = [p for m in (teacher, student, method) for p in m.parameters() if id(p) not in trained]
        assert all(p.grad is None for p in others)
        for module in phase.trains.values():
            module.requires_grad_(False)


@pytest.mark.parametrize("name", PRE_RELU_METHODS)
def test_pre_relu_methods_refuse_block_ends_without_a_relu_by_name(pair, name: str):
    pair_name, spec, teacher, student = pair
    transformer = "teacher" if pair_name != "cnn-vit" else "student"
    with pytest.raises(UnsupportedPairError, match=rf"distill method '{name}' needs the pre-activation.*{transformer} "):
        method_for_pair(spec, name, teacher, student)


def test_the_run_summary_says_how_features_reach_the_method():
    spec = spec_from_dict(pair_spec(VIT, CNN))
    teacher, student = build(spec, verify=False).teacher, build_student(spec)
    fitnets = feature_report(method_for_pair(spec, "fitnets", teacher, student), teacher, student, spec)
    assert fitnets["reads"] == "block outputs as maps"
    assert fitnets["blocks"][0] == (
        "block 1: teacher tokens 1+4x4 x32 -> drop 1 prefix token(s), tokens to 4x4 map 32x4x4; student NCHW 16x32x32"
    )
    assert "regressor" in fitnets["size_rule"] and "resized to the teacher's H x W" in fitnets["size_rule"]
    rkd = feature_report(method_for_pair(spec, "rkd", teacher, student), teacher, student, spec)
    assert rkd["blocks"][-1] == "block 3: teacher tokens 1+4x4 x32 -> class token (32); student NCHW 64x8x8 -> mean over 8x8 (64)"
    assert feature_report(method_for_pair(spec, "kd", teacher, student), teacher, student, spec) is None


# --- splicer run --methods all ----------------------------------------------------------------------


def short_run(teacher: dict, student: dict) -> dict:
    return pair_spec(
        teacher,
        student,
        data={"dataset": "synthetic", "synthetic_train": 32, "synthetic_test": 16},
        train={"epochs": 1, "batch_size": 16, "device": "cpu"},
        distill={},
    )


@pytest.mark.slow
def test_methods_all_on_a_vit_to_cnn_pair_runs_every_supported_method_and_reports_the_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """With the registry cut to a map method, a vector method and the two pre-ReLU methods (every method
    takes a step on this pair above; a full `--methods all` costs about 7 s per run here): `all` runs
    AT and RKD from both teachers, skips OH and AB with their reasons, and the table-8 similarity reads
    the ViT's class token."""
    for name in set(METHODS) - {"fitnets", "at", "rkd", "oh", "ab"}:
        monkeypatch.delitem(METHODS, name)
    spec_file = tmp_path / "vit_cnn.yaml"
    spec_file.write_text(yaml.safe_dump(short_run(VIT, CNN), sort_keys=False))
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(spec_file), "--methods", "all", "--seeds", "0", "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert set(report["skipped"]) == {"oh", "ab"}
    assert all("ends with" in reason and "not a ReLU" in reason for reason in report["skipped"].values())
    assert list(report["methods"]) == ["fitnets", "at", "rkd"] and list(report["features"]) == ["fitnets", "at", "rkd"]
    assert all(row["errors"] == [] and row["delta"] is not None for row in report["methods"].values())
    assert all(0 <= report["similarity"][m]["sftn"]["cka"]["mean"] <= 1 + 1e-6 for m in report["methods"])
    markdown = (out / "report.md").read_text()
    assert "## Skipped methods" in markdown and "- OH: distill method 'oh' needs the pre-activation" in markdown
    assert "| 1 | tokens 1+4x4 x32 -> drop 1 prefix token(s), tokens to 4x4 map 32x4x4 | tokens 1+4x4 x32 -> class token (32) |" in markdown
    assert "- FitNets: block outputs as maps; hint block only; regressor:" in markdown
    summary = json.loads((out / "seed0" / "at-from-sftn" / "summary.json").read_text())
    assert summary["meta"]["features"]["size_rule"].startswith("every block; the larger map")


def test_a_method_named_explicitly_that_cannot_read_the_pair_fails_before_any_training(tmp_path: Path):
    with pytest.raises(UnsupportedPairError, match=r"--methods oh: distill method 'oh' needs .*leave it out"):
        run_experiment(spec_from_dict(short_run(VIT, CNN)), ["kd", "oh"], [0], out=tmp_path / "x", quiet=True)
    assert not (tmp_path / "x").exists()
