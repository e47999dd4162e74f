"""The feature layout at each cut point: NCHW map, NHWC map, or token sequence.

A block end can be a feature map in channels-first order (CNNs: ``(C, H, W)``), in
channels-last order (Swin, MambaOut: ``(H, W, C)``), or a token sequence ``(P + h*w, C)``: a
patch grid of ``h x w`` tokens after ``P`` prefix tokens (class, distillation and register
tokens, which timm and the papers it follows put in front). A token grid that shrinks from
stage to stage (LeViT, PiT) is *pooled*. The layout is found from shapes and the traced
graph, never from the model's name:

- Every map axis pair is checked against the input: a feature grid of a network with overall
  stride ``s`` is ``floor`` or ``ceil`` of ``(H / s, W / s)``. A 3-D value ``(a, b, c)`` is NCHW
  when ``(b, c)`` is such a grid and NHWC when ``(a, b)`` is. Where both fit (a tiny map whose
  channels happen to match a grid), the layer that produced the value decides: a convolution
  or a 2-D norm writes NCHW, a linear layer or layer norm writes channels last. Unpadded
  ("valid") convolutions leave a map a few pixels short of ``H / s`` (Inception: 47 and 45 at
  stride 2 of 96): such a grid, up to ``VALID_CONV_SHRINK`` pixels short on each axis, is a
  map too where a convolution or a 2-D norm wrote it.
- A 2-D value ``(L, C)`` is a token sequence. Its grid is that of the latest feature map with
  ``C`` channels computed before it (the patch embedding's convolution output, or the map a
  pooling stage reshaped tokens into); the prefix tokens are what is left over, ``L - h*w``
  (the ``cat`` of a class token onto the patch tokens). Where no such map exists, timm's
  generic attributes ``num_prefix_tokens`` and ``patch_embed.grid_size`` are used if they fit;
  last, ``L`` (or ``L - num_prefix_tokens``) is factored into a grid that the input divided by
  one stride gives. A channels-first flattened map ``(C, h*w)`` (the step between a patch
  embedding's convolution and its transpose) is no token sequence. A value none of this
  explains has no layout, and is no valid block end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import fx, nn

from splicer.trace.shapes import tensor_shape

LayoutKind = Literal["nchw", "nhwc", "tokens"]
_CHANNELS_FIRST_LAYERS = (nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d)
_CHANNELS_LAST_LAYERS = (nn.Linear, nn.LayerNorm)
VALID_CONV_SHRINK = 4  # pixels unpadded convolutions may leave a grid short of input / stride


@dataclass(frozen=True)
class FeatureLayout:
    """How one block-end tensor holds a ``channels x grid`` feature."""

    kind: LayoutKind
    channels: int
    grid: tuple[int, int]
    prefix_tokens: int = 0
    pooled: bool = False  # tokens whose grid is smaller than the model's first token grid

    @property
    def shape(self) -> tuple[int, ...]:
        """The per-sample tensor shape this layout describes."""
        h, w = self.grid
        if self.kind == "nchw":
            return (self.channels, h, w)
        if self.kind == "nhwc":
            return (h, w, self.channels)
        return (self.prefix_tokens + h * w, self.channels)

    @property
    def map_shape(self) -> tuple[int, int, int]:
        """The same feature viewed as an NCHW map (prefix tokens dropped)."""
        return (self.channels, *self.grid)

    def describe(self) -> str:
        """Short text for tables: ``NCHW 64x8x8``, ``NHWC 7x7x96``, ``tokens 1+14x14 x384``."""
        h, w = self.grid
        if self.kind == "nchw":
            return f"NCHW {self.channels}x{h}x{w}"
        if self.kind == "nhwc":
            return f"NHWC {h}x{w}x{self.channels}"
        pooled = ", pooled" if self.pooled else ""
        return f"tokens {self.prefix_tokens}+{h}x{w} x{self.channels}{pooled}"


def is_grid(size: tuple[int, int], input_grid: tuple[int, int], shrink: int = 0) -> bool:
    """Whether ``size`` is the input grid divided by one integer stride (floor or ceil per axis),
    or up to ``shrink`` pixels less on each axis."""
    (h, w), (height, width) = size, input_grid
    if h < 1 or w < 1 or h > height or w > width:
        return False
    for stride in range(1, max(height, width) + 1):
        if _fits(h, height, stride, shrink) and _fits(w, width, stride, shrink):
            return True
    return False


def _fits(size: int, full: int, stride: int, shrink: int) -> bool:
    """One axis: floor or ceil of ``full / stride``, or up to ``shrink`` pixels below the floor."""
    return full // stride - shrink <= size <= -(-full // stride)


def same_stage(earlier: tuple[int, int], later: tuple[int, int]) -> bool:
    """Whether grid ``later`` continues the stage of grid ``earlier``: equal, or a few pixels
    smaller from unpadded convolutions (47 -> 45), not a strided reduction (45 -> 22, 5 -> 3)."""
    return all(e - VALID_CONV_SHRINK <= g <= e and 3 * g > 2 * e for e, g in zip(earlier, later))


def infer_layouts(
    graph_module: fx.GraphModule, node_names: list[str], model: nn.Module | None = None
) -> dict[str, FeatureLayout]:
    """The layout of each named node (shape-propagated graph) that has one; see the module docstring."""
    nodes = list(graph_module.graph.nodes)
    input_meta = nodes[0].meta.get("tensor_meta")
    if input_meta is None or len(input_meta.shape) != 4:
        return {}
    input_grid = (int(input_meta.shape[2]), int(input_meta.shape[3]))
    modules = dict(graph_module.named_modules())
    wanted = set(node_names)
    maps: list[tuple[int, tuple[int, int]]] = []  # (channels, grid) of every map so far, latest last
    found: dict[str, FeatureLayout] = {}
    for node in nodes:
        shape = tensor_shape(node)
        if shape is None or node.op == "placeholder":
            continue
        layout: FeatureLayout | None = None
        if len(shape) == 3:
            layout = _map_layout(node, shape, input_grid, modules)
            if layout is not None:
                maps.append((layout.channels, layout.grid))
        elif len(shape) == 2 and node.name in wanted:
            layout = _token_layout(shape, maps, input_grid, model)
        if layout is not None and node.name in wanted:
            found[node.name] = layout
    return _mark_pooled(found, node_names)


def _map_layout(
    node: fx.Node, shape: tuple[int, ...], input_grid: tuple[int, int], modules: dict[str, nn.Module]
) -> FeatureLayout | None:
    a, b, c = shape
    first, last = is_grid((b, c), input_grid), is_grid((a, b), input_grid)
    if first and last:
        first = _writer_order(node, modules) != "last"
        last = not first
    elif not (first or last):
        first = is_grid((b, c), input_grid, VALID_CONV_SHRINK) and _writer_order(node, modules) == "first"
    if first:
        return FeatureLayout("nchw", a, (b, c))
    if last:
        return FeatureLayout("nhwc", c, (a, b))
    return None


def _writer_order(node: fx.Node, modules: dict[str, nn.Module]) -> Literal["first", "last"] | None:
    """Follow the first input back to the nearest layer that fixes the channel axis: ``"first"``
    (a convolution or 2-D norm), ``"last"`` (a linear layer, layer norm or a permute moving
    channels last), or None where no such layer is found."""
    current: fx.Node | None = node
    for _ in range(50):
        if current is None:
            break
        if current.op == "call_module":
            module = modules.get(str(current.target))
            if isinstance(module, _CHANNELS_FIRST_LAYERS):
                return "first"
            if isinstance(module, _CHANNELS_LAST_LAYERS):
                return "last"
        if current.op == "call_method" and current.target == "permute":
            dims = [d for d in current.args[1:] if isinstance(d, int)]
            if dims[-1:] == [1]:  # (0, 2, 3, 1): channels moved last
                return "last"
            if dims[1:2] == [3]:  # (0, 3, 1, 2): channels moved first
                return "first"
        current = current.all_input_nodes[0] if current.all_input_nodes else None  # through cat's list too
    return None


def _token_layout(
    shape: tuple[int, ...],
    maps: list[tuple[int, tuple[int, int]]],
    input_grid: tuple[int, int],
    model: nn.Module | None,
) -> FeatureLayout | None:
    length, channels = shape
    for map_channels, (h, w) in reversed(maps):
        if map_channels == channels and 0 <= length - h * w < h * w:
            return FeatureLayout("tokens", channels, (h, w), length - h * w)
    if maps and maps[-1][0] == length and maps[-1][1][0] * maps[-1][1][1] == channels:
        return None  # (C, h*w): a map flattened channels first, not yet tokens
    prefix = getattr(model, "num_prefix_tokens", None)
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if isinstance(prefix, int) and isinstance(grid, tuple) and len(grid) == 2 and prefix + grid[0] * grid[1] == length:
        return FeatureLayout("tokens", channels, (int(grid[0]), int(grid[1])), prefix)
    for prefix in sorted({0, prefix if isinstance(prefix, int) and 0 < prefix < length else 0}):
        count = length - prefix
        for h in range(1, count + 1):
            if count % h == 0 and is_grid((h, count // h), input_grid):
                return FeatureLayout("tokens", channels, (h, count // h), prefix)
    return None


def _mark_pooled(layouts: dict[str, FeatureLayout], order: list[str]) -> dict[str, FeatureLayout]:
    tokens = [layouts[name] for name in order if name in layouts and layouts[name].kind == "tokens"]
    if not tokens:
        return layouts
    first = tokens[0].grid[0] * tokens[0].grid[1]
    return {
        name: FeatureLayout(lay.kind, lay.channels, lay.grid, lay.prefix_tokens, True)
        if lay.kind == "tokens" and lay.grid[0] * lay.grid[1] < first
        else lay
        for name, lay in layouts.items()
    }
