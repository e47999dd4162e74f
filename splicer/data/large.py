"""Large (ImageNet-style) images: decoded and augmented per image by DataLoader workers,
with the paper's ImageNet recipe (random-resized crop + flip; resize + centre crop to evaluate)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from splicer.data.augment import Normalize
from splicer.data.bundle import ShardedBatches, epoch_generator

if TYPE_CHECKING:
    from PIL.Image import Image
    from torchvision.transforms import Compose

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_stats(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """ImageNet's normalisation constants; their channel average for grayscale input."""
    if channels == 1:
        return (sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,)
    return IMAGENET_MEAN, IMAGENET_STD


def imagenet_transforms(size: tuple[int, int], train: bool) -> Compose:
    """PIL -> uint8 (C, H, W); normalising waits for the device, where it is cheaper and moves 4x fewer bytes."""
    from torchvision import transforms

    if train:
        steps = [transforms.RandomResizedCrop(size, scale=(0.08, 1.0)), transforms.RandomHorizontalFlip()]
    else:
        steps = [transforms.Resize(round(min(size) * 256 / 224)), transforms.CenterCrop(size)]
    return transforms.Compose([*steps, transforms.PILToTensor()])


def open_image(path: str, mode: str) -> Image:
    """ImageFolder's loader, for ``mode`` 'RGB' or 'L' (module level, so worker processes can pickle it)."""
    from PIL import Image

    with open(path, "rb") as file:
        return Image.open(file).convert(mode)


class IndexedDataset(torch.utils.data.Dataset):
    """``dataset`` whose items also carry their index: ``(image, label, index)``."""

    def __init__(self, dataset: torch.utils.data.Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        image, label = self.dataset[index]
        return image, label, index


class LoaderBatches(ShardedBatches):
    """Batches from a map-style dataset of uint8 images through a DataLoader, normalised on the device.

    A fresh DataLoader per epoch whose generator is seeded by (seed, epoch) fixes both the
    shuffle and (with workers) their augmentation seeds, so an epoch replays exactly on resume.
    With ``indexed`` set, training batches also carry each image's index in ``dataset``.

    After :meth:`shard` with more than one rank, training draws through a
    DistributedSampler (shuffled by seed and epoch, each rank a disjoint share of
    batch_size / world_size images per step), and evaluation reads this rank's contiguous
    part of the split, so each image is scored exactly once.
    """

    def __init__(
        self,
        dataset: torch.utils.data.Dataset,
        batch_size: int,
        normalize: Normalize,
        train: bool,
        seed: int,
        workers: int,
        device: torch.device,
    ) -> None:
        super().__init__(batch_size, normalize, train, seed)
        self.dataset = dataset
        self.workers = workers
        self.device = device

    def _eval_part(self) -> torch.utils.data.Dataset:
        if self.world_size == 1:
            return self.dataset
        from torch.utils.data import Subset

        return Subset(self.dataset, range(*self._eval_range(len(self.dataset))))

    def __len__(self) -> int:
        if self.train:
            if self.world_size > 1:
                return max(1, len(self.dataset) // self.world_size // self._share)
            return max(1, len(self.dataset) // self.batch_size)
        return math.ceil(len(self._eval_part()) / self._share)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        self.epoch += 1
        return self._batches(self.epoch - 1)

    def _batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, ...]]:
        from torch.utils.data import DataLoader, DistributedSampler

        indexed = self.indexed and self.train
        train_set = IndexedDataset(self.dataset) if indexed else self.dataset
        if self.train and self.world_size > 1:
            sampler = DistributedSampler(
                train_set, self.world_size, self.rank, shuffle=True, seed=self.seed, drop_last=True
            )
            sampler.set_epoch(epoch)
            # Each rank's workers draw their own augmentation seeds.
            generator = epoch_generator(self.seed, epoch * self.world_size + self.rank)
            loader = DataLoader(
                train_set,
                batch_size=self._share,
                sampler=sampler,
                drop_last=len(sampler) >= self._share,
                num_workers=self.workers,
                pin_memory=self.device.type == "cuda",
                generator=generator,
            )
        else:
            dataset = train_set if self.train else self._eval_part()
            loader = DataLoader(
                dataset,
                batch_size=self.batch_size if self.train else self._share,
                shuffle=self.train,
                drop_last=self.train and len(dataset) >= self.batch_size,
                num_workers=self.workers,
                pin_memory=self.device.type == "cuda",
                generator=epoch_generator(self.seed, epoch),
            )
        for images, labels, *index in loader:
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            if indexed:
                yield self.normalize(images), labels, index[0].to(self.device, non_blocking=True)
            else:
                yield self.normalize(images), labels
