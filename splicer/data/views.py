"""A training stream over a fixed set of augmented views per image (soft labels computed once).

Each image has ``views`` stored crops and flips, and per view whatever was computed on it (the
teacher's logits). Each epoch every image is trained on one of its views, drawn from the
generator of (seed, epoch) after the shuffle, so a resumed run draws the same views; a batch
carries that view's stored tensors after its labels.
"""

from __future__ import annotations

import torch

from splicer.data.memory import BatchExtras, Crops, ImageSet, MemoryBatches


class StoredViewBatches(MemoryBatches):
    """The training stream of ``base``, each image on one of its stored views per epoch.

    ``crops`` are (top, left, flip), each (N, views) and on the images' device; every tensor of
    ``stored`` is (N, views, ...) on that device, and a batch yields its rows for the drawn views.
    """

    def __init__(self, base: MemoryBatches, crops: Crops, stored: tuple[torch.Tensor, ...]) -> None:
        super().__init__(
            ImageSet(base.images, base.labels, []), base.batch_size, base.normalize, True, base.seed, base.pad
        )
        self.rank, self.world_size, self.epoch = base.rank, base.world_size, base.epoch
        self.views = crops[0].shape[1]
        self.crops = crops
        self.stored = stored

    def _epoch_plan(self, generator: torch.Generator, order: torch.Tensor) -> tuple[Crops | None, BatchExtras]:
        view = torch.randint(0, self.views, (len(order),), generator=generator).to(order.device)
        crops = None if self.pad is None else tuple(part[order, view] for part in self.crops)

        def extras(index: torch.Tensor, window: slice) -> tuple[torch.Tensor, ...]:
            return tuple(tensor[index, view[window]] for tensor in self.stored)

        return crops, extras
