"""Layout adapters: any feature layout to an NCHW map and back, for the transforms and the distillation methods.

A teacher feature is viewed as a map before the transform (:class:`TokensToMap` drops the
prefix tokens and restores the patch grid; :class:`NHWCToMap` permutes channels first), and
the transformed map is put in the layout the student block expects (:class:`MapToTokens`
flattens it and prepends prefix tokens that the branch learns; :class:`MapToNHWC` permutes
channels last). Positional embeddings are not touched: the student adds them before its first
block, which no branch runs.

Stage-2 feature methods read every block end through the same adapters, in one of two forms
(:func:`as_map`, :func:`as_vector`): an NCHW map (tokens: prefix dropped, patch grid restored,
pooled-token stages on their own smaller grid; NHWC: permuted), or one global vector per
image, the vector the network's head would pool there: the class token (the first prefix
token, where timm puts it and where ViT and DeiT heads read it) for a token sequence with
prefix tokens, else the mean over the map's positions (a CNN's global average pool, and the
mean of the patch tokens of a ViT without class token, Swin or LeViT).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from splicer.trace.layouts import FeatureLayout


class TokensToMap(nn.Module):
    """``(B, P + h*w, C)`` tokens -> ``(B, C, h, w)`` map; the ``P`` prefix tokens are dropped."""

    def __init__(self, prefix_tokens: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.prefix_tokens = prefix_tokens
        self.grid = tuple(grid)

    def forward(self, x: Tensor) -> Tensor:
        tokens = x[:, self.prefix_tokens :]
        return tokens.transpose(1, 2).reshape(x.shape[0], x.shape[2], self.grid[0], self.grid[1])

    def extra_repr(self) -> str:
        return f"prefix_tokens={self.prefix_tokens}, grid={self.grid}"


class MapToTokens(nn.Module):
    """``(B, C, h, w)`` map -> ``(B, P + h*w, C)`` tokens, after ``P`` learned prefix tokens."""

    def __init__(self, prefix_tokens: int, channels: int) -> None:
        super().__init__()
        self.prefix_tokens, self.channels = prefix_tokens, channels
        self.prefix = nn.Parameter(torch.zeros(1, prefix_tokens, channels)) if prefix_tokens else None
        if self.prefix is not None:
            nn.init.trunc_normal_(self.prefix, std=0.02)  # as timm initialises class tokens

    def extra_repr(self) -> str:
        """The constructor's arguments: the emitted sftn.py rebuilds the layer from its repr."""
        return f"prefix_tokens={self.prefix_tokens}, channels={self.channels}"

    def forward(self, x: Tensor) -> Tensor:
        tokens = x.flatten(2).transpose(1, 2)
        if self.prefix is None:
            return tokens.contiguous()
        return torch.cat([self.prefix.expand(x.shape[0], -1, -1), tokens], dim=1)


class NHWCToMap(nn.Module):
    """``(B, H, W, C)`` -> ``(B, C, H, W)``."""

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(0, 3, 1, 2)


class MapToNHWC(nn.Module):
    """``(B, C, H, W)`` -> ``(B, H, W, C)``, contiguous as the student's own stages produce it."""

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(0, 2, 3, 1).contiguous()


def as_map(feature: Tensor, layout: FeatureLayout | None) -> Tensor:
    """A block end's feature as an NCHW map, whatever its layout (None: already NCHW)."""
    adapter = to_map(layout) if layout is not None else None
    return adapter(feature) if adapter is not None else feature


def as_vector(feature: Tensor, layout: FeatureLayout | None) -> Tensor:
    """A block end's feature as one (B, C) vector per image: the class token where the sequence has
    prefix tokens, else the mean over the positions of its map (see the module docstring)."""
    if layout is not None and layout.kind == "tokens" and layout.prefix_tokens:
        return feature[:, 0]
    return as_map(feature, layout).flatten(2).mean(dim=2)


def describe_as_map(layout: FeatureLayout | None, shape: tuple[int, ...]) -> str:
    """What :func:`as_map` does to a block end of ``layout`` and per-sample ``shape``, for run reports."""
    if layout is None or layout.kind == "nchw":
        return "NCHW {}x{}x{}".format(*shape)
    channels, (h, w) = layout.channels, layout.grid
    return f"{layout.describe()} -> {describe_to_map(layout)} {channels}x{h}x{w}"


def describe_as_vector(layout: FeatureLayout | None, shape: tuple[int, ...]) -> str:
    """What :func:`as_vector` does to a block end of ``layout`` and per-sample ``shape``, for run reports."""
    if layout is not None and layout.kind == "tokens" and layout.prefix_tokens:
        return f"{layout.describe()} -> class token ({layout.channels})"
    if layout is None or layout.kind == "nchw":
        return "NCHW {}x{}x{} -> mean over {}x{} ({})".format(*shape, shape[1], shape[2], shape[0])
    h, w = layout.grid
    return f"{layout.describe()} -> mean over {h}x{w} ({layout.channels})"


def to_map(layout: FeatureLayout) -> nn.Module | None:
    """The adapter viewing a feature of ``layout`` as an NCHW map; None when it already is one."""
    if layout.kind == "tokens":
        return TokensToMap(layout.prefix_tokens, layout.grid)
    if layout.kind == "nhwc":
        return NHWCToMap()
    return None


def from_map(layout: FeatureLayout) -> nn.Module | None:
    """The adapter putting an NCHW map into ``layout``; None for NCHW."""
    if layout.kind == "tokens":
        return MapToTokens(layout.prefix_tokens, layout.channels)
    if layout.kind == "nhwc":
        return MapToNHWC()
    return None


def describe_to_map(layout: FeatureLayout) -> str:
    """What :func:`to_map` does, for reports; empty for NCHW."""
    if layout.kind == "tokens":
        dropped = f"drop {layout.prefix_tokens} prefix token(s), " if layout.prefix_tokens else ""
        return f"{dropped}tokens to {layout.grid[0]}x{layout.grid[1]} map"
    return "NHWC to NCHW" if layout.kind == "nhwc" else ""


def describe_from_map(layout: FeatureLayout) -> str:
    """What :func:`from_map` does, for reports; empty for NCHW."""
    if layout.kind == "tokens":
        learned = f" after {layout.prefix_tokens} learned prefix token(s)" if layout.prefix_tokens else ""
        return f"map to {layout.grid[0] * layout.grid[1]} tokens{learned}"
    return "NCHW to NHWC" if layout.kind == "nhwc" else ""
