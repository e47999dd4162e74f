"""Small-image data kept whole on the training device as uint8, batched and augmented there.

CIFAR-sized images (a 50k split is 150 MB) fit anywhere; holding them on the GPU removes
the DataLoader, host decoding and host-to-device copies from the training loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from splicer.data.augment import Normalize, crop_flip, draw_crop_flip
from splicer.data.bundle import ShardedBatches, epoch_generator

_CHUNK = 4096  # images per step of whole-split ops, to bound float32 temporaries

Crops = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""(top, left, flip) per image: where its crop starts in the padded image, and whether it is mirrored."""
BatchExtras = Callable[[torch.Tensor, slice], tuple[torch.Tensor, ...]]
"""(the batch's image indices, its positions in the epoch's order) -> what the batch carries after the labels."""


@dataclass
class ImageSet:
    """A labelled split: uint8 images (N, C, H, W), int64 labels (N,) and the class names."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: torch.Tensor) -> ImageSet:
        return ImageSet(self.images[index], self.labels[index], self.classes)

    def to(self, device: torch.device) -> ImageSet:
        return ImageSet(self.images.to(device), self.labels.to(device), self.classes)


def area_resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 (N, C, H, W) -> uint8 (N, C, *size): area averaging when shrinking, bilinear when growing."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    shrinking = size[0] <= images.shape[-2] and size[1] <= images.shape[-1]
    out = torch.empty((*images.shape[:2], *size), dtype=torch.uint8, device=images.device)
    for start in range(0, len(images), _CHUNK):
        chunk = images[start : start + _CHUNK].float()
        if shrinking:
            chunk = F.interpolate(chunk, size=size, mode="area")
        else:
            chunk = F.interpolate(chunk, size=size, mode="bilinear", align_corners=False, antialias=True)
        out[start : start + _CHUNK] = chunk.round_().clamp_(0, 255).to(torch.uint8)
    return out


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images, on the 0..1 scale.

    From a 256-bin histogram per channel: exact, and far cheaper than converting the whole split to float.
    """
    values = torch.arange(256, dtype=torch.float64, device=images.device) / 255.0
    means, stds = [], []
    for channel in range(images.shape[1]):
        histogram = torch.zeros(256, dtype=torch.int64, device=images.device)
        for start in range(0, len(images), _CHUNK):
            histogram += torch.bincount(images[start : start + _CHUNK, channel].reshape(-1), minlength=256)
        weights = histogram.double() / histogram.sum()
        mean = (weights * values).sum()
        means.append(mean.item())
        stds.append((weights * (values - mean) ** 2).sum().sqrt().item())
    return tuple(means), tuple(stds)


class MemoryBatches(ShardedBatches):
    """Batches of an :class:`ImageSet` that lives on the device.

    Training streams shuffle (and, with ``pad``, crop and flip) from a generator seeded by
    (seed, epoch) and drop the last partial batch, so every step has a full batch for
    BatchNorm. Evaluation streams go in order, unaugmented, with every image. With
    ``indexed`` set, training batches also carry each image's index in ``data``.

    After :meth:`shard`, a training step yields this rank's slice of the same global batch
    (every rank draws the same order and augmentation), and evaluation goes over this
    rank's contiguous part of the split, so each image is scored exactly once.
    """

    def __init__(
        self, data: ImageSet, batch_size: int, normalize: Normalize, train: bool, seed: int, pad: int | None
    ) -> None:
        super().__init__(batch_size, normalize, train, seed)
        self.images, self.labels = data.images, data.labels
        self.pad = pad

    def __len__(self) -> int:
        if self.train:
            return max(1, len(self.labels) // self.batch_size)
        start, stop = self._eval_range(len(self.labels))
        return math.ceil((stop - start) / self._share)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        if not self.train:
            return self._eval_batches()
        self.epoch += 1
        return self._train_batches(self.epoch - 1)

    def _eval_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        first, last = self._eval_range(len(self.labels))
        for start in range(first, last, self._share):
            stop = min(start + self._share, last)
            yield self.normalize(self.images[start:stop]), self.labels[start:stop]

    def augmented(self, index: torch.Tensor, crops: Crops | None) -> torch.Tensor:
        """Normalised images ``index``, cropped and flipped by ``crops`` (top, left, flip per image) unless None."""
        images = self.images[index]
        if crops is not None:
            images = crop_flip(images, self.pad, *crops)
        return self.normalize(images)

    def _train_batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, ...]]:
        generator = epoch_generator(self.seed, epoch)
        # Draw the whole epoch's randomness up front on the CPU: identical on every device,
        # and four small copies per epoch instead of per-batch host-device traffic.
        order = torch.randperm(len(self.labels), generator=generator).to(self.images.device)
        crops, extras = self._epoch_plan(generator, order)
        share = self._share
        for step in range(len(self)):
            begin = step * self.batch_size + self.rank * share
            window = slice(begin, begin + share)
            index = order[window]
            images = self.augmented(index, None if crops is None else tuple(part[window] for part in crops))
            yield images, self.labels[index], *extras(index, window)

    def _epoch_plan(self, generator: torch.Generator, order: torch.Tensor) -> tuple[Crops | None, BatchExtras]:
        """The epoch's crops and flips, one per position of ``order`` (drawn after the order), and what each
        batch carries besides images and labels: its images' indices when the stream is ``indexed``."""
        crops = None
        if self.pad is not None:
            device = self.images.device
            crops = tuple(part.to(device) for part in draw_crop_flip(generator, len(order), self.pad))
        return crops, (lambda index, window: (index,)) if self.indexed else (lambda index, window: ())
