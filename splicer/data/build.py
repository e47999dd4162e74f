"""``build_data``: turn a spec's ``data:`` section into train and eval batch streams.

Images whose side is at most 64 px (CIFAR, the synthetic task, small image folders) are
held whole on the training device and augmented there in batch; larger ones go through
DataLoader workers with the ImageNet recipe.
"""

from __future__ import annotations

import copy
from functools import partial

import torch

from splicer.data.augment import Normalize, crop_padding
from splicer.data.bundle import DataBundle
from splicer.data.cifar import CIFAR_CLASSES, load_cifar
from splicer.data.imagefolder import find_classes, image_mode, load_image_folder, split_folder
from splicer.data.large import LoaderBatches, imagenet_stats, imagenet_transforms, open_image
from splicer.data.memory import ImageSet, MemoryBatches, area_resize, channel_stats
from splicer.data.splits import SPLIT_SEED, carve
from splicer.data.synthetic import make_synthetic
from splicer.errors import SplicerError
from splicer.spec.schema import DataSpec

SMALL_SIDE = 64
"""Largest image side kept in device memory; above it, per-image DataLoader decoding."""


def build_data(
    spec: DataSpec,
    input_size: tuple[int, int, int],
    num_classes: int,
    batch_size: int,
    device: torch.device,
    seed: int,
) -> DataBundle:
    """Batches of ``input_size`` images for training and evaluation on ``device``.

    ``seed`` drives the shuffle and augmentation only; the data itself (synthetic images,
    the val_split carve-out, the train_subset) is fixed so runs with different seeds compare.
    """
    channels, height, width = input_size
    size = (height, width)
    if spec.resize is not None and (spec.resize, spec.resize) != size:
        raise SplicerError(
            f"data.resize: {spec.resize} makes {spec.resize}x{spec.resize} images but input_size is "
            f"{list(input_size)}; set input_size: [{channels}, {spec.resize}, {spec.resize}] or change data.resize"
        )
    device = torch.device(device)
    if streams_from_disk(spec, input_size):
        return _large_bundle(spec, size, channels, num_classes, batch_size, device, seed)
    return _memory_bundle(spec, size, channels, num_classes, batch_size, device, seed)


def streams_from_disk(spec: DataSpec, input_size: tuple[int, int, int]) -> bool:
    """Whether training images are decoded from disk per step (large image folders) rather than held in memory."""
    return spec.dataset == "imagefolder" and max(input_size[1:]) > SMALL_SIDE


def _memory_bundle(
    spec: DataSpec,
    size: tuple[int, int],
    channels: int,
    num_classes: int,
    batch_size: int,
    device: torch.device,
    seed: int,
) -> DataBundle:
    train, test = _load_small(spec, size, channels, num_classes, need_test=spec.val_split == 0)
    train_index, val_index = carve(train.labels, spec.val_split, spec.train_subset)
    evaluation = test if val_index is None else train.take(val_index)
    if len(train_index) < len(train):
        train = train.take(train_index)
    train = train.to(device)
    evaluation = evaluation.to(device)
    mean, std = channel_stats(train.images)
    normalize = Normalize(mean, std, device)
    pad = crop_padding(min(size)) if spec.augment else None
    return DataBundle(
        train=MemoryBatches(train, batch_size, normalize, train=True, seed=seed, pad=pad),
        eval=MemoryBatches(evaluation, batch_size, normalize, train=False, seed=seed, pad=None),
        eval_name="test" if val_index is None else "val",
        num_train=len(train),
        train_labels=train.labels,
        num_eval=len(evaluation),
        num_classes=num_classes,
        class_names=train.classes,
        mean=mean,
        std=std,
        device=device,
    )


def _load_small(
    spec: DataSpec, size: tuple[int, int], channels: int, num_classes: int, need_test: bool
) -> tuple[ImageSet, ImageSet | None]:
    """The training split and (when needed) the test split, as uint8 on the CPU at ``size``."""
    if spec.dataset == "synthetic":
        return make_synthetic(spec.synthetic_train, spec.synthetic_test, (channels, *size), num_classes, SPLIT_SEED)
    if spec.dataset == "imagefolder":
        train_folder = split_folder(spec.root, ("train",))
        classes = _check_classes(train_folder, num_classes)
        train = load_image_folder(train_folder, size, channels, spec.workers)
        if not need_test:
            return train, None
        test_folder = split_folder(spec.root, ("test", "val"))
        _check_same_classes(test_folder, classes)
        return train, load_image_folder(test_folder, size, channels, spec.workers)
    return _load_cifar(spec, size, channels, num_classes, need_test)


def _load_cifar(
    spec: DataSpec, size: tuple[int, int], channels: int, num_classes: int, need_test: bool
) -> tuple[ImageSet, ImageSet | None]:
    expected = CIFAR_CLASSES[spec.dataset]
    if num_classes != expected:
        raise SplicerError(
            f"data.dataset: {spec.dataset} has {expected} classes but the spec says num_classes: {num_classes}"
        )
    if channels != 3:
        raise SplicerError(f"{spec.dataset} images have 3 channels but input_size asks for {channels}")
    if size != (32, 32) and spec.resize is None:
        raise SplicerError(
            f"{spec.dataset} images are 32x32 but input_size asks for {size[0]}x{size[1]}; "
            f"set data.resize: {size[0]} to resize them, or input_size: [3, 32, 32]"
        )
    splits = [load_cifar(spec.dataset, spec.root, spec.download, train=True)]
    if need_test:
        splits.append(load_cifar(spec.dataset, spec.root, spec.download, train=False))
    resized = [ImageSet(area_resize(split.images, size), split.labels, split.classes) for split in splits]
    return resized[0], resized[1] if need_test else None


def _check_classes(folder, num_classes: int) -> list[str]:
    classes = find_classes(folder)
    if len(classes) != num_classes:
        raise SplicerError(
            f"{folder} has {len(classes)} class folders but the spec says num_classes: {num_classes}; "
            "fix num_classes or point data.root at the right folder"
        )
    return classes


def _check_same_classes(folder, classes: list[str]) -> None:
    found = find_classes(folder)
    if found != classes:
        missing = sorted(set(classes) - set(found))
        extra = sorted(set(found) - set(classes))
        raise SplicerError(
            f"{folder} has different class folders from the training split (missing: {missing or 'none'}, "
            f"extra: {extra or 'none'}); labels would not match"
        )


def _large_bundle(
    spec: DataSpec,
    size: tuple[int, int],
    channels: int,
    num_classes: int,
    batch_size: int,
    device: torch.device,
    seed: int,
) -> DataBundle:
    from torch.utils.data import Subset
    from torchvision.datasets import ImageFolder

    loader = partial(open_image, mode=image_mode(channels))
    train_folder = split_folder(spec.root, ("train",))
    classes = _check_classes(train_folder, num_classes)
    train = ImageFolder(str(train_folder), transform=imagenet_transforms(size, train=spec.augment), loader=loader)
    eval_transform = imagenet_transforms(size, train=False)
    all_labels = torch.tensor(train.targets)
    train_index, val_index = carve(all_labels, spec.val_split, spec.train_subset)
    if val_index is None:
        eval_folder = split_folder(spec.root, ("test", "val"))
        _check_same_classes(eval_folder, classes)
        evaluation = ImageFolder(str(eval_folder), transform=eval_transform, loader=loader)
    else:
        unaugmented = copy.copy(train)
        unaugmented.transform = eval_transform
        evaluation = Subset(unaugmented, val_index.tolist())
    if len(train_index) < len(train):
        train = Subset(train, train_index.tolist())
    mean, std = imagenet_stats(channels)
    normalize = Normalize(mean, std, device)
    streams = dict(batch_size=batch_size, normalize=normalize, seed=seed, workers=spec.workers, device=device)
    return DataBundle(
        train=LoaderBatches(train, train=True, **streams),
        eval=LoaderBatches(evaluation, train=False, **streams),
        eval_name="test" if val_index is None else "val",
        num_train=len(train),
        train_labels=all_labels[train_index] if len(train_index) < len(all_labels) else all_labels,
        num_eval=len(evaluation),
        num_classes=num_classes,
        class_names=classes,
        mean=mean,
        std=std,
        device=device,
    )
