"""Automatic block boundaries: one block per resolution stage, as the paper cuts.

Stage ends come from the graph (the last cut point before each change of spatial size).
A stage with fewer than two weight layers (an ImageNet stem, VGG8's first conv) is merged
into the next one: the paper never gives such a sliver a branch of its own.
"""

from __future__ import annotations

from torch import nn

from splicer.trace.cuts import CutPoint
from splicer.trace.tracer import TracedModel

_WEIGHT_LAYERS = (nn.Conv2d, nn.Linear, nn.ConvTranspose2d)
MIN_WEIGHT_LAYERS = 2


def stage_ends(traced: TracedModel, cut_points: list[CutPoint]) -> list[CutPoint]:
    """Stage-end cut points, slivers merged into the stage that follows them."""
    weights_before = _weight_layer_counts(traced)
    ends = [c for c in cut_points if c.stage_end]
    kept: list[CutPoint] = []
    previous = 0
    for i, end in enumerate(ends):
        last = i == len(ends) - 1
        if last or weights_before[end.position] - previous >= MIN_WEIGHT_LAYERS:
            kept.append(end)
            previous = weights_before[end.position]
    return kept


def auto_block_ends(traced: TracedModel, cut_points: list[CutPoint], num_blocks: int | None) -> list[CutPoint]:
    """Block ends for ``blocks: auto``; with ``num_blocks`` the deepest that many stages."""
    ends = stage_ends(traced, cut_points)
    if num_blocks is not None:
        ends = ends[-num_blocks:]
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
