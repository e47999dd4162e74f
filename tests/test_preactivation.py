"""Pre-activation taps found by the compiler, against hooks on the original model's known ReLUs."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from splicer.assembly.build import block_net, build_student, plan_network
from splicer.errors import SplicerError
from splicer.spec import spec_from_dict
from tests.conftest import toy_spec


def plan_for(model: str, blocks: list[str] | str = "auto", size: int = 32, kwargs: dict | None = None):
    spec = spec_from_dict(
        {
            "name": "taps",
            "num_classes": 10,
            "input_size": [3, size, size],
            "teacher": {"model": model, "blocks": blocks, "kwargs": kwargs or {}},
            "student": {"model": "cifar:resnet8"},
        }
    )
    return plan_network(spec, spec.teacher, "teacher", "taps.yaml")


def randomise_norms(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics and affine parameters (timm zero-initialises the last BN of a block)."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            size = module.num_features
            module.weight.data = torch.rand(size, generator=generator) + 0.5
            module.bias.data = torch.randn(size, generator=generator) * 0.5
            module.running_mean = torch.randn(size, generator=generator) * 0.1
            module.running_var = torch.rand(size, generator=generator) + 0.5


def relu_inputs(model: nn.Module, relus: list[str], x: Tensor) -> tuple[list[Tensor], Tensor]:
    """The input of each named ReLU module on its last call, copied before an in-place ReLU can change it."""
    seen: dict[str, Tensor] = {}
    handles = [
        model.get_submodule(name).register_forward_pre_hook(
            lambda module, args, name=name: seen.__setitem__(name, args[0].detach().clone())
        )
        for name in relus
    ]
    try:
        logits = model(x)
    finally:
        for handle in handles:
            handle.remove()
    return [seen[name] for name in relus], logits


CASES = [
    # model, block ends (auto or listed), the ReLU module each block end's value comes out of
    ("cifar:resnet8x4", "auto", ["layer1.0.relu", "layer2.0.relu", "layer3.0.relu"], {}),
    ("cifar:resnet20", "auto", ["layer1.2.relu", "layer2.2.relu", "layer3.2.relu"], {}),
    ("cifar:wrn_16_1", ["layer2.0.act1", "layer3.0.act1", "norm"], ["layer2.0.act1.relu", "layer3.0.act1.relu", "norm.relu"], {}),
    ("cifar:vgg8", "auto", ["stage2.0.relu", "stage3.0.relu", "stage5.0.relu"], {}),
    ("timm:resnet18", "auto", ["layer1.1.act2", "layer2.1.act2", "layer3.1.act2", "layer4.1.act2"], {}),
]


@pytest.mark.parametrize(("model", "blocks", "relus", "kwargs"), CASES, ids=[c[0] for c in CASES])
def test_taps_equal_the_value_before_each_block_ends_relu(model, blocks, relus, kwargs):
    plan = plan_for(model, blocks, kwargs=kwargs)
    randomise_norms(plan.model)
    network = block_net(plan).eval()
    plan.model.eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, expected_logits = relu_inputs(plan.model, relus, x)
        features, preactivations, logits = network.forward_preactivations(x)
        plain_features, plain_logits = network.forward_features(x)
    assert len(preactivations) == len(relus)
    for pre, want, feature, plain in zip(preactivations, expected, features, plain_features, strict=True):
        assert (want < 0).any(), "the check needs negative pre-activations to tell them from the ReLU output"
        torch.testing.assert_close(pre, want, rtol=0, atol=1e-5)
        torch.testing.assert_close(feature, plain, rtol=0, atol=0)
        torch.testing.assert_close(feature, want.clamp_min(0), rtol=0, atol=1e-5)
    torch.testing.assert_close(logits, plain_logits, rtol=0, atol=0)
    torch.testing.assert_close(logits, expected_logits, rtol=0, atol=1e-4)


def test_taps_name_the_batchnorm_before_the_relu_also_through_a_residual_sum():
    # resnet8x4's layer2.0 sums conv2's BN with a projection shortcut's BN: the residual branch's is taken.
    norms = [tap.norm for tap in block_net(plan_for("cifar:resnet8x4")).taps]
    assert norms == ["layer1.0.conv2.bn", "layer2.0.conv2.bn", "layer3.0.conv2.bn"]
    network = block_net(plan_for("cifar:vgg8"))
    assert network.preactivation_norms()[0] is network.blocks[0].get_submodule("stage2.0.bn")


def test_student_taps_carry_gradients_and_survive_in_place_relus():
    spec = spec_from_dict(toy_spec(student={"model": "cifar:resnet8", "blocks": "auto"}, input_size=[3, 16, 16]))
    student = build_student(spec).train()
    x = torch.randn(4, 3, 16, 16)
    features, preactivations, logits = student.forward_preactivations(x)
    for feature, pre in zip(features, preactivations, strict=True):
        # resnet8's final ReLUs are in place: the tap must still hold the negative values
        assert (pre < 0).any() and torch.equal(feature, pre.clamp_min(0))
    sum(p.sum() for p in preactivations).backward()
    first_conv = student.blocks[0].get_submodule("stem.conv")
    assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0
    assert logits.shape == (4, 10)


def test_a_block_end_without_a_relu_is_a_clear_error_naming_it():
    network = block_net(plan_for("cifar:wrn_16_1"))  # auto: layer1, layer2 end with the residual sum
    with pytest.raises(SplicerError) as error:
        network.check_preactivations("teacher", "oh")
    message = str(error.value)
    assert "'oh'" in message and "teacher block end 'layer1'" in message and "ends with add" in message
    assert "OH, AB" in message and "layer2.0.act1" in message
    with pytest.raises(SplicerError, match="'layer1' ends with add"):
        network.forward_preactivations(torch.randn(1, 3, 32, 32))
    # a network whose block ends all end in ReLUs passes
    block_net(plan_for("cifar:resnet8")).check_preactivations("student", "oh")


def test_the_normal_forward_path_is_unchanged():
    network = block_net(plan_for("cifar:resnet8"))
    assert type(network).forward is type(network).__mro__[1].forward
    assert type(network).forward_features is type(network).__mro__[1].forward_features
    assert not any("tap" in name for name, _ in network.named_modules())


class FunctionalReLUs(nn.Module):
    """Block ends written as ``F.relu(x, inplace=True)`` and ``torch.relu_(x)``."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, 1, 1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 16, 3, 2, 1), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = nn.functional.relu(self.bn1(self.conv1(x)), inplace=True)
        x = torch.relu_(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def functional_relus(num_classes: int = 10) -> FunctionalReLUs:
    return FunctionalReLUs(num_classes)


def test_functional_in_place_relus_are_tapped_too():
    plan = plan_for("python:tests.test_preactivation:functional_relus", ["relu", "relu_"], size=8)
    randomise_norms(plan.model)
    network = block_net(plan).eval()
    assert [tap.norm for tap in network.taps] == ["bn1", "bn2"]
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        _, preactivations, _ = network.forward_preactivations(x)
        model = plan.model.eval()
        expected = [model.bn1(model.conv1(x))]
        expected.append(model.bn2(model.conv2(expected[0].clamp_min(0))))
    for pre, want in zip(preactivations, expected, strict=True):
        assert (want < 0).any()
        torch.testing.assert_close(pre, want, rtol=0, atol=1e-5)
