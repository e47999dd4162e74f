"""The shared inputs of the peer throughput benchmark: CIFAR-100-format files and one teacher's weights
written in each tool's checkpoint format.

Every tool reads the same generated ``cifar-100-python/{train,test,meta}`` pickles (the layout
torchvision's ``CIFAR100`` reads) and the same resnet32x4 weights: splicer's CIFAR ResNet names its
modules ``stem``/``conv1.conv``/``shortcut``, RepDistiller's (which torchdistill also runs here)
``conv1``/``bn1``/``downsample``, so the weights are renamed, never re-drawn.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

CIFAR100_FOLDER = "cifar-100-python"
FINE_CLASSES = 100
COARSE_CLASSES = 20

# splicer's CifarResNet name -> RepDistiller's models/resnet.py name (whole dotted-name tails).
_STEM = {"stem.conv.": "conv1.", "stem.bn.": "bn1."}
_BLOCK = {"conv1.conv.": "conv1.", "conv1.bn.": "bn1.", "conv2.conv.": "conv2.", "conv2.bn.": "bn2.",
          "shortcut.conv.": "downsample.0.", "shortcut.bn.": "downsample.1."}
_BLOCK_KEY = re.compile(r"^(layer\d+\.\d+\.)(.+)$")


def write_cifar100(root: Path, train_images: int, test_images: int, seed: int) -> Path:
    """Random 32x32 RGB images with uniform fine labels (coarse = fine // 5) in CIFAR-100's python pickle
    layout under ``root/cifar-100-python``; the same ``seed`` gives the same bytes. Returns that folder."""
    import numpy as np

    rng = np.random.default_rng(seed)
    folder = root / CIFAR100_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", train_images), ("test", test_images)):
        fine = rng.integers(0, FINE_CLASSES, size=count)
        entry = {
            "filenames": [f"{split}_{index:05d}.png" for index in range(count)],
            "batch_label": f"{split} batch (generated, seed {seed})",
            "fine_labels": [int(label) for label in fine],
            "coarse_labels": [int(label) // (FINE_CLASSES // COARSE_CLASSES) for label in fine],
            # Row-major channel planes, as CIFAR stores them: 1024 red, 1024 green, 1024 blue bytes an image.
            "data": rng.integers(0, 256, size=(count, 3 * 32 * 32), dtype=np.uint8),
        }
        with open(folder / split, "wb") as handle:
            pickle.dump(entry, handle, protocol=2)
    meta = {
        "fine_label_names": [f"class_{k:02d}" for k in range(FINE_CLASSES)],
        "coarse_label_names": [f"superclass_{k:02d}" for k in range(COARSE_CLASSES)],
    }
    with open(folder / "meta", "wb") as handle:
        pickle.dump(meta, handle, protocol=2)
    return folder


def repdistiller_key(splicer_key: str) -> str:
    """The name RepDistiller's CIFAR ResNet gives the tensor splicer's CifarResNet calls ``splicer_key``."""
    for ours, theirs in _STEM.items():
        if splicer_key.startswith(ours):
            return theirs + splicer_key[len(ours) :]
    match = _BLOCK_KEY.match(splicer_key)
    if match:
        block, rest = match.groups()
        for ours, theirs in _BLOCK.items():
            if rest.startswith(ours):
                return block + theirs + rest[len(ours) :]
    if splicer_key.startswith("fc."):
        return splicer_key
    raise ValueError(f"{splicer_key!r} is no tensor of splicer's CIFAR ResNet (stem, layerN.i.*, fc)")


def repdistiller_state(splicer_state: dict[str, Any]) -> dict[str, Any]:
    """``splicer_state`` (a CifarResNet state_dict) under RepDistiller's names, same tensors."""
    renamed = {repdistiller_key(key): value for key, value in splicer_state.items()}
    if len(renamed) != len(splicer_state):
        raise ValueError("two splicer tensors map to one RepDistiller name")
    return renamed


def write_teachers(folder: Path, spec_path: Path, seed: int) -> dict[str, Path]:
    """One randomly initialised teacher of ``spec_path`` (seed ``seed``), saved as a splicer standard-teacher
    checkpoint and as RepDistiller's ``{'model': state_dict}`` (which torchdistill's ``src_ckpt`` reads too).

    RepDistiller finds the architecture in the checkpoint's parent folder name (``resnet32x4_vanilla``),
    so the file goes where its ``--path_t`` expects it.
    """
    import torch

    from splicer.assembly.build import compile_spec
    from splicer.spec import load_spec
    from splicer.training.checkpoint import FORMAT, save_atomic

    spec = load_spec(spec_path)
    torch.manual_seed(seed)
    compiled = compile_spec(spec)
    network, original = compiled.sftn.teacher, compiled.teacher.model
    name = spec.teacher.model.split(":", 1)[1]
    splicer_path = folder / "splicer" / "last.pt"
    peer_path = folder / "repdistiller" / f"{name}_vanilla" / "ckpt_epoch_240.pth"
    for path in (splicer_path, peer_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "kind": "standard",
        "meta": {"note": f"random initialisation, seed {seed}, written by benchmarks/peer_data.py"},
        "spec": spec.model_dump(mode="json"),
        "model": network.state_dict(),
        "epoch": 0,
        "best": {"top1": None, "top5": None, "epoch": None},
    }
    save_atomic(payload, splicer_path)
    torch.save({"model": repdistiller_state(original.state_dict())}, peer_path)
    return {"splicer": splicer_path, "repdistiller": peer_path}


def teacher_reference(splicer_checkpoint: Path, out: Path, images: int = 4, seed: int = 0) -> Path:
    """Inputs and the teacher's eval-mode logits as splicer loads it from ``splicer_checkpoint``: the peers'
    copies of the weights must give the same logits (see ``peer_launch.py --check-teacher``)."""
    import torch

    from splicer.training.checkpoint import load_checkpoint, network_from_checkpoint

    network = network_from_checkpoint(load_checkpoint(splicer_checkpoint), splicer_checkpoint).eval()
    inputs = torch.randn(images, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        logits = network(inputs)
    torch.save({"inputs": inputs, "logits": logits}, out)
    return out
