"""Carving a validation set or a training subset out of a labelled split."""

from __future__ import annotations

import torch

from splicer.errors import SplicerError

SPLIT_SEED = 0
"""Seed of every carve-out: fixed, not the training seed, so that runs with different seeds
train and evaluate on the same images and their scores stay comparable."""


def stratified_split(labels: torch.Tensor, count: int, seed: int = SPLIT_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (ascending) of ``count`` images spread over the classes in proportion to their
    sizes (within one image per class), and of all the other images.

    Each image gets its fractional position inside a random order of its class; taking the
    smallest positions takes every class at the same rate. Ties break at random.
    """
    generator = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    total = len(labels)
    shuffled = torch.randperm(total, generator=generator)
    grouped = shuffled[torch.sort(labels[shuffled], stable=True).indices]  # by class, random within
    grouped_labels = labels[grouped]
    sizes = torch.bincount(grouped_labels)
    starts = torch.cumsum(sizes, 0) - sizes
    rank = torch.arange(total) - starts[grouped_labels]
    position = (rank.double() + 0.5) / sizes[grouped_labels].double()
    tiebreak = torch.randperm(total, generator=generator)
    by_position = tiebreak[torch.sort(position[tiebreak], stable=True).indices]
    picked = grouped[by_position[:count]]
    rest = grouped[by_position[count:]]
    return torch.sort(picked).values, torch.sort(rest).values


def carve(labels: torch.Tensor, val_split: int, train_subset: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Training indices and, when ``val_split`` > 0, validation indices carved from the same split.

    The validation images are taken first, so a training subset never overlaps them.
    """
    total = len(labels)
    validation = None
    train = torch.arange(total)
    if val_split:
        if val_split >= total:
            raise SplicerError(f"data.val_split: {val_split} leaves no training images (the split has {total})")
        validation, train = stratified_split(labels, val_split)
    if train_subset is not None:
        if train_subset > len(train):
            left = f" left after data.val_split: {val_split}" if val_split else ""
            raise SplicerError(f"data.train_subset: {train_subset} is more than the {len(train)} training images{left}")
        subset, _ = stratified_split(labels[train], train_subset)
        train = train[subset]
    return train, validation
