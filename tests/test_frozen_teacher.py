"""The frozen teacher of stage 2 as an inference network: BatchNorm folded into the convolutions
gives the same logits, block outputs and pre-activations as the teacher as trained (CIFAR, torchvision
and timm teachers, timm's BatchNormAct2d included), the taps follow the fold, and a distillation
records the check in its run's meta."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from splicer.assembly.build import block_net, plan_network
from splicer.assembly.tapped import TappedBlockNet
from splicer.errors import SplicerError
from splicer.spec import spec_from_dict
from splicer.spec.loader import load_spec
from splicer.trace.fold_batchnorm import fold_batchnorm
from splicer.training.engine import Runtime
from splicer.training.frozen_teacher import InferenceTeacher, TeacherNumerics, folded_copy, inference_teacher
from splicer.training.methods import create_method
from splicer.training.stage1 import train_teacher
from splicer.training.stage2 import block_shapes, distill
from tests.conftest import REPO, toy_spec

pytestmark = pytest.mark.usefixtures("one_thread")

TEACHERS = {
    "cifar:vgg13": ("vgg13_vgg8.yaml", None),
    "cifar:resnet32x4": ("resnet32x4_resnet8x4.yaml", None),
    "torchvision:resnet18": (None, ["layer1", "layer2", "layer3"]),
    "timm:mobilenetv3_small_050": (None, ["blocks.1", "blocks.3", "blocks.5"]),
}


def teacher_network(model: str) -> TappedBlockNet:
    """The teacher ``model`` cut into blocks, in eval mode, its BatchNorm statistics and affine parameters drawn at
    random so that a fold that ignored any of them would show."""
    spec_file, blocks = TEACHERS[model]
    if spec_file is not None:
        spec = load_spec(REPO / "specs" / spec_file)
    else:
        network = {"model": model, "blocks": blocks}
        pair = {"teacher": network, "student": network}
        spec = spec_from_dict({"name": "t", "num_classes": 10, "input_size": [3, 64, 64], **pair})
    torch.manual_seed(0)
    net = block_net(plan_network(spec, spec.teacher, "teacher", spec.source))
    generator = torch.Generator().manual_seed(1)
    for module in net.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            channels = module.num_features
            module.running_mean.copy_(0.2 * torch.randn(channels, generator=generator))
            module.running_var.copy_(0.5 + torch.rand(channels, generator=generator))
            module.weight.data.copy_(0.5 + torch.rand(channels, generator=generator))
            module.bias.data.copy_(0.2 * torch.randn(channels, generator=generator))
    return net.eval().requires_grad_(False)


def assert_close(got: list[torch.Tensor], expected: list[torch.Tensor], rel: float = 1e-5) -> None:
    for g, e in zip(got, expected, strict=True):
        assert g.shape == e.shape
        assert (g - e).abs().max().item() <= rel * max(1.0, e.abs().max().item())


def every_output(network: TappedBlockNet, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        features, logits = network.forward_features(x)
        outputs = [*features, logits]
        if all(tap.found for tap in network.taps):
            _, pre, _ = network.forward_preactivations(x)
            outputs += pre
    return outputs


@pytest.mark.parametrize("model", sorted(TEACHERS))
def test_folded_teacher_gives_the_same_logits_block_outputs_and_preactivations(model: str):
    teacher = teacher_network(model)
    side = 32 if model.startswith("cifar") else 64
    x = torch.randn(2, 3, side, side)
    expected = every_output(teacher, x)
    norms = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in teacher.modules())

    folded, summary = folded_copy(teacher)

    assert summary.folded > 0 and summary.folded + len(summary.left) == norms
    assert sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules()) == len(summary.left)
    assert_close(every_output(folded, x), expected)
    assert_close(every_output(teacher, x), expected, rel=0)  # the original is untouched


def test_timm_batchnormact_is_folded_and_keeps_its_activation():
    from timm.layers import BatchNormAct2d

    teacher = teacher_network("timm:mobilenetv3_small_050")
    acts = [m.act for m in teacher.modules() if type(m) is BatchNormAct2d]
    assert acts and any(not isinstance(a, nn.Identity) for a in acts)

    folded, summary = folded_copy(teacher)

    assert not any(isinstance(m, BatchNormAct2d) for m in folded.modules())
    assert summary.left == ()
    kinds = {type(m) for m in folded.modules()}
    assert {type(a) for a in acts} <= kinds  # the activations stay


def test_taps_follow_the_fold_onto_the_convolution():
    teacher = teacher_network("cifar:vgg13")  # its block ends are conv -> bn -> relu: the tap reads the bn
    names = {b: {n.name for n in block.graph.nodes} for b, block in enumerate(teacher.blocks)}
    assert all(tap.pre_activation.endswith("_bn") for tap in teacher.taps)

    folded, _ = folded_copy(teacher)

    for b, (before, after) in enumerate(zip(teacher.taps, folded.taps, strict=True)):
        assert after.pre_activation == before.pre_activation.removesuffix("_bn") + "_conv"
        assert after.pre_activation in names[b] and after.activation == before.activation
        assert after.norm is None and before.norm is not None
    assert [t.pre_activation for t in teacher.taps] == [t.pre_activation for t in teacher_network("cifar:vgg13").taps]


def test_a_norm_whose_convolution_is_read_elsewhere_is_left_with_its_reason():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return self.bn(y) + y

    graph_module = torch.fx.symbolic_trace(Net().eval())
    folding = fold_batchnorm(graph_module)
    assert folding.folded == []
    assert folding.left == ["bn (BatchNorm2d): its convolution's output is also read elsewhere"]


def test_channels_last_gives_the_same_outputs_in_the_steps_format():
    teacher = teacher_network("cifar:resnet32x4")
    x = torch.randn(2, 3, 32, 32)
    expected = every_output(teacher, x)
    numerics = TeacherNumerics(fold_bn=True, channels_last=True, precision="fp32", compile=False)
    prepared = InferenceTeacher(folded_copy(teacher)[0], numerics, step_channels_last=False)

    got = every_output(prepared, x)

    assert_close(got, expected)
    assert all(t.is_contiguous() and t.dtype == torch.float32 for t in got)
    assert next(p for p in prepared.parameters() if p.dim() == 4).is_contiguous(memory_format=torch.channels_last)
    prepared.train()
    assert not prepared.training and not any(p.requires_grad for p in prepared.parameters())


@pytest.mark.parametrize(
    ("field", "value", "valid"),
    [
        ("teacher_precision", "fp16", "'auto', 'fp32' or 'bf16'"),
        ("teacher_channels_last", "sometimes", "'auto', True or False"),
        ("teacher_fold_bn", "maybe", "valid boolean"),
    ],
)
def test_bad_teacher_settings_are_spec_errors(field: str, value: str, valid: str):
    with pytest.raises(SplicerError) as error:
        spec_from_dict(toy_spec(distill={field: value}))
    assert f"distill.{field}" in str(error.value) and valid in str(error.value)


def test_the_check_refuses_a_teacher_that_differs(monkeypatch: pytest.MonkeyPatch):
    spec = spec_from_dict(toy_spec(distill={"teacher_precision": "fp32"}))
    torch.manual_seed(0)
    teacher = block_net(plan_network(spec, spec.teacher, "teacher", spec.source)).eval().requires_grad_(False)
    student = block_net(plan_network(spec, spec.student, "student", spec.source))
    method = create_method("at", spec.distill, block_shapes(teacher, spec), block_shapes(student, spec))
    runtime = Runtime(torch.device("cpu"))
    images = torch.randn(4, 3, 16, 16)
    prepared, facts = inference_teacher(teacher, spec.distill, method, images, runtime)
    assert facts["max_abs_diff"]["block_outputs"] < 1e-5 and facts["batchnorms_folded"] > 0

    original_forward = TappedBlockNet.forward_features

    def shifted(self: TappedBlockNet, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        features, logits = original_forward(self, x)  # the prepared teacher, not the reference, is off
        return features, logits + 1.0 if isinstance(self, InferenceTeacher) else logits

    monkeypatch.setattr(TappedBlockNet, "forward_features", shifted)
    with pytest.raises(SplicerError) as error:
        inference_teacher(teacher, spec.distill, create_method("kd", spec.distill, [], []), images, runtime)
    assert "distill.teacher_fold_bn=false" in str(error.value) and "logits differ" in str(error.value)


def toy_check(**settings: object) -> tuple[InferenceTeacher, dict]:
    """The inference teacher of the toy spec with ``distill`` ``settings``, checked for AT on four images."""
    spec = spec_from_dict(toy_spec(distill=settings))
    torch.manual_seed(0)
    teacher = block_net(plan_network(spec, spec.teacher, "teacher", spec.source)).eval().requires_grad_(False)
    method = create_method("at", spec.distill, block_shapes(teacher, spec), block_shapes(teacher, spec))
    return inference_teacher(teacher, spec.distill, method, torch.randn(4, 3, 16, 16), Runtime(torch.device("cpu")))


def test_bf16_teacher_hands_float32_to_the_loss():
    prepared, facts = toy_check(teacher_precision="bf16")
    assert facts["precision"] == "bf16" and 0 < facts["max_abs_diff"]["block_outputs"] < 0.1
    features, logits = prepared.forward_features(torch.randn(2, 3, 16, 16))
    assert all(t.dtype == torch.float32 for t in [*features, logits])


@pytest.mark.parametrize("amx", [True, False])
def test_auto_precision_is_bf16_only_where_the_cpu_has_amx(monkeypatch: pytest.MonkeyPatch, amx: bool):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    settings = spec_from_dict(toy_spec()).distill
    assert TeacherNumerics.resolve(settings, torch.device("cpu")).precision == ("bf16" if amx else "fp32")
    forced = settings.model_copy(update={"teacher_precision": "fp32"})
    assert TeacherNumerics.resolve(forced, torch.device("cpu")).precision == "fp32"


def test_compiled_teacher_gives_the_eager_teachers_outputs():
    prepared, facts = toy_check(teacher_compile=True, teacher_precision="fp32")
    assert facts["compile"] and facts["max_abs_diff"]["block_outputs"] < 1e-5 and facts["max_abs_diff"]["logits"] < 1e-5
    images = torch.randn(3, 3, 16, 16)
    eager = InferenceTeacher(prepared, replace(prepared.numerics, compile=False), step_channels_last=False)
    torch.testing.assert_close(prepared(images), eager(images), rtol=0, atol=1e-5)


def test_a_teacher_that_cannot_compile_is_the_settings_error(monkeypatch: pytest.MonkeyPatch):
    def failing_compile(code: object, **settings: object) -> object:
        def run(x: torch.Tensor) -> None:
            raise RuntimeError("no C++ compiler found\nlong traceback")

        return run

    monkeypatch.setattr(torch, "compile", failing_compile)
    with pytest.raises(SplicerError) as error:
        toy_check(teacher_compile=True)
    assert str(error.value) == (
        "distill.teacher_compile: torch.compile could not compile the teacher (RuntimeError: no C++ compiler found); "
        "set distill.teacher_compile=false"
    )
    monkeypatch.setattr(torch._dynamo, "is_dynamo_supported", lambda: False)
    with pytest.raises(SplicerError, match="torch.compile is not available with this Python and torch"):
        toy_check(teacher_compile=True)


@pytest.fixture(scope="module")
def trained_teacher(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    spec = toy_spec(
        data={"dataset": "synthetic", "synthetic_train": 32, "synthetic_test": 16},
        train={"epochs": 1, "batch_size": 16, "lr": 0.05, "device": "cpu"},
    )
    out = tmp_path_factory.mktemp("teacher") / "sftn"
    train_teacher(spec_from_dict(spec), out=out, quiet=True)
    return spec, out


@pytest.mark.parametrize(("method", "fold", "reads"), [("ab", True, "pre_activations"), ("kd", False, "block_outputs")])
def test_a_distillation_records_the_teacher_check(
    trained_teacher: tuple[dict, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    method: str,
    fold: bool,
    reads: str,
):
    spec, teacher = trained_teacher
    settings = {"teacher_fold_bn": fold, "teacher_precision": "fp32", "options": {"ab": {"init_epochs": 1}}}
    spec = {**spec, "distill": settings}
    summary = distill(spec_from_dict(spec), teacher, method, out=tmp_path / "run")

    facts = summary["meta"]["teacher_inference"]
    assert facts["fold_bn"] is fold and (facts["batchnorms_folded"] > 0) is fold
    assert facts["precision"] == "fp32" and facts["channels_last"] is True and facts["compile"] is False
    assert set(facts["max_abs_diff"]) == {"logits", reads}
    assert all(0 <= value < 1e-4 for value in facts["max_abs_diff"].values())
    assert facts["line"].startswith("teacher: ") and "against the unfolded teacher" in facts["line"]
    stored = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert stored["meta"]["teacher_inference"]["max_abs_diff"] == facts["max_abs_diff"]
    assert facts["line"] in capsys.readouterr().err.replace("\n", " ")
