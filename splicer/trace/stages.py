"""Automatic block boundaries: one block per resolution stage, as the paper cuts.

Stage ends come from the graph (:func:`splicer.trace.cuts.graph_stage_ends`); a stage is a
run of cut points at one grid size (or a few pixels less after unpadded convolutions, as in
Inception), whatever the layout (NCHW, NHWC, tokens), so staged transformers (Swin, PVT,
MViT, LeViT) get one block per stage like CNNs. timm models carry
their authors' own stage ends (``feature_info``); those are used wherever they are valid
cut points. A first stage with fewer than two weight layers (an ImageNet stem, VGG8's first
conv) is merged into the next one: the paper never gives such a sliver a branch of its own.

An isotropic model (ViT, ConvMixer, MLP-Mixer) keeps one grid from its stem to its head, so
it has one stage; it is cut by depth instead (:func:`depth_block_ends`): its repeated blocks
into ``num_blocks`` equal groups (default 4, as the paper cuts VGG).
"""

from __future__ import annotations

from itertools import combinations

from torch import nn

from splicer.errors import UnsupportedModelError
from splicer.trace.cuts import CutPoint, feature_cuts, graph_stage_ends, module_last_nodes
from splicer.trace.layouts import same_stage
from splicer.trace.tracer import TracedModel

_WEIGHT_LAYERS = (nn.Conv2d, nn.Linear, nn.ConvTranspose2d)
MIN_WEIGHT_LAYERS = 2
ISOTROPIC_BLOCKS = 4


def check_feature_layout(model: nn.Module, cut_points: list[CutPoint], name: str) -> None:
    """Refuse a model with no cut point that holds a feature (map or token grid) at all."""
    if not feature_cuts(cut_points):
        shapes = ", ".join(f"{c.label} {c.shape}" for c in cut_points[:4]) or "none"
        raise UnsupportedModelError(
            f"{name}: no valid cut point holds a feature map or a token grid (cut points: {shapes}); "
            "a block end must be an NCHW or NHWC map or a token sequence over a patch grid"
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
        if cut is None or cut.layout is None:
            # Not a valid cut point (xception taps a pre-add activation): the graph's stage end
            # at the same reduction stands in.
            height = -(-input_height // int(entry.get("reduction", 1)))
            cut = next((c for c in graph_ends if c.layout.grid[0] == height), None)
        if cut is not None and (not ends or cut.position > ends[-1].position):
            ends.append(cut)
    return ends or None


def auto_block_ends(
    traced: TracedModel, model: nn.Module, cut_points: list[CutPoint], num_blocks: int | None
) -> tuple[list[CutPoint], str]:
    """Block ends for ``blocks: auto`` and where they came from.

    Staged models: one block per stage, with ``num_blocks`` the deepest that many. Isotropic
    models (fewer than two stages): ``num_blocks`` (default 4) equal groups of blocks.
    """
    features = feature_cuts(cut_points)
    if not features:
        return [], "no feature cut points"
    ends = feature_info_stage_ends(traced, model, cut_points)
    origin = "timm feature_info"
    if ends is None:
        ends, origin = graph_stage_ends(cut_points), "graph stage ends"
    # The last block must end where the head begins: after the last feature cut point.
    last = features[-1]
    if ends and ends[-1].position < last.position and same_stage(ends[-1].layout.grid, last.layout.grid):
        ends[-1] = last
    ends = merge_slivers(traced, _one_per_resolution(ends))
    if len(ends) < 2:
        ends = depth_block_ends(traced, model, cut_points, num_blocks or ISOTROPIC_BLOCKS)
        origin = "isotropic: equal groups by depth"
    elif num_blocks is not None:
        ends = ends[-num_blocks:]
    _check_head(traced, ends)
    return ends, origin


def _check_head(traced: TracedModel, ends: list[CutPoint]) -> None:
    """Refuse automatic ends that leave most of the network to the head.

    That happens when no single tensor is live between the later stages (PiT passes its
    class tokens beside the map): the last valid cut point is then in the stem.
    """
    if not ends:
        return
    counts = _weight_layer_counts(traced, inside_opaque=True)
    in_blocks, total = counts[ends[-1].position], counts[-1]
    if total - in_blocks > in_blocks:
        raise UnsupportedModelError(
            f"blocks: auto: the last valid cut point, {ends[-1].label}, leaves {total - in_blocks} of {total} "
            "conv/linear layers to the head: no single tensor is live between the model's later stages "
            "(e.g. class tokens passed beside the feature map), so it cannot be cut into blocks there"
        )


def is_isotropic(ends: list[CutPoint]) -> bool:
    """Whether block ends all share one grid (an isotropic model cut by depth)."""
    return len({c.layout.grid for c in ends if c.layout is not None}) == 1 and len(ends) > 1


def depth_block_ends(
    traced: TracedModel, model: nn.Module, cut_points: list[CutPoint], num_blocks: int
) -> list[CutPoint]:
    """``num_blocks`` block ends splitting an isotropic model's repeated blocks into equal groups.

    The repeated blocks are timm's ``feature_info`` taps where the model has them, else the
    largest family of sibling modules ``parent.0``, ``parent.1``, ... whose outputs are cut
    points at the final grid, else every feature cut point at that grid. The last block ends
    at the last feature cut point (after the final norm), where the head begins.
    """
    features = feature_cuts(cut_points)
    final_grid = features[-1].layout.grid
    at_grid = [c for c in features if c.layout.grid == final_grid]
    units = _repeated_units(traced, model, at_grid)
    if len(units) < num_blocks:
        units = at_grid
    if len(units) < num_blocks:
        return units
    chosen = [units[-(-(k + 1) * len(units) // num_blocks) - 1] for k in range(num_blocks - 1)]
    last = features[-1]
    chosen = [c for c in chosen if c.position < last.position]
    return chosen + [last]


def _repeated_units(traced: TracedModel, model: nn.Module, candidates: list[CutPoint]) -> list[CutPoint]:
    info = feature_info_stage_ends(traced, model, candidates)
    if info is not None and len(info) >= 2 and is_isotropic(info):
        return info
    families: dict[str, list[CutPoint]] = {}
    for cut in candidates:
        parent, _, index = (cut.module_path or "").rpartition(".")
        if parent and index.isdigit():
            families.setdefault(parent, []).append(cut)
    return max(families.values(), key=len, default=[])


def _one_per_resolution(ends: list[CutPoint]) -> list[CutPoint]:
    """Keep the last of consecutive ends in one stage (an isotropic model is one stage)."""
    return [
        end for end, nxt in zip(ends, ends[1:] + [None]) if nxt is None or not same_stage(end.layout.grid, nxt.layout.grid)
    ]


def match_ends(ends: list[CutPoint], other_grids: list[tuple[int, int]]) -> list[CutPoint]:
    """Choose ``len(other_grids)`` of ``ends`` to pair with the other network's block ends.

    The last end (before the head) always stays; among the rest, the choice that puts the most
    blocks at the same grid as the other network wins (1x1 transforms, as the paper pairs),
    then the deepest.
    """
    n = len(other_grids)
    best = max(
        (list(chosen) + [len(ends) - 1] for chosen in combinations(range(len(ends) - 1), n - 1)),
        key=lambda idx: (
            sum(ends[i].layout.grid == other for i, other in zip(idx, other_grids)),
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


def _weight_layer_counts(traced: TracedModel, inside_opaque: bool = False) -> list[int]:
    """For each node position, how many conv/linear layers run up to and including it; with
    ``inside_opaque``, also those inside a module the tracer kept opaque (timm's NF-Net stages
    hold their convs out of the graph's sight)."""
    modules = dict(traced.graph_module.named_modules())
    counts, total = [], 0
    for node in traced.nodes:
        module = modules.get(node.target) if node.op == "call_module" else None
        if module is not None:
            layers = module.modules() if inside_opaque else [module]
            total += sum(isinstance(m, _WEIGHT_LAYERS) for m in layers)
        counts.append(total)
    return counts
