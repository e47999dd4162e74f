"""Tiny generated image folders for tests that run real-image code paths in seconds."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image


def write_colour_folder(root: Path, classes: int = 4, per_class: int = 16, side: int = 16, seed: int = 0) -> Path:
    """train/ and test/ of PNG images whose class is their dominant colour, plus noise: learnable in a few steps."""
    generator = torch.Generator().manual_seed(seed)
    palette = torch.rand(classes, 3, generator=generator) * 200 + 28
    for split, count in (("train", per_class), ("test", max(2, per_class // 4))):
        for k in range(classes):
            folder = root / split / f"class{k}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                noise = torch.randn(side, side, 3, generator=generator) * 30
                pixels = (palette[k] + noise).clamp(0, 255).to(torch.uint8)
                Image.fromarray(pixels.numpy()).save(folder / f"{i:03d}.png")
    return root
