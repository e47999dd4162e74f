"""Emitted sftn.py for models that are not all torch.nn layers: a timm pair and a user's python: pair.

Each file is loaded in a fresh process that never imports splicer, gets the built SFTN's
state_dict (strict: same keys and shapes) and must give the built SFTN's outputs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import splicer
from splicer.emission.artifacts import emit_artifacts
from splicer.emission.initialisation import NotReplayable, record_initialisation
from splicer.emission.source import EmissionError, emit_source
from splicer.errors import ModelSourceError
from splicer.models.registry import constructor_source
from splicer.spec import spec_from_dict
from tests.conftest import REPO, toy_pair, toy_spec
from tests.standalone import run_without_splicer

_FRESH_PROCESS = textwrap.dedent(
    """
    import sys, torch
    from sftn import SFTN
    model = SFTN()
    model.load_state_dict(torch.load("weights.pt", weights_only=True))  # strict: same keys and shapes
    model.eval()
    with torch.no_grad():
        out = model(torch.load("x.pt"))
    torch.save({"teacher": out.teacher_logits, "branches": out.branch_logits, "keys": list(model.state_dict())}, "out.pt")
    assert "splicer" not in sys.modules
    """
)


def _check_in_fresh_process(result: splicer.BuildResult, folder: Path) -> str:
    """Emit, run the file in a fresh process on the built weights, compare every output; returns the source."""
    written = emit_artifacts(result, folder)
    assert "source" in written, result.notes
    sftn = result.sftn.eval()
    torch.save(sftn.state_dict(), folder / "weights.pt")
    x = torch.randn(3, *result.spec.input_size, generator=torch.Generator().manual_seed(1))
    torch.save(x, folder / "x.pt")
    with torch.no_grad():
        expected = sftn(x)
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # the user's module (tests.toy_nets) importable, as the file says
    subprocess.run([sys.executable, "-c", _FRESH_PROCESS], cwd=folder, check=True, env=env)
    got = torch.load(folder / "out.pt")
    assert got["keys"] == list(sftn.state_dict())
    assert torch.allclose(got["teacher"], expected.teacher_logits, atol=1e-5)
    assert len(got["branches"]) == len(expected.branch_logits)
    for a, b in zip(got["branches"], expected.branch_logits):
        assert torch.allclose(a, b, atol=1e-5)
    return written["source"].read_text()


def test_a_timm_pair_is_emitted_over_timm_models(tmp_path):
    # NF-Net stages are kept opaque by tracing and EfficientNet uses timm's norm-act layers: neither is torch.nn.
    spec = {
        "name": "timm_pair",
        "num_classes": 10,
        "input_size": [3, 32, 32],
        "teacher": {"model": "timm:test_nfnet"},
        "student": {"model": "timm:test_efficientnet"},
    }
    result = splicer.compile_spec(spec_from_dict(spec))
    source = _check_in_fresh_process(result, tmp_path)
    header = source.split('"""')[1]
    assert "- timm (generated with timm " in header
    assert "timm.create_model('test_nfnet', pretrained=False, num_classes=10)" in header
    imports = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
    assert "import timm" in imports and not any("splicer" in line for line in imports)


def test_a_vit_pair_is_emitted_with_its_layout_adapters(tmp_path):
    # A CNN teacher for a ViT student: the transforms end in MapToTokens (learned class token), rebuilt from its repr.
    vit = {"img_size": 32, "patch_size": 8, "depth": 4}
    spec = {
        "name": "vit_pair",
        "num_classes": 10,
        "input_size": [3, 32, 32],
        "teacher": {"model": "cifar:resnet8"},
        "student": {"model": "timm:vit_tiny_patch16_224", "kwargs": vit},
    }
    result = splicer.compile_spec(spec_from_dict(spec))
    source = _check_in_fresh_process(result, tmp_path)
    assert "MapToTokens(prefix_tokens=1, channels=192)" in source


def test_a_python_pair_is_emitted_over_the_users_models(tmp_path):
    # User layers traced through (a raw parameter, a non-persistent buffer) and kept opaque (reads self.training),
    # a functional dropout and a tensor constant that tracing added.
    spec = toy_pair("custom_layers_net")
    spec["teacher"]["kwargs"] = {"constant_in_head": True}
    spec["student"]["kwargs"] = {"width": 4}
    result = splicer.compile_spec(spec_from_dict(spec))
    source = _check_in_fresh_process(result, tmp_path)
    assert "- the module tests.toy_nets importable" in source
    assert "tests.toy_nets.custom_layers_net(num_classes=10, width=4)" in source
    assert "_share(model, self, 'stage1.3.shift')" in source  # the model's own buffer, not a copy


def test_an_emitted_sftn_over_its_models_starts_from_their_initialisation(tmp_path):
    spec = toy_pair("custom_layers_net")
    result = splicer.compile_spec(spec_from_dict(spec))
    emit_artifacts(result, tmp_path)
    sys.path.insert(0, str(tmp_path))
    try:
        import sftn as emitted

        model = emitted.SFTN()
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("sftn", None)
    state = model.state_dict()
    assert list(state) == list(result.sftn.state_dict())
    assert torch.equal(state["teacher.blocks.0.stage1.3.gamma"], torch.full((8, 1, 1), 0.5))  # the model's own init
    out = model.train()(torch.randn(2, 3, 16, 16))
    (out.teacher_logits.sum() + sum(z.sum() for z in out.branch_logits)).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_constructor_source_matches_create_model_and_refuses_splicers_own_models():
    assert constructor_source("timm:resnet18", 10, {"drop_rate": 0.1}) == (
        "import timm",
        "timm.create_model('resnet18', pretrained=False, num_classes=10, drop_rate=0.1)",
    )
    assert constructor_source("python:pkg.nets:make", 5) == ("import pkg.nets", "pkg.nets.make(num_classes=5)")
    with pytest.raises(ModelSourceError, match="splicer's own model"):
        constructor_source("cifar:vgg8", 100)


def test_a_model_that_its_reference_no_longer_creates_is_refused():
    result = splicer.compile_spec(spec_from_dict(toy_pair("custom_layers_net")))
    result.spec.teacher.kwargs = {"width": 4}  # the reference now creates another network than the compiled one
    with pytest.raises(EmissionError, match=r"TeacherBlock1: stage1.0: the model created from its reference holds state_dict"):
        emit_source(result)


_SAME_SEED_SAME_WEIGHTS = textwrap.dedent(
    """
    import sys, torch
    folder = sys.argv[1]
    sys.path.insert(0, folder)
    from sftn import SFTN
    torch.manual_seed(0)
    state = SFTN().state_dict()
    built = torch.load(folder + "/built.pt", weights_only=True)
    assert list(state) == list(built)
    non_finite = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    assert not non_finite, f"non-finite: {non_finite}"
    differ = [k for k in built if not torch.equal(built[k], state[k])]
    assert not differ, f"not splicer's weights under the same seed: {differ}"
    print("teacher as", "model" if hasattr(sys.modules["sftn"], "_teacher_model") else "layers")
    """
)


def _timm(name: str, **kwargs: object) -> dict:
    return {"model": f"timm:{name}", "kwargs": kwargs, "blocks": "auto"}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("teacher", "student", "side", "teacher_as"),
    [
        # ConvNeXt's layer-scale gamma and LayerNorm weights once started as torch.empty garbage (issue 24).
        (_timm("test_convnext"), _timm("test_efficientnet"), 32, "model"),
        (_timm("test_vit", img_size=32), _timm("test_resnet"), 32, "model"),
        ({"model": "torchvision:mobilenet_v3_small", "blocks": "auto"}, {"model": "cifar:resnet8x4", "blocks": "auto"}, 32, "layers"),
        (toy_spec()["teacher"], toy_spec()["student"], 16, "layers"),
        (toy_pair("custom_layers_net")["teacher"], toy_pair("custom_layers_net")["student"], 16, "model"),
    ],
    ids=["timm-convnext", "timm-vit", "torchvision-cifar", "python-layers", "python-model"],
)
def test_a_fresh_sftn_without_splicer_has_splicers_weights_under_the_same_seed(tmp_path, teacher, student, side, teacher_as):
    spec = {"name": "init", "num_classes": 10, "input_size": [3, side, side], "teacher": teacher, "student": student}
    torch.manual_seed(0)
    result = splicer.compile_spec(spec_from_dict(spec), verify=False)
    source = emit_source(result)
    assert "torch.empty" not in source
    (tmp_path / "sftn.py").write_text(source)
    torch.save(result.sftn.state_dict(), tmp_path / "built.pt")
    (tmp_path / "check.py").write_text(_SAME_SEED_SAME_WEIGHTS)
    done = run_without_splicer(tmp_path / "check.py", str(tmp_path), cwd=REPO)  # REPO: the python: models import
    assert f"teacher as {teacher_as}" in done.stdout


def test_an_initialisation_outside_torch_nn_init_is_not_replayed():
    class Drawn(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.scale = torch.nn.Parameter(torch.randn(4))

    with pytest.raises(NotReplayable, match="scale is drawn at random without torch.nn.init"):
        record_initialisation(Drawn)
    ops = record_initialisation(lambda: torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)))
    assert [(path, name) for path, _, _, name, _ in ops[:2]] == [("0.weight", "kaiming_uniform_"), ("0.bias", "uniform_")]
    assert ("1.running_var", (4,), "float32", "constant_", {"val": 1.0}) in ops


_SAME_WEIGHTS_SAME_OUTPUTS = textwrap.dedent(
    """
    import sys, torch
    folder = sys.argv[1]
    sys.path.insert(0, folder)
    from sftn import SFTN
    torch.manual_seed(0)
    model = SFTN().eval()
    built = torch.load(folder + "/built.pt", weights_only=True)
    state = model.state_dict()
    assert list(state) == list(built)
    differ = [k for k in built if not torch.equal(built[k], state[k])]
    assert not differ, f"not splicer's weights under the same seed: {differ}"
    expected = torch.load(folder + "/expected.pt", weights_only=True)
    with torch.no_grad():
        out = model(expected["x"])
    assert torch.allclose(out.teacher_logits, expected["teacher"], atol=1e-5)
    assert len(out.branch_logits) == len(expected["branches"])
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(out.branch_logits, expected["branches"]))
    print("same weights, same outputs")
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["swinv2_tiny_window8_256", "swinv2_cr_tiny_ns_224"])
def test_a_swin_v2_pair_emits_its_large_attention_masks_exactly(tmp_path, model):
    # Tracing turns Swin V2's shifted-window attention mask into a constant of 4 windows x 64 x 64 tokens (issue 24:
    # once refused as over 4096 elements); Swin V2's 4096-element index constants stay readable literals.
    swin = {"img_size": 64, "window_size": 8, "embed_dim": 16, "depths": [2, 2], "num_heads": [1, 2]}
    spec = {
        "name": "swinv2",
        "num_classes": 10,
        "input_size": [3, 64, 64],
        "teacher": _timm(model, **swin),
        "student": _timm("test_resnet"),
    }
    torch.manual_seed(0)
    result = splicer.compile_spec(spec_from_dict(spec), verify=False)
    source = emit_source(result)
    assert "_unpack_tensor(torch.float32, [1, 4, 1, 64, 64], (" in source
    if model == "swinv2_tiny_window8_256":
        assert "_install(self, '_tensor_constant0', torch.tensor([" in source
    (tmp_path / "sftn.py").write_text(source)
    sftn = result.sftn.eval()
    torch.save(sftn.state_dict(), tmp_path / "built.pt")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = sftn(x)
    torch.save({"x": x, "teacher": out.teacher_logits, "branches": list(out.branch_logits)}, tmp_path / "expected.pt")
    (tmp_path / "check.py").write_text(_SAME_WEIGHTS_SAME_OUTPUTS)
    done = run_without_splicer(tmp_path / "check.py", str(tmp_path), cwd=tmp_path)
    assert "same weights, same outputs" in done.stdout
