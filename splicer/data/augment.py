"""Batch-wide, vectorised image ops that run on the training device: the paper's CIFAR
augmentation (padded random crop + horizontal flip) and per-channel normalisation."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def crop_padding(side: int) -> int:
    """The paper's 4-pixel crop padding at 32 px, scaled to a ``side``-pixel image (at least 1)."""
    return max(1, round(4 * side / 32))


def draw_crop_flip(generator: torch.Generator, count: int, pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``count`` crops and flips of the paper's augmentation, on the CPU: (top, left) uniform in
    0 .. 2 * pad (int64) and a flip with probability 1/2 (bool), drawn in this order."""
    top = torch.randint(0, 2 * pad + 1, (count,), generator=generator)
    left = torch.randint(0, 2 * pad + 1, (count,), generator=generator)
    flip = torch.rand(count, generator=generator) < 0.5
    return top, left, flip


def crop_flip(
    images: torch.Tensor, pad: int, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor
) -> torch.Tensor:
    """Crop image b at (top[b], left[b]) from its ``pad``-pixel zero-padded version, mirrored where flip[b].

    One gather over the whole batch, no per-image Python loop: flipping is folded into the
    column indices, so crop and flip cost a single pass over the output.
    """
    batch, channels, height, width = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    padded_width = width + 2 * pad
    rows = top[:, None] + torch.arange(height, device=images.device)
    cols = left[:, None] + torch.arange(width, device=images.device)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    index = (rows[:, :, None] * padded_width + cols[:, None, :]).reshape(batch, 1, height * width)
    out = padded.reshape(batch, channels, -1).gather(2, index.expand(batch, channels, height * width))
    return out.reshape(batch, channels, height, width)


class Normalize:
    """uint8 images -> float32 ``(x / 255 - mean) / std``, as one fused multiply-add on the device."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> None:
        mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = -mean_t / std_t

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.shift, images.float(), self.scale)
