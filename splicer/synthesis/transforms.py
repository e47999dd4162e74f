"""Transform layers T^i: map a teacher feature to the shape a student block expects.

The paper's rule (section 3.1): a 1x1 conv when the spatial size is equal, a 3x3 conv with
stride r to shrink by r, a transposed conv (kernel 2r, stride r) to grow by r; each followed
by BN and ReLU. Height and width are planned independently, so non-square maps work. Where
no integer ratio fits, a 1x1 conv maps channels and adaptive average pooling (shrink) or
bilinear resizing (grow) sets the size; the plan says so, and the build report shows it.
The spec's ``transforms`` section can widen the equal-size conv to 3x3 or drop the ReLU, to
measure how much the transform matters; the defaults are the paper's.

Features that are not NCHW maps (token sequences, channels-last maps; see
:mod:`splicer.trace.layouts`) are viewed as maps before the conv and put back into the
student's layout after it (:mod:`splicer.synthesis.layouts`); the plan records both layouts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from torch import Tensor, nn
from torch.nn import functional as F

from splicer.synthesis.layouts import describe_from_map, describe_to_map, from_map, to_map
from splicer.trace.layouts import FeatureLayout

Shape = tuple[int, int, int]
Kind = Literal["equal", "shrink", "grow", "resize"]


@dataclass(frozen=True)
class TransformPlan:
    """How one teacher feature (C, H, W) is mapped to a student input (C', H', W')."""

    source: Shape
    target: Shape
    kind: Kind
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    note: str = ""
    activation: bool = True  # ReLU after BN, as the paper; False leaves conv + BN
    source_layout: FeatureLayout | None = None  # None: an NCHW map of shape ``source``
    target_layout: FeatureLayout | None = None

    @property
    def target_shape(self) -> tuple[int, ...]:
        """The per-sample shape the transform outputs: the student block's input, in its layout."""
        return self.target_layout.shape if self.target_layout is not None else self.target

    def layer(self) -> str:
        """The layer alone, e.g. ``3x3 conv stride 2`` (``, no ReLU`` when the ReLU is dropped)."""
        return self._conv() + ("" if self.activation else ", no ReLU")

    def describe(self) -> str:
        """The conv (see :meth:`describe_conv`), with the layout changes around it."""
        before = describe_to_map(self.source_layout) if self.source_layout else ""
        after = describe_from_map(self.target_layout) if self.target_layout else ""
        return "; ".join(step for step in (before, self.describe_conv(), after) if step)

    def describe_conv(self) -> str:
        """One line for reports, e.g. ``3x3 conv stride 2: 128x32x32 -> 64x16x16``."""
        src = "x".join(map(str, self.source))
        dst = "x".join(map(str, self.target))
        text = f"{self._conv()}: {src} -> {dst}" + ("" if self.activation else ", no ReLU")
        return f"{text} ({self.note})" if self.note else text

    def _conv(self) -> str:
        k = "x".join(map(str, self.kernel))
        stride = self.stride[0] if self.stride[0] == self.stride[1] else "x".join(map(str, self.stride))
        return {
            "equal": f"{k} conv",
            "shrink": f"{k} conv stride {stride}",
            "grow": f"{k} transposed conv stride {stride}",
            "resize": f"{k} conv + adaptive resize",
        }[self.kind]


def _axis(source: int, target: int) -> tuple[str, int] | None:
    """How one spatial axis maps: ('equal'|'shrink'|'grow', ratio), None when no integer ratio fits."""
    if source == target:
        return "equal", 1
    if source > target and source % target == 0:
        return "shrink", source // target
    if target > source and target % source == 0:
        return "grow", target // source
    return None


def plan_transform(
    source: Shape | FeatureLayout, target: Shape | FeatureLayout, equal_kernel: int = 1, activation: bool = True
) -> TransformPlan:
    """Choose the transform from teacher feature ``source`` to student input ``target``.

    Each is an NCHW map shape ``(C, H, W)`` or a :class:`FeatureLayout` of any kind, whose map
    view the conv works on. ``equal_kernel`` (odd) is the conv kernel where the sizes are equal
    (paper: 1); ``activation`` puts a ReLU after the BN (paper: yes).
    """
    source_layout = source if isinstance(source, FeatureLayout) else None
    target_layout = target if isinstance(target, FeatureLayout) else None
    source_map = source.map_shape if isinstance(source, FeatureLayout) else source
    target_map = target.map_shape if isinstance(target, FeatureLayout) else target
    plan = _plan_geometry(tuple(source_map), tuple(target_map), equal_kernel)
    return dataclasses.replace(plan, activation=activation, source_layout=source_layout, target_layout=target_layout)


def _plan_geometry(source: Shape, target: Shape, equal_kernel: int) -> TransformPlan:
    axes = [_axis(source[1], target[1]), _axis(source[2], target[2])]
    directions = {axis[0] for axis in axes if axis is not None and axis[0] != "equal"}
    if None in axes or len(directions) > 1:
        note = f"no integer ratio maps {source[1]}x{source[2]} to {target[1]}x{target[2]}"
        if None not in axes:
            note = f"height and width scale in opposite directions ({source[1]}x{source[2]} -> {target[1]}x{target[2]})"
        return TransformPlan(source, target, "resize", (1, 1), (1, 1), (0, 0), note)
    ratios = tuple(axis[1] for axis in axes)
    if not directions:
        pad = equal_kernel // 2
        return TransformPlan(source, target, "equal", (equal_kernel, equal_kernel), (1, 1), (pad, pad))
    (direction,) = directions
    if direction == "shrink":
        return TransformPlan(source, target, "shrink", (3, 3), ratios, (1, 1))
    # Grow: kernel 2r with padding r/2 gives exactly r*H; odd r uses kernel r, no padding.
    kernel = tuple(2 * r if r % 2 == 0 else r for r in ratios)
    padding = tuple(r // 2 if r % 2 == 0 else 0 for r in ratios)
    return TransformPlan(source, target, "grow", kernel, ratios, padding)


class Resize(nn.Module):
    """Adaptive average pooling to shrink, bilinear interpolation to grow, to a fixed size."""

    def __init__(self, size: tuple[int, int], grow: bool) -> None:
        super().__init__()
        self.size = size
        self.grow = grow

    def forward(self, x: Tensor) -> Tensor:
        if self.grow:
            return F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return F.adaptive_avg_pool2d(x, self.size)

    def extra_repr(self) -> str:
        return f"size={self.size}, grow={self.grow}"


class Transform(nn.Sequential):
    """Conv (or transposed conv) + BN (+ ReLU), built from a :class:`TransformPlan`.

    Between layout adapters (``to_map`` first, ``from_map`` last) where teacher or student
    features are not NCHW maps; an NCHW-to-NCHW transform has none, so its state_dict keys
    are the same as before layouts existed.
    """

    def __init__(self, plan: TransformPlan) -> None:
        c_in, c_out = plan.source[0], plan.target[0]
        if plan.kind == "grow":
            conv: nn.Module = nn.ConvTranspose2d(
                c_in, c_out, plan.kernel, stride=plan.stride, padding=plan.padding, bias=False
            )
        else:
            conv = nn.Conv2d(c_in, c_out, plan.kernel, stride=plan.stride, padding=plan.padding, bias=False)
        super().__init__()
        view = to_map(plan.source_layout) if plan.source_layout is not None else None
        if view is not None:
            self.to_map = view
        self.conv = conv
        self.bn = nn.BatchNorm2d(c_out)
        if plan.activation:
            self.relu = nn.ReLU(inplace=True)
        if plan.kind == "resize":
            grow = plan.target[1] * plan.target[2] > plan.source[1] * plan.source[2]
            self.resize = Resize((plan.target[1], plan.target[2]), grow)
        put = from_map(plan.target_layout) if plan.target_layout is not None else None
        if put is not None:
            self.from_map = put
