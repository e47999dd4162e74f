"""What :func:`splicer.data.build_data` hands a trainer: train and eval batch streams plus
the facts about them (sizes, classes, normalisation) that reports and models need."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch

if TYPE_CHECKING:
    from splicer.data.augment import Normalize


class Batches(Protocol):
    """One epoch of ``(images, labels)`` batches already on the training device.

    ``images`` are float32, normalised (N, C, H, W); ``labels`` are int64 (N,). Each
    iteration uses epoch ``epoch`` and then advances it, so plain repeated iteration
    reshuffles; ``set_epoch`` pins the epoch (e.g. when resuming a run). A training stream
    with ``indexed`` set yields ``(images, labels, indices)`` instead: int64 (N,) positions
    of the images in the training split (0 .. num_train - 1), for methods that keep
    per-sample state (CRD's memory bank).
    """

    epoch: int
    indexed: bool

    def set_epoch(self, epoch: int) -> None: ...

    def shard(self, rank: int, world_size: int) -> None:
        """Yield only rank ``rank``'s share: its slice of each global training batch, its part of the eval split."""

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]: ...

    def __len__(self) -> int: ...


class ShardedBatches:
    """The state both batch streams share: the epoch counter and, after :meth:`shard`, which
    rank this is; from them each rank's share of a global batch and its part of the eval split."""

    def __init__(self, batch_size: int, normalize: Normalize, train: bool, seed: int) -> None:
        self.batch_size = batch_size
        self.normalize = normalize
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.indexed = False
        self.rank, self.world_size = 0, 1

    def shard(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = rank, world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def _share(self) -> int:
        """Images per step on this rank (the global batch split evenly over the ranks)."""
        return max(1, self.batch_size // self.world_size)

    def _eval_range(self, count: int) -> tuple[int, int]:
        """This rank's contiguous part of an eval split of ``count`` images, so each is scored once."""
        return count * self.rank // self.world_size, count * (self.rank + 1) // self.world_size


@dataclass
class DataBundle:
    """The training stream, the evaluation stream and what describes them."""

    train: Batches
    eval: Batches
    eval_name: str  # 'val' when the eval images were carved from the training split, else 'test'
    num_train: int
    train_labels: torch.Tensor  # int64 (num_train,), the label of each training index
    num_eval: int
    num_classes: int
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    device: torch.device


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator that depends only on (seed, epoch): the same shuffle on every device and on resume."""
    mixed = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + 1) % (2**63)
    return torch.Generator().manual_seed(mixed)
