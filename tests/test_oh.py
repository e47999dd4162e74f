"""OH (Heo et al., 2019) against explicit sums, its margins against the normal distribution, and in training."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from splicer.assembly.build import build, build_student
from splicer.cli.main import app
from splicer.errors import SplicerError
from splicer.spec import spec_from_dict
from splicer.spec.schema import DistillSpec
from splicer.training.methods import create_method
from splicer.training.methods.oh import OH, margin_from_bn
from splicer.training.stage2 import block_shapes, distill_loss
from tests.conftest import toy_pair, toy_spec

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_thread")


def normal_cdf(z: float) -> float:
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def hand_margin(gamma: float, beta: float) -> float:
    """E[x | x < 0] for x ~ N(beta, gamma^2) written out: beta - s * pdf(beta/s) / cdf(-beta/s), or -3s if rare."""
    s = abs(gamma)
    p_negative = normal_cdf(-beta / s)
    if p_negative <= 0.001:
        return -3 * s
    pdf = math.exp(-0.5 * (beta / s) ** 2) / math.sqrt(2 * math.pi)
    return beta - s * pdf / p_negative


def test_margin_from_bn_matches_the_hand_formula_and_sampling():
    gamma = [1.0, -2.0, 0.5, 1.0, 0.3]
    beta = [0.0, -1.0, 3.0, 0.5, 0.9]  # channel 2: P(x < 0) = Phi(-6), so -3 * 0.5
    margin = margin_from_bn(torch.tensor(gamma), torch.tensor(beta))
    expected = [hand_margin(g, b) for g, b in zip(gamma, beta)]
    assert expected[0] == pytest.approx(-math.sqrt(2 / math.pi)) and expected[2] == -1.5
    torch.testing.assert_close(margin, torch.tensor(expected), rtol=1e-6, atol=1e-6)
    # where negatives are not rare, the margin is the mean of the negative values
    generator = torch.Generator().manual_seed(0)
    for channel in (0, 1, 3):
        samples = beta[channel] + abs(gamma[channel]) * torch.randn(400_000, generator=generator, dtype=torch.float64)
        assert samples[samples < 0].mean().item() == pytest.approx(margin[channel].item(), abs=0.01)


def explicit_partial_l2(source: list, target_raw: list, margin: list[float]) -> float:
    """Sum over n, c, h, w of (s - max(t, m_c))^2, skipped where s <= max(t, m_c) <= 0, with plain loops."""
    total = 0.0
    for n in range(len(source)):
        for c in range(len(source[n])):
            for h in range(len(source[n][c])):
                for w in range(len(source[n][c][h])):
                    s = source[n][c][h][w]
                    t = max(target_raw[n][c][h][w], margin[c])
                    if s <= t and t <= 0:
                        continue
                    total += (s - t) ** 2
    return total


SHAPES_T = [(3, 4, 4), (4, 2, 2), (5, 2, 2)]
SHAPES_S = [(2, 4, 4), (3, 2, 2), (2, 2, 2)]


def test_oh_loss_matches_explicit_sums_with_the_authors_scale():
    method = OH(DistillSpec(), SHAPES_T, SHAPES_S)
    generator = torch.Generator().manual_seed(0)
    margins = [-(torch.rand(shape[0], generator=generator) + 0.1) for shape in SHAPES_T]
    for i, margin in enumerate(margins):
        method.set_margin(i, margin)
    batch = 2
    student = [torch.randn(batch, *shape, generator=generator) for shape in SHAPES_S]
    teacher = [torch.randn(batch, *shape, generator=generator) for shape in SHAPES_T]
    logits_s, logits_t = torch.randn(batch, 5, generator=generator), torch.randn(batch, 5, generator=generator)
    targets = torch.tensor([1, 3])
    method.eval()  # connectors' BN with its running statistics: the same output in both computations
    terms = method(logits_s, logits_t, student, teacher, targets)
    expected = 0.0
    for i in range(3):
        source = method.connectors[i](student[i]).tolist()
        layer = explicit_partial_l2(source, teacher[i].tolist(), margins[i].tolist())
        expected += layer * [0.25, 0.5, 1.0][i]
    expected = expected / batch / 1000
    assert terms["feature"].item() == pytest.approx(expected, rel=1e-5)
    assert terms["total"].item() == pytest.approx(
        (terms["ce"] + terms["kd"]).item() + expected, rel=1e-5
    )


def test_partial_l2_skips_exactly_where_student_at_or_below_a_non_positive_target():
    method = OH(DistillSpec(), [(1, 1, 5)], [(1, 1, 5)])
    method.set_margin(0, torch.tensor([-1.0]))
    method.eval()
    connector = method.connectors[0]
    with torch.no_grad():  # make the connector the identity: 1x1 conv weight 1, BN eval with mean 0, var 1 - eps
        connector.conv.weight.fill_(1.0)
        connector.bn.running_var.fill_(1.0 - connector.bn.eps)
    student = torch.tensor([[[[-3.0, -0.5, 0.5, 2.0, -0.7]]]])
    teacher = torch.tensor([[[[-2.0, -0.2, -4.0, 1.0, 0.0]]]])
    # targets max(t, -1): -1, -0.2, -1, 1, 0. s=-3 <= -1 <= 0: skipped; s=-0.5 <= -0.2 <= 0: skipped;
    # s=0.5 > -1: (1.5)^2; target 1 > 0: (2 - 1)^2; s=-0.7 <= 0 <= 0: skipped (the target is not positive).
    loss = method.feature_loss([student], [teacher])
    assert loss.item() == pytest.approx((1.5**2 + 1.0**2) / 1, rel=1e-5)


def toy_networks():
    spec = spec_from_dict(toy_spec(distill={"methods": ["oh"]}))
    teacher, student = build(spec, verify=False).teacher, build_student(spec)
    method = create_method("oh", spec.distill, block_shapes(teacher, spec), block_shapes(student, spec))
    return spec, teacher, student, method


def test_margins_come_from_the_teachers_batchnorm_before_each_final_relu():
    _, teacher, _, method = toy_networks()
    with torch.no_grad():
        for norm in teacher.preactivation_norms():
            norm.weight.uniform_(0.5, 2.0)
            norm.bias.uniform_(-1.0, 1.0)
    method.prepare(teacher)
    for i, name in enumerate(["layer1.1.bn2", "layer2.1.bn2", "layer3.1.bn2"]):
        norm = teacher.blocks[i].get_submodule(name)
        expected = [hand_margin(g, b) for g, b in zip(norm.weight.tolist(), norm.bias.tolist())]
        torch.testing.assert_close(getattr(method, f"margin{i}").flatten(), torch.tensor(expected), rtol=1e-5, atol=1e-6)
    assert not any(name.startswith("margin") for name in method.state_dict())  # derived, not checkpointed


def test_gradients_reach_only_the_student_and_the_connectors():
    _, teacher, student, method = toy_networks()
    method.prepare(teacher)
    teacher.eval()  # as stage 2 keeps it; its parameters still require grad, so only no_grad can protect them
    margins = [getattr(method, f"margin{i}").clone() for i in range(3)]
    loss = distill_loss(student, teacher, method)
    terms, _ = loss(torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3]))
    assert terms["feature"].item() > 0
    terms["total"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.connectors.parameters())
    convs = [p for name, p in student.named_parameters() if "conv" in name and name.endswith("weight")]
    assert convs and all(p.grad is not None for p in convs)
    for i, margin in enumerate(margins):
        assert torch.equal(getattr(method, f"margin{i}"), margin)


def test_a_teacher_relu_without_a_batchnorm_is_a_clear_error():
    class NoNorm:
        taps = [type("Tap", (), {"block_end": "stage2"})()]

        def preactivation_norms(self):
            return [None]

    method = OH(DistillSpec(), [(4, 2, 2)], [(4, 2, 2)])
    with pytest.raises(SplicerError, match="teacher block end 'stage2' reads no such BatchNorm"):
        method.prepare(NoNorm())


def write_spec(tmp: Path, spec: dict) -> Path:
    path = tmp / f"{spec['name']}.yaml"
    spec = {
        **spec,
        "data": {"dataset": "synthetic", "synthetic_train": 64, "synthetic_test": 32},
        "train": {"epochs": 1, "batch_size": 32, "device": "cpu"},
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def toy_teacher(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The toy spec file and a standard teacher trained on it for one epoch."""
    tmp = tmp_path_factory.mktemp("oh")
    spec_file = write_spec(tmp, toy_spec())
    teacher = tmp / "teacher"
    result = runner.invoke(app, ["train", str(spec_file), "--standard", "--out", str(teacher), "-q"])
    assert result.exit_code == 0, result.output
    return spec_file, teacher


def distill_oh(spec_file: Path, teacher: Path, out: Path, epochs: int, resume: bool = False) -> None:
    args = ["distill", str(spec_file), "--teacher", str(teacher), "--method", "oh", "--out", str(out), "-q"]
    result = runner.invoke(app, [*args, "--epochs", str(epochs), *(["--resume"] if resume else [])])
    assert result.exit_code == 0, result.output


def test_oh_trains_through_splicer_distill(toy_teacher: tuple[Path, Path], tmp_path: Path):
    spec_file, teacher = toy_teacher
    distill_oh(spec_file, teacher, tmp_path / "oh", epochs=2)
    checkpoint = torch.load(tmp_path / "oh" / "last.pt", weights_only=True)
    assert checkpoint["meta"]["method"] == "oh" and checkpoint["epoch"] == 2
    assert any(key.startswith("connectors.0.conv") for key in checkpoint["extra"]["method"])
    metrics = [yaml.safe_load(line) for line in (tmp_path / "oh" / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["terms"]["feature"]) and r["terms"]["feature"] > 0 for r in metrics)


def test_resumed_oh_run_equals_an_uninterrupted_one(toy_teacher: tuple[Path, Path], tmp_path: Path):
    spec_file, teacher = toy_teacher
    distill_oh(spec_file, teacher, tmp_path / "straight", epochs=2)
    distill_oh(spec_file, teacher, tmp_path / "resumed", epochs=1)
    distill_oh(spec_file, teacher, tmp_path / "resumed", epochs=2, resume=True)
    straight = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    for part in ("model", "extra"):
        expected = straight[part] if part == "model" else straight[part]["method"]
        got = resumed[part] if part == "model" else resumed[part]["method"]
        assert expected.keys() == got.keys()
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=key)


def test_distill_refuses_oh_where_a_block_end_has_no_relu_before_creating_a_run(tmp_path: Path):
    spec_file = write_spec(tmp_path, toy_pair("preact_start"))  # stage1 and stage2 end with a conv
    teacher = tmp_path / "teacher"
    result = runner.invoke(app, ["train", str(spec_file), "--standard", "--out", str(teacher), "-q"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "oh"
    result = runner.invoke(app, ["distill", str(spec_file), "--teacher", str(teacher), "--method", "oh", "--out", str(out)])
    assert result.exit_code == 2
    assert "teacher block end 'stage1' ends with Conv2d" in result.output and "(OH, AB)" in result.output
    assert not out.exists()
