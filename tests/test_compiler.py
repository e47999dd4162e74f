"""The compiler end to end: equivalence, emitted source, gradients, cut-point errors."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

import splicer
from splicer.emission.artifacts import emit_artifacts
from splicer.errors import CutError, SplicerError
from splicer.spec import spec_from_dict
from tests.conftest import REPO, toy_pair, toy_spec

VGG_SPEC = REPO / "specs" / "vgg13_vgg8.yaml"


@pytest.fixture(scope="module")
def vgg_result():
    return splicer.compile_spec(VGG_SPEC)


def test_teacher_blocks_in_sequence_reproduce_the_teacher(vgg_result):
    original = vgg_result.teacher.model.eval()
    teacher = vgg_result.sftn.teacher.eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        diff = (teacher(x) - original(x)).abs().max().item()
    assert diff < 1e-5
    assert vgg_result.equivalence_error is not None and vgg_result.equivalence_error < 1e-5


def test_sftn_output_structure(vgg_result):
    sftn = vgg_result.sftn.eval()
    with torch.no_grad():
        out = sftn(torch.randn(2, 3, 32, 32))
    assert out.teacher_logits.shape == (2, 100)
    assert len(out.branch_logits) == 3 and all(z.shape == (2, 100) for z in out.branch_logits)
    assert [tuple(f.shape[1:]) for f in out.teacher_features] == [(128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 4, 4)]
    assert isinstance(sftn.branches, torch.nn.ModuleList) and len(sftn.branches) == 3


def test_sftn_teacher_shares_parameters(vgg_result):
    sftn = vgg_result.sftn
    teacher_ids = {id(p) for p in sftn.teacher.parameters()}
    assert teacher_ids <= {id(p) for p in sftn.parameters()}
    assert not teacher_ids & {id(p) for p in sftn.branches.parameters()}


def test_forward_backward_reaches_every_parameter():
    result = splicer.compile_spec(spec_from_dict(toy_spec()))
    sftn = result.sftn.train()
    out = sftn(torch.randn(4, 3, 16, 16))
    loss = out.teacher_logits.logsumexp(1).mean() + sum(z.logsumexp(1).mean() for z in out.branch_logits)
    loss.backward()
    missing = [name for name, p in sftn.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_branches_start_from_fresh_student_weights():
    sftn = splicer.build(spec_from_dict(toy_spec()))
    first = sftn.branches[0].blocks[-1].state_dict()
    second = sftn.branches[1].blocks[-1].state_dict()
    weights = [k for k in first if k.endswith("conv1.weight")]
    assert weights and all(not torch.equal(first[k], second[k]) for k in weights)


def test_emitted_source_runs_in_a_fresh_process(vgg_result, tmp_path):
    written = emit_artifacts(vgg_result, tmp_path)
    assert {"source", "report", "dot", "mermaid", "spec"} <= set(written)
    sftn = vgg_result.sftn.eval()
    torch.save(sftn.state_dict(), tmp_path / "weights.pt")
    x = torch.randn(2, 3, 32, 32)
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        expected = sftn(x)
    script = textwrap.dedent(
        """
        import sys, torch
        from sftn import SFTN
        model = SFTN()
        model.load_state_dict(torch.load("weights.pt", weights_only=True))  # strict: same keys and shapes
        model.eval()
        with torch.no_grad():
            out = model(torch.load("x.pt"))
        torch.save({"teacher": out.teacher_logits, "branches": out.branch_logits}, "out.pt")
        assert "splicer" not in sys.modules
        """
    )
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, check=True)
    got = torch.load(tmp_path / "out.pt")
    assert torch.allclose(got["teacher"], expected.teacher_logits, atol=1e-6)
    for a, b in zip(got["branches"], expected.branch_logits):
        assert torch.allclose(a, b, atol=1e-6)


def test_emitted_state_dict_keys_match(vgg_result, tmp_path):
    emit_artifacts(vgg_result, tmp_path)
    sys.path.insert(0, str(tmp_path))
    try:
        import sftn as emitted

        built = vgg_result.sftn.state_dict()
        standalone = emitted.SFTN().state_dict()
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("sftn", None)
    assert list(built) == list(standalone)
    assert all(built[k].shape == standalone[k].shape for k in built)


def test_cut_inside_a_residual_block_names_the_crossing_values():
    spec = toy_spec()
    spec["teacher"]["blocks"] = ["layer1.0.conv1", "layer2", "layer3"]
    with pytest.raises(CutError) as info:
        splicer.build(spec_from_dict(spec, source="toy.yaml"))
    message = str(info.value)
    assert message.startswith("toy.yaml: teacher.blocks[0]: 'layer1.0.conv1' is not a valid block end")
    assert "other values cross the cut there (stem_2)" in message
    assert "nearest valid cut points: stem, add" in message


def test_unknown_block_end_suggests_the_closest_cut_points():
    spec = toy_spec()
    spec["student"]["blocks"] = ["layer1", "layr2", "layer3"]
    with pytest.raises(CutError, match=r"student.blocks\[1\]: 'layr2' is neither a node nor a module.*closest valid cut points: layer2"):
        splicer.build(spec_from_dict(spec, source="toy.yaml"))


def test_block_ends_out_of_order_and_count_mismatch():
    spec = toy_spec()
    spec["teacher"]["blocks"] = ["layer2", "layer1", "layer3"]
    with pytest.raises(CutError, match="in the order the model computes them: layer1, layer2, layer3"):
        splicer.build(spec_from_dict(spec))
    spec = toy_spec()
    spec["teacher"]["blocks"] = ["layer2", "layer3"]
    with pytest.raises(CutError, match="student.blocks: lists 3 block ends and teacher.blocks 2"):
        splicer.build(spec_from_dict(spec))


def test_the_logits_are_not_a_block_end():
    spec = toy_spec()
    spec["teacher"]["blocks"] = ["layer1", "layer2", "fc"]
    with pytest.raises(CutError, match="the last block end must come before the classification head"):
        splicer.build(spec_from_dict(spec))


def test_block_whose_input_is_modified_in_place_gets_a_copy():
    spec = toy_pair("preact_start")
    sftn = splicer.build(spec_from_dict(spec))
    assert sftn.teacher.clone_inputs == [False, True]
    assert sftn.branches[0].clone_input
    out = sftn(torch.randn(2, 3, 16, 16))
    assert (out.teacher_features[0] < 0).any()  # the feature the branch reads was not ReLU'd in place
    (out.teacher_logits.sum() + out.branch_logits[0].sum()).backward()


def test_build_accepts_a_path_and_a_spec(vgg_result):
    assert isinstance(splicer.build(VGG_SPEC, verify=False), splicer.SFTN)
    with pytest.raises(SplicerError, match="missing.yaml: no such file"):
        splicer.build(REPO / "specs" / "missing.yaml")


def test_a_batch_size_read_at_the_top_does_not_block_cuts():
    spec = toy_pair("batch_size_reader")
    result = splicer.compile_spec(spec_from_dict(spec))
    assert result.equivalence_error == 0.0
    out = result.sftn(torch.randn(5, 3, 16, 16))  # another batch size than the trace's
    assert out.teacher_logits.shape == (5, 10) and out.branch_logits[0].shape == (5, 10)


def test_functional_dropout_follows_train_and_eval_mode():
    spec = toy_pair("functional_dropout_head")
    result = splicer.compile_spec(spec_from_dict(spec))  # traced in train mode, checked in eval mode
    assert result.equivalence_error == 0.0
    teacher, x = result.sftn.teacher.train(), torch.randn(4, 3, 16, 16)
    assert not torch.equal(teacher(x), teacher(x))  # dropout is live in train mode
    branch = result.sftn.branches[0].eval()
    feature = result.sftn.teacher.eval().forward_features(x)[0][0]
    assert torch.equal(branch(feature), branch(feature))


def test_modules_that_read_the_training_flag_stay_modules_and_dim0_reads_are_not_all_batch():
    spec = toy_pair("tricky_net")
    result = splicer.compile_spec(spec_from_dict(spec))  # traced in train mode, checked in eval mode
    assert result.equivalence_error == 0.0
    assert any(n.op == "call_module" and n.target == "stage1.3" for n in result.teacher.traced.nodes)
    sftn = result.sftn.eval()
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        first, second = sftn(x), sftn(x)
    assert torch.equal(first.teacher_logits, second.teacher_logits)
    assert first.branch_logits[0].shape == (5, 10)


def test_an_isotropic_cnn_is_cut_by_depth_to_pair_with_the_student():
    """ConvMixer keeps one grid throughout: its 32 blocks are split into equal groups, one per student block."""
    spec = toy_spec()
    spec["teacher"] = {"model": "timm:convmixer_768_32"}
    result = splicer.compile_spec(spec_from_dict({**spec, "input_size": [3, 32, 32]}), verify=False)
    n = len(result.student.block_ends)
    assert len(result.teacher.block_ends) == n >= 2
    assert all(label.startswith("blocks") for label in result.teacher.block_labels)
    assert len({layout.grid for layout in result.teacher.block_layouts}) == 1
    assert any("isotropic" in note for note in result.notes)


def test_spec_transforms_reach_the_branches_the_report_and_the_emitted_source(tmp_path):
    result = splicer.compile_spec(spec_from_dict(toy_spec(transforms={"equal_kernel": 3, "activation": False})))
    transform = result.sftn.branches[0].transform
    assert transform.conv.kernel_size == (3, 3) and not hasattr(transform, "relu")
    assert all(plan.describe().endswith(", no ReLU") for plan in result.transforms)
    emit_artifacts(result, tmp_path)
    assert "3x3 conv" in (tmp_path / "report.md").read_text()
    sys.path.insert(0, str(tmp_path))
    try:
        import sftn as emitted

        standalone = emitted.SFTN()
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("sftn", None)
    standalone.load_state_dict(result.sftn.state_dict())
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected, got = result.sftn.eval()(x), standalone.eval()(x)
    for a, b in zip(got.branch_logits, expected.branch_logits):
        assert torch.allclose(a, b, atol=1e-6)
