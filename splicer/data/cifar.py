"""CIFAR-10 and CIFAR-100 through torchvision's readers of the original python archives."""

from __future__ import annotations

from pathlib import Path

import torch

from splicer.data.memory import ImageSet
from splicer.errors import SplicerError

CIFAR_CLASSES = {"cifar10": 10, "cifar100": 100}
_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
_TITLES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}


def load_cifar(name: str, root: str | None, download: bool, train: bool) -> ImageSet:
    """One split of ``name`` ('cifar10' or 'cifar100') from ``root``; downloads only when asked to."""
    import torchvision.datasets

    title, folder = _TITLES[name], _FOLDERS[name]
    if root is None:
        raise SplicerError(
            f"{title} needs data.root: set it to the folder that holds (or should receive) {folder}/, "
            "and set data.download: true to download the data set there"
        )
    reader = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    root_path = Path(root).expanduser()
    try:
        dataset = reader(str(root_path), train=train, download=download)
    except RuntimeError:
        # torchvision's "Dataset not found or corrupted": the archive is not under root.
        raise SplicerError(
            f"{title} not found: searched {root_path / folder}. Set data.download: true to download it into "
            f"{root_path}, or set data.root to the folder that already holds {folder}/"
        ) from None
    except OSError as exc:
        raise SplicerError(f"could not download {title} into {root_path}: {exc}") from None
    images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
    return ImageSet(images, torch.tensor(dataset.targets, dtype=torch.int64), list(dataset.classes))
