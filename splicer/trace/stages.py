"""Automatic block boundaries: one block per resolution stage, as the paper cuts.

Stage ends come from the graph (:func:`splicer.trace.cuts.graph_stage_ends`). timm models carry
their authors' own stage ends (``feature_info``); those are used wherever they are valid
cut points. A first stage with fewer than two weight layers (an ImageNet stem, VGG8's first
conv) is merged into the next one: the paper never gives such a sliver a branch of its own.
"""

from __future__ import annotations

from itertools import combinations

from torch import nn

from splicer.errors import UnsupportedModelError
from splicer.trace.cuts import CutPoint, graph_stage_ends, module_last_nodes
from splicer.trace.tracer import TracedModel

_WEIGHT_LAYERS = (nn.Conv2d, nn.Linear, nn.ConvTranspose2d)
MIN_WEIGHT_LAYERS = 2


def check_feature_layout(model: nn.Module, cut_points: list[CutPoint], name: str) -> None:
    """Refuse models whose features are not (C, H, W) maps: token sequences, channels-last."""
    layout = getattr(model, "output_fmt", "NCHW")
    layout = getattr(layout, "value", layout)
    if str(layout).upper() != "NCHW":
        raise UnsupportedModelError(
            f"{name}: its features are channels-last ({layout}); splicer's transforms and student blocks "
            "need NCHW feature maps. Channels-last models (e.g. Swin) are not supported yet."
        )
    spatial = [c for c in cut_points if len(c.shape) == 3 and c.shape[1:] != (1, 1)]
    tokens = [c for c in cut_points if len(c.shape) == 2 and (not spatial or c.position > spatial[-1].position)]
    if not spatial or tokens:
        seen = f"e.g. {tokens[0].label} of shape {tokens[0].shape}" if tokens else "no (C, H, W) feature map at all"
        raise UnsupportedModelError(
            f"{name}: its features are token sequences ({seen}); splicer's transforms and student blocks need "
            "(channels, height, width) feature maps. Token-sequence models (e.g. ViT) are not supported yet."
        )


def feature_info_stage_ends(traced: TracedModel, model: nn.Module, cut_points: list[CutPoint]) -> list[CutPoint] | None:
    """timm's ``feature_info`` stage ends, each replaced by the graph's where it is no valid cut."""
    info = getattr(model, "feature_info", None)
    if not isinstance(info, list) or not info or not all(isinstance(i, dict) and "module" in i for i in info):
        return None
    by_node = {c.node: c for c in cut_points}
    by_path = {path: by_node[node] for path, node in module_last_nodes(traced).items() if node in by_node}
    graph_ends = graph_stage_ends(cut_points)
    input_height = int(traced.nodes[0].meta["tensor_meta"].shape[2])
    ends: list[CutPoint] = []
    for entry in info:
        cut = by_path.get(entry["module"].replace("/", "."))
        if cut is None or len(cut.shape) != 3:
            # Not a valid cut point (xception taps a pre-add activation): the graph's stage end
            # at the same reduction stands in.
            height = -(-input_height // int(entry.get("reduction", 1)))
            cut = next((c for c in graph_ends if c.shape[1] == height), None)
        if cut is not None and (not ends or cut.position > ends[-1].position):
            ends.append(cut)
    return ends or None


def auto_block_ends(
    traced: TracedModel, model: nn.Module, cut_points: list[CutPoint], num_blocks: int | None
) -> tuple[list[CutPoint], str]:
    """Block ends for ``blocks: auto`` and where they came from; with ``num_blocks`` the deepest that many."""
    ends = feature_info_stage_ends(traced, model, cut_points)
    origin = "timm feature_info"
    if ends is None:
        ends, origin = graph_stage_ends(cut_points), "graph stage ends"
    # The last block must end where the head begins: after the last spatial cut point.
    last_spatial = [c for c in cut_points if len(c.shape) == 3 and c.shape[1:] != (1, 1)][-1]
    if ends[-1].position < last_spatial.position and last_spatial.shape[1:] == ends[-1].shape[1:]:
        ends[-1] = last_spatial
    ends = merge_slivers(traced, _one_per_resolution(ends))
    if num_blocks is not None:
        ends = ends[-num_blocks:]
    return ends, origin


def _one_per_resolution(ends: list[CutPoint]) -> list[CutPoint]:
    """Keep the last of consecutive ends at one spatial size (an isotropic model is one stage)."""
    return [end for end, nxt in zip(ends, ends[1:] + [None]) if nxt is None or nxt.shape[1:] != end.shape[1:]]


def match_ends(ends: list[CutPoint], other_shapes: list[tuple[int, ...]]) -> list[CutPoint]:
    """Choose ``len(other_shapes)`` of ``ends`` to pair with the other network's block ends.

    The last end (before the head) always stays; among the rest, the choice that puts the most
    blocks at the same resolution as the other network wins (1x1 transforms, as the paper
    pairs), then the deepest.
    """
    n = len(other_shapes)
    best = max(
        (list(chosen) + [len(ends) - 1] for chosen in combinations(range(len(ends) - 1), n - 1)),
        key=lambda idx: (
            sum(ends[i].shape[1:] == other[1:] for i, other in zip(idx, other_shapes)),
            idx,
        ),
    )
    return [ends[i] for i in best]


def merge_slivers(traced: TracedModel, ends: list[CutPoint]) -> list[CutPoint]:
    """Merge a leading stage with fewer than MIN_WEIGHT_LAYERS conv/linear layers (a stem) into the next."""
    weights_before = _weight_layer_counts(traced)
    if len(ends) > 2 and weights_before[ends[0].position] < MIN_WEIGHT_LAYERS:
        return ends[1:]
    return ends


def _weight_layer_counts(traced: TracedModel) -> list[int]:
    """For each node position, how many conv/linear layers run up to and including it."""
    modules = dict(traced.graph_module.named_modules())
    counts, total = [], 0
    for node in traced.nodes:
        if node.op == "call_module" and isinstance(modules.get(node.target), _WEIGHT_LAYERS):
            total += 1
        counts.append(total)
    return counts
