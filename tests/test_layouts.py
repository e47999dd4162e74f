"""Feature layouts (NCHW, NHWC, tokens with 0/1/2 prefix tokens, pooled tokens) and the transforms between them.

For each layout a small timm model is spliced with a CIFAR ResNet both as teacher and as
student: the teacher's blocks in sequence must equal the original model, every transform must
give exactly the student block's input (shape and layout), and forward + backward must reach
every parameter of every branch.
"""

from __future__ import annotations

import pytest
import torch

import splicer
from splicer.assembly.build import build_student
from splicer.errors import CutError
from splicer.spec import spec_from_dict
from splicer.synthesis.layouts import MapToNHWC, MapToTokens, NHWCToMap, TokensToMap
from splicer.synthesis.transforms import Transform, plan_transform
from splicer.trace.layouts import VALID_CONV_SHRINK, FeatureLayout, infer_layouts, is_grid, same_stage
from splicer.trace.shapes import propagate_shapes

VIT = {"img_size": 32, "patch_size": 8, "depth": 4}
# name: (network, input side, expected layout of the last block end)
MODELS: dict[str, tuple[dict, int, FeatureLayout]] = {
    "nchw": ({"model": "timm:resnet10t"}, 32, FeatureLayout("nchw", 512, (1, 1))),
    "nhwc": ({"model": "timm:mambaout_femto"}, 64, FeatureLayout("nhwc", 288, (2, 2))),
    "tokens_0_prefix": (
        {"model": "timm:vit_tiny_patch16_224", "kwargs": {**VIT, "class_token": False, "global_pool": "avg"}},
        32,
        FeatureLayout("tokens", 192, (4, 4), 0),
    ),
    "tokens_1_prefix": ({"model": "timm:vit_tiny_patch16_224", "kwargs": VIT}, 32, FeatureLayout("tokens", 192, (4, 4), 1)),
    "tokens_2_prefix": (
        {"model": "timm:deit_tiny_distilled_patch16_224", "kwargs": VIT},
        32,
        FeatureLayout("tokens", 192, (4, 4), 2),
    ),
    "pooled_tokens": (
        {"model": "timm:levit_128s", "kwargs": {"img_size": 64, "depth": (1, 1, 1)}},
        64,
        FeatureLayout("tokens", 384, (1, 1), 0, pooled=True),
    ),
}


def _spec(teacher: dict, student: dict, side: int):
    return spec_from_dict(
        {
            "name": "layouts",
            "num_classes": 10,
            "input_size": [3, side, side],
            "teacher": {"blocks": "auto", **teacher},
            "student": {"blocks": "auto", **student},
        }
    )


def _check_build(result: splicer.BuildResult) -> None:
    """Teacher equivalence, exact student-block input of every transform, gradients everywhere."""
    assert result.equivalence_error is not None and result.equivalence_error < 1e-5
    sftn = result.sftn.train()
    x = torch.randn(2, *result.spec.input_size)
    features, _ = sftn.teacher.forward_features(x)
    for i, (branch, plan) in enumerate(zip(sftn.branches, result.transforms)):
        assert plan.source_layout == result.teacher.block_layouts[i]
        assert plan.target_layout == result.student.block_layouts[i]
        assert tuple(branch.transform(features[i]).shape[1:]) == result.student.block_shapes[i]
    out = sftn(x)
    loss = out.teacher_logits.logsumexp(1).mean() + sum(z.logsumexp(1).mean() for z in out.branch_logits)
    loss.backward()
    assert [name for name, p in sftn.named_parameters() if p.grad is None] == []


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("role", ["teacher", "student"])
def test_every_layout_splices_both_ways(name: str, role: str) -> None:
    network, side, last_layout = MODELS[name]
    partner = {"model": "cifar:resnet8"}
    teacher, student = (network, partner) if role == "teacher" else (partner, network)
    result = splicer.compile_spec(_spec(teacher, student, side))
    plan = result.teacher if role == "teacher" else result.student
    assert plan.block_layouts[-1] == last_layout
    assert all(layout.kind == last_layout.kind for layout in plan.block_layouts)
    _check_build(result)


def test_token_grid_and_prefix_come_from_the_graph_on_a_non_square_input() -> None:
    """A 32x48 input gives a 4x6 patch grid; the class token is the one token left over."""
    network = {"model": "timm:vit_tiny_patch16_224", "kwargs": {**VIT, "img_size": (32, 48)}}
    spec = spec_from_dict(
        {
            "name": "wide",
            "num_classes": 10,
            "input_size": [3, 32, 48],
            "teacher": {"blocks": "auto", **network},
            "student": {"model": "timm:resnet10t", "blocks": "auto"},
        }
    )
    result = splicer.compile_spec(spec)
    assert {lay for lay in result.teacher.block_layouts} == {FeatureLayout("tokens", 192, (4, 6), 1)}
    _check_build(result)


def test_pooled_token_grids_shrink_between_stages() -> None:
    result = splicer.compile_spec(_spec({"model": "cifar:resnet8"}, MODELS["pooled_tokens"][0], 64), verify=False)
    layouts = result.student.block_layouts
    assert [lay.grid for lay in layouts] == [(4, 4), (2, 2), (1, 1)]
    assert [lay.pooled for lay in layouts] == [False, True, True]
    assert [lay.channels for lay in layouts] == [128, 256, 384]


def test_isotropic_model_is_cut_by_depth_into_equal_groups() -> None:
    """An 8-block ViT, auto: 4 groups of 2 blocks; the last block ends after the final norm."""
    vit = {"model": "timm:vit_tiny_patch16_224", "kwargs": {**VIT, "depth": 8}}
    result = splicer.compile_spec(_spec(vit, {"model": "timm:resnet10t"}, 32), verify=False)
    assert result.teacher.block_labels == ["blocks.1", "blocks.3", "blocks.5", "norm"]
    assert any("isotropic" in note for note in result.notes)


def test_isotropic_side_is_regrouped_to_pair_with_a_three_stage_network() -> None:
    vit = {"model": "timm:vit_tiny_patch16_224", "kwargs": {**VIT, "depth": 6}}
    result = splicer.compile_spec(_spec(vit, {"model": "cifar:resnet8"}, 32), verify=False)
    assert result.teacher.block_labels == ["blocks.1", "blocks.3", "norm"]
    assert result.student.block_labels == ["layer1", "layer2", "layer3"]


def test_a_block_end_without_a_feature_layout_is_refused() -> None:
    vit = {"model": "timm:vit_tiny_patch16_224", "kwargs": VIT, "blocks": ["blocks.1", "getitem_5"]}
    with pytest.raises(CutError, match=r"blocks\[1\]: 'getitem_5' has shape \(192,\).*token sequence"):
        splicer.compile_spec(_spec(vit, {"model": "cifar:resnet8", "blocks": ["layer1", "layer2"]}, 32), verify=False)


# --- the adapters and transforms on small tensors -------------------------------------------------


def test_tokens_to_map_and_back_on_a_non_square_grid() -> None:
    tokens = torch.randn(2, 2 + 3 * 5, 8)
    as_map = TokensToMap(2, (3, 5))(tokens)
    assert as_map.shape == (2, 8, 3, 5)
    # token k of the grid is pixel (k // 5, k % 5): row-major, as a patch embedding flattens
    assert torch.equal(as_map[:, :, 1, 4], tokens[:, 2 + 1 * 5 + 4])
    back = MapToTokens(2, 8)(as_map)
    assert back.shape == tokens.shape
    assert torch.equal(back[:, 2:], tokens[:, 2:])


def test_nhwc_permutes_round_trip() -> None:
    x = torch.randn(2, 3, 5, 8)
    as_map = NHWCToMap()(x)
    assert as_map.shape == (2, 8, 3, 5) and torch.equal(MapToNHWC()(as_map), x)


CASES = [
    (FeatureLayout("tokens", 16, (3, 5), 1), FeatureLayout("nchw", 8, (6, 10))),  # grow 2
    (FeatureLayout("nchw", 8, (6, 10)), FeatureLayout("tokens", 24, (3, 5), 2)),  # shrink 2
    (FeatureLayout("nhwc", 8, (6, 10)), FeatureLayout("tokens", 12, (6, 10), 0)),  # equal
    (FeatureLayout("tokens", 16, (3, 5), 2), FeatureLayout("nhwc", 8, (3, 5))),  # equal
    (FeatureLayout("tokens", 16, (3, 5), 1), FeatureLayout("tokens", 8, (4, 4), 1)),  # no integer ratio: resize
]


@pytest.mark.parametrize("source,target", CASES, ids=lambda lay: lay.describe().replace(" ", "_"))
def test_transform_between_layouts_gives_the_target_shape_and_learns(source, target) -> None:
    plan = plan_transform(source, target)
    transform = Transform(plan).train()
    out = transform(torch.randn(2, *source.shape, requires_grad=True))
    assert tuple(out.shape[1:]) == target.shape == plan.target_shape
    out.square().mean().backward()
    assert all(p.grad is not None for p in transform.parameters())
    if target.kind == "tokens" and target.prefix_tokens:
        assert transform.from_map.prefix.shape == (1, target.prefix_tokens, target.channels)
    text = plan.describe()
    assert ("prefix token" in text) == bool(
        (source.kind == "tokens" and source.prefix_tokens) or (target.kind == "tokens" and target.prefix_tokens)
    )


def test_nchw_transform_keeps_its_state_dict_keys() -> None:
    """No adapters between NCHW maps: checkpoints of earlier builds still load."""
    plan = plan_transform(FeatureLayout("nchw", 8, (4, 4)), FeatureLayout("nchw", 16, (4, 4)))
    assert set(Transform(plan).state_dict()) == {"conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked"}


def test_grid_check_uses_one_stride_for_both_axes() -> None:
    assert is_grid((4, 6), (32, 48)) and is_grid((4, 4), (56, 56))  # ceil(56 / 14) == 4
    assert not is_grid((4, 64), (64, 64)) and not is_grid((12, 16), (32, 32))


def test_unpadded_convolutions_leave_grids_a_few_pixels_short() -> None:
    """Inception at 96x96: 47 and 45 are no division of 96, but 48 (stride 2) less 1 and 3 pixels."""
    assert not is_grid((45, 45), (96, 96)) and is_grid((45, 45), (96, 96), shrink=VALID_CONV_SHRINK)
    assert not is_grid((40, 45), (96, 96), shrink=VALID_CONV_SHRINK)  # 40 and 45 are no shrink of one stride
    assert same_stage((47, 47), (45, 45)) and same_stage((8, 8), (8, 8))
    assert not same_stage((45, 45), (22, 22)) and not same_stage((5, 5), (3, 3)) and not same_stage((8, 8), (9, 9))


def test_a_shrunk_grid_is_a_map_only_where_a_convolution_wrote_it() -> None:
    """(heads, tokens, dim) attention values from a linear layer must not pass for short maps."""

    class Both(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, 2)  # 96 -> 47: a map
            self.proj = torch.nn.Linear(47, 45)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return self.proj(y).transpose(1, 2)  # (8, 45, 47) from a linear layer, read as (a, b, c)

    graph_module = torch.fx.symbolic_trace(Both())
    propagate_shapes(graph_module, (3, 96, 96))
    layouts = infer_layouts(graph_module, ["conv", "proj", "transpose"])
    assert layouts["conv"] == FeatureLayout("nchw", 8, (47, 47))
    assert "proj" not in layouts and "transpose" not in layouts


def test_verifying_on_fake_tensors_leaves_no_fake_state_in_the_branches() -> None:
    """ConViT caches its position indices on first use; a fake one would make every later forward fake."""
    from torch._subclasses.fake_tensor import FakeTensor

    convit = {"model": "timm:convit_tiny", "kwargs": {"img_size": 32, "patch_size": 8, "depth": 4}}
    result = splicer.compile_spec(_spec({"model": "cifar:resnet8"}, convit, 32))
    sftn = result.sftn.eval()
    with torch.no_grad():
        out = sftn(torch.randn(2, 3, 32, 32))
    assert not any(isinstance(z, FakeTensor) for z in out.branch_logits)
    assert torch.isfinite(torch.stack(out.branch_logits)).all()


def test_a_model_with_no_cut_point_after_its_stem_is_refused_not_cut_in_the_stem() -> None:
    """PiT passes its class token beside the map between stages: no single tensor is live there."""
    from splicer.errors import UnsupportedModelError

    pit = {"model": "timm:pit_ti_224", "kwargs": {"img_size": 64}}
    with pytest.raises(UnsupportedModelError, match=r"pos_drop, leaves \d+ of \d+ conv/linear layers to the head"):
        splicer.compile_spec(_spec(pit, {"model": "cifar:resnet8"}, 64), verify=False)


def test_block_nets_carry_their_block_end_layouts_and_methods_read_them_as_maps() -> None:
    """Stage-2 feature methods read every block end as a (C, H, W) map: a ViT student's tokens through
    the layout adapter (class token dropped, 4x4 patch grid restored), a CNN's maps as they are."""
    from splicer.training.stage2 import block_shapes

    vit = {"model": "timm:vit_tiny_patch16_224", "kwargs": VIT}
    spec = _spec({"model": "cifar:resnet8"}, vit, 32)
    student = build_student(spec)
    assert student.layouts and set(student.layouts) == {FeatureLayout("tokens", 192, (4, 4), 1)}
    assert block_shapes(student, spec) == [(192, 4, 4)] * len(student.blocks)
    assert block_shapes(student, spec, "native") == [(17, 192)] * len(student.blocks)
    cnn_spec = _spec(vit, {"model": "cifar:resnet8"}, 32)
    cnn = build_student(cnn_spec)
    assert {layout.kind for layout in cnn.layouts} == {"nchw"}
    assert block_shapes(cnn, cnn_spec) == block_shapes(cnn, cnn_spec, "native")
