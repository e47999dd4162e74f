"""How a state_dict fits a network's own: the one comparison behind every "these weights do not fit" message.

Starting a teacher from weights (:mod:`splicer.assembly.teacher_start`) and loading a run's
checkpoint (:mod:`splicer.training.checkpoint_checks`) word their refusals for their own case,
but both need the same three lists and the same way of writing a shape.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class WeightsFit:
    """Keys the network needs that the weights lack, keys it does not have, and keys of another shape;
    each in the order the network (or, for ``unexpected``, the weights) lists them."""

    missing: list[str]
    unexpected: list[str]
    mismatched: list[str]

    @classmethod
    def compare(
        cls, weights: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor], needed: Iterable[str] | None = None
    ) -> WeightsFit:
        """``weights`` against the network's ``own`` state_dict; ``needed``: the keys that must be there
        (default: all of ``own``; fewer when the weights may leave out what the network does not use)."""
        return cls(
            missing=[key for key in (own if needed is None else needed) if key not in weights],
            unexpected=[key for key in weights if key not in own],
            mismatched=[
                key for key, tensor in own.items() if key in weights and weights[key].shape != tensor.shape
            ],
        )

    @property
    def fits(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)


def shape_text(tensor: torch.Tensor) -> str:
    """``64x3x3x3``; ``scalar`` for a 0-d tensor."""
    return "x".join(map(str, tensor.shape)) or "scalar"
