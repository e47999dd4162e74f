"""A BlockNet that can also return each block end's pre-activation (the value before its final ReLU).

Kept apart from :class:`~splicer.assembly.modules.BlockNet`, whose source the standalone
``sftn.py`` reproduces: the taps are a training-time view of the same blocks and weights.
``forward`` and ``forward_features`` are BlockNet's own, untouched; only
:meth:`TappedBlockNet.forward_preactivations` runs the tapped code.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from splicer.errors import SplicerError
from splicer.assembly.modules import BlockNet
from splicer.trace.layouts import FeatureLayout
from splicer.trace.preactivation import PreActivationTap, TappedForward, tapped_forward


class TappedBlockNet(BlockNet):
    """BlockNet plus one :class:`PreActivationTap` per block, found by the compiler in the traced graph."""

    def __init__(
        self,
        blocks: list[nn.Module],
        head: nn.Module,
        clone_inputs: list[bool] | None = None,
        taps: list[PreActivationTap] | None = None,
        layouts: list[str] | None = None,
        feature_layouts: list[FeatureLayout] | None = None,
    ) -> None:
        super().__init__(blocks, head, clone_inputs)
        self.layouts = list(layouts or [])  # per block end: "" for an NCHW map, else its layout (tokens, NHWC)
        self.feature_layouts = list(feature_layouts) if feature_layouts is not None else None  # for any_layout methods
        if taps is not None and len(taps) != len(blocks):
            raise ValueError(f"{len(blocks)} blocks need {len(blocks)} taps, got {len(taps)}")
        self.taps: list[PreActivationTap] = list(taps or [])
        self._tapped: list[TappedForward] | None = None  # generated on first use

    def check_feature_maps(self, role: str, method: str) -> None:
        """Feature methods read block outputs as NCHW maps: refuse token or channels-last block ends by name."""
        for k, layout in enumerate(self.layouts, start=1):
            if layout:
                raise SplicerError(
                    f"--method {method} distils block outputs as NCHW feature maps, but {role} block {k} ends "
                    f"in {layout}; use a logit method (kd, dkd) for this pair, or cut it where it has NCHW maps"
                )

    def check_preactivations(self, role: str, method: str | None = None) -> None:
        """Raise the user-facing error if some block end has no pre-activation (does not end in a ReLU).

        ``role`` (teacher, student) and ``method`` (the distillation method asking) name them in the message.
        """
        if len(self.taps) != len(self.blocks):
            raise ValueError(f"this {role} network was built without pre-activation taps")
        for tap in self.taps:
            if not tap.found:
                raise tap.error(role, method)

    def preactivation_norms(self) -> list[nn.Module | None]:
        """For each block end, the BatchNorm module whose output its final ReLU reads (None where none was found)."""
        norms: list[nn.Module | None] = []
        for block, tap in zip(self.blocks, self.taps, strict=True):
            norms.append(block.get_submodule(tap.norm) if tap.norm else None)
        return norms

    def forward_preactivations(self, x: Tensor) -> tuple[list[Tensor], list[Tensor], Tensor]:
        """Every block's output, every block end's pre-activation, and the logits.

        The block outputs and logits equal :meth:`forward_features`'s; gradients flow
        through the pre-activations as through any other output.
        """
        if self._tapped is None:
            self.check_preactivations("network")
            self._tapped = [tapped_forward(block, tap) for block, tap in zip(self.blocks, self.taps, strict=True)]
        features, preactivations = [], []
        for block, clone, forward in zip(self.blocks, self.clone_inputs, self._tapped):
            x, pre = forward(block, x.clone() if clone else x)
            features.append(x)
            preactivations.append(pre)
        return features, preactivations, self.head(x)

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the generated code (it is regenerated on first use)."""
        state = dict(super().__getstate__())
        state["_tapped"] = None
        return state
