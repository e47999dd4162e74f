"""A generated classification task for smoke tests and CPU demos: no files, no download,
yet a small CNN learns it well above chance in a few epochs.

Each class is a fixed smooth, periodic colour pattern (a base colour plus a few random
plane waves). Every image shows its class pattern at a random shift, possibly mirrored,
with random brightness and contrast and pixel noise: random crops and flips therefore keep
the label, as on natural images, and no single pixel gives the class away.
"""

from __future__ import annotations

import math

import torch

from splicer.data.memory import ImageSet

_WAVES = 4  # plane waves per class pattern
_NOISE = 0.08  # per-pixel Gaussian noise, on the 0..1 scale
_CHUNK = 512


def make_synthetic(
    num_train: int, num_test: int, shape: tuple[int, int, int], num_classes: int, seed: int = 0
) -> tuple[ImageSet, ImageSet]:
    """A training and a test split of the task, both determined by ``seed`` alone."""
    channels, height, width = shape
    generator = torch.Generator().manual_seed(seed)
    colour = 0.3 + 0.4 * torch.rand(num_classes, channels, generator=generator)
    amplitude = 0.1 + 0.1 * torch.rand(num_classes, _WAVES, channels, generator=generator)
    freq_y = torch.randint(0, 4, (num_classes, _WAVES), generator=generator).double()
    freq_x = torch.randint(-3, 4, (num_classes, _WAVES), generator=generator).double()
    freq_x = torch.where((freq_y == 0) & (freq_x == 0), torch.ones_like(freq_x), freq_x)  # no flat "waves"
    phase = 2 * math.pi * torch.rand(num_classes, _WAVES, generator=generator, dtype=torch.float64)
    classes = [f"pattern{k}" for k in range(num_classes)]

    def render(count: int) -> ImageSet:
        labels = (torch.arange(count) % num_classes)[torch.randperm(count, generator=generator)]
        shift_y = height * torch.rand(count, generator=generator, dtype=torch.float64)
        shift_x = width * torch.rand(count, generator=generator, dtype=torch.float64)
        mirror = torch.rand(count, generator=generator) < 0.5
        contrast = 0.7 + 0.6 * torch.rand(count, generator=generator)
        brightness = 0.2 * (torch.rand(count, generator=generator) - 0.5)
        rows = torch.arange(height, dtype=torch.float64)
        cols = torch.arange(width, dtype=torch.float64)
        images = torch.empty((count, channels, height, width), dtype=torch.uint8)
        for start in range(0, count, _CHUNK):
            part = slice(start, start + _CHUNK)
            label = labels[part]
            y = (rows[None, :] + shift_y[part, None]) / height  # (B, H), in image heights
            x = torch.where(mirror[part, None], width - 1 - cols[None, :], cols[None, :])
            x = (x + shift_x[part, None]) / width  # (B, W), in image widths
            fy, fx = freq_y[label][:, :, None, None], freq_x[label][:, :, None, None]  # (B, waves, 1, 1)
            angle = 2 * math.pi * (fy * y[:, None, :, None] + fx * x[:, None, None, :]) + phase[label][:, :, None, None]
            waves = torch.einsum("bwc,bwhv->bchv", amplitude[label], angle.cos().float())  # (B, C, H, W)
            gain, offset = contrast[part].view(-1, 1, 1, 1), brightness[part].view(-1, 1, 1, 1)
            image = colour[label][:, :, None, None] + gain * waves + offset
            image = image + _NOISE * torch.randn(image.shape, generator=generator)
            images[part] = (image * 255).round_().clamp_(0, 255).to(torch.uint8)
        return ImageSet(images, labels, classes)

    return render(num_train), render(num_test)
