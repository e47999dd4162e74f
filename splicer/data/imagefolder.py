"""Folders of image files in torchvision's ImageFolder layout (``<split>/<class>/<image>``).

Small images are decoded once into a cache file of uint8 tensors next to the data
(``<root>/.splicer-cache/``, or under ``~/.cache/splicer/`` when the root is read-only), so
later runs load a split in a fraction of a second instead of decoding every file again.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import secrets
import sys
import time
from pathlib import Path

import torch

from splicer.data.memory import ImageSet, area_resize
from splicer.errors import SplicerError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_CACHE_FORMAT = 1
_PARALLEL_FROM = 2000  # below this many files, starting worker processes costs more than it saves


def image_mode(channels: int) -> str:
    """The PIL mode that gives ``channels`` channels."""
    if channels not in (1, 3):
        raise SplicerError(f"image folders give 1 (grayscale) or 3 (RGB) channels, but input_size asks for {channels}")
    return "RGB" if channels == 3 else "L"


def split_folder(root: str | None, names: tuple[str, ...]) -> Path:
    """The first of ``root/<name>`` that exists, e.g. ('test', 'val') for the evaluation split."""
    if root is None:
        raise SplicerError("data.dataset: imagefolder needs data.root, a folder with train/ and test/ (or val/)")
    base = Path(root).expanduser()
    for name in names:
        if (base / name).is_dir():
            return base / name
    wanted = " or ".join(f"{name}/" for name in names)
    raise SplicerError(f"image folder {base} has no {wanted}; data.root needs train/ and test/ (or val/) inside")


def find_classes(folder: Path) -> list[str]:
    """Class names: the sub-folders of ``folder``, sorted (so label k is the k-th name, as in ImageFolder)."""
    classes = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir() and not entry.name.startswith("."))
    if not classes:
        raise SplicerError(f"{folder} has no class folders; expected {folder}/<class>/<image files>")
    return classes


def list_images(folder: Path, classes: list[str]) -> list[tuple[str, int]]:
    """(path, label) of every image file under the class folders, in a fixed sorted order."""
    samples = []
    for label, name in enumerate(classes):
        found = sorted(
            os.path.join(directory, file)
            for directory, _, files in os.walk(folder / name, followlinks=True)
            for file in files
            if file.lower().endswith(IMAGE_SUFFIXES)
        )
        if not found:
            raise SplicerError(f"class folder {folder / name} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        samples.extend((path, label) for path in found)
    return samples


def load_image_folder(folder: Path, size: tuple[int, int], channels: int, workers: int) -> ImageSet:
    """Every image of ``folder`` at ``size``, from the cache when it matches the files, else decoded and cached."""
    classes = find_classes(folder)
    samples = list_images(folder, classes)
    mode = image_mode(channels)
    name = f"{folder.name}-{size[0]}x{size[1]}-{mode}.pt"
    fingerprint = _fingerprint(folder, samples, classes)
    for directory in _cache_dirs(folder):
        cached = _read_cache(directory / name, fingerprint)
        if cached is not None:
            return cached
    images = _decode_all(folder, [path for path, _ in samples], size, mode, workers)
    data = ImageSet(images, torch.tensor([label for _, label in samples], dtype=torch.int64), classes)
    _write_cache(data, fingerprint, folder, name)
    return data


def _cache_dirs(folder: Path) -> list[Path]:
    """Where a split's cache may live: beside the data first, then the user's cache folder."""
    root = folder.parent.resolve()
    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha256(str(root).encode()).hexdigest()[:16]
    return [root / ".splicer-cache", home / "splicer" / "imagefolder" / digest]


def _fingerprint(folder: Path, samples: list[tuple[str, int]], classes: list[str]) -> str:
    """A digest of the file list, sizes and modification times: a changed folder invalidates its cache."""
    digest = hashlib.sha256("\n".join(classes).encode())
    for path, label in samples:
        stat = os.stat(path)
        digest.update(f"{os.path.relpath(path, folder)}\t{label}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _read_cache(path: Path, fingerprint: str) -> ImageSet | None:
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError):
        return None  # unreadable (damaged, or from an incompatible torch): decode again
    if payload.get("format") != _CACHE_FORMAT or payload.get("fingerprint") != fingerprint:
        return None
    return ImageSet(payload["images"], payload["labels"], payload["classes"])


def _write_cache(data: ImageSet, fingerprint: str, folder: Path, name: str) -> None:
    """Save atomically (temporary file + rename) so a concurrent or interrupted run never reads half a file."""
    payload = {
        "format": _CACHE_FORMAT,
        "fingerprint": fingerprint,
        "images": data.images,
        "labels": data.labels,
        "classes": data.classes,
    }
    for directory in _cache_dirs(folder):
        temporary = directory / f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            directory.mkdir(parents=True, exist_ok=True)
            with open(temporary, "xb") as file:
                torch.save(payload, file)
            os.replace(temporary, directory / name)
            return
        except (OSError, RuntimeError):  # read-only root, or a full disk (torch reports it as RuntimeError)
            if temporary.exists():
                temporary.unlink()
    print(f"splicer: could not write a cache for {folder}; it will be decoded again next time", file=sys.stderr)


class _Decoder(torch.utils.data.Dataset):
    """Decodes one file to uint8 (C, H, W) at the target size; runs in DataLoader workers."""

    def __init__(self, paths: list[str], size: tuple[int, int], mode: str) -> None:
        self.paths, self.size, self.mode = paths, size, mode

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        from PIL import Image
        from torchvision.transforms.functional import pil_to_tensor

        with Image.open(self.paths[index]) as opened:
            image = pil_to_tensor(opened.convert(self.mode))
        return area_resize(image[None], self.size)[0]


def _decode_all(folder: Path, paths: list[str], size: tuple[int, int], mode: str, workers: int) -> torch.Tensor:
    """Decode ``paths`` into one uint8 tensor in worker processes (for tiny images, PIL's
    Python-side overhead holds the GIL, so threads do not help), reporting progress on stderr."""
    from torch.utils.data import DataLoader

    total = len(paths)
    workers = min(workers, os.cpu_count() or 1) if total >= _PARALLEL_FROM else 0
    loader = DataLoader(_Decoder(paths, size, mode), batch_size=256, num_workers=workers, collate_fn=torch.stack)
    images = torch.empty((total, 3 if mode == "RGB" else 1, *size), dtype=torch.uint8)
    interactive = sys.stderr.isatty()
    started = last = time.monotonic()
    print(f"splicer: decoding {total} images in {folder} (once; later runs read a cache)", file=sys.stderr)
    done = 0
    for batch in loader:
        images[done : done + len(batch)] = batch
        done += len(batch)
        now = time.monotonic()
        if now - last >= (0.5 if interactive else 10.0):
            last = now
            line = f"splicer: decoded {done}/{total} ({done / (now - started):.0f} images/s)"
            print("\r" + line if interactive else line, end="" if interactive else "\n", file=sys.stderr, flush=True)
    if interactive:
        print(file=sys.stderr)
    print(f"splicer: decoded {total} images in {time.monotonic() - started:.1f} s", file=sys.stderr)
    return images
