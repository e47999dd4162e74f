"""Export a trained student so that it runs without splicer: a torch.export program plus a JSON sidecar.

    python examples/05_export_student.py runs/example/kd-from-sftn     # writes runs/example/kd-from-sftn/export/
    python examples/05_predict_without_splicer.py runs/example/kd-from-sftn/export/student.pt2 photo1.png photo2.jpg

The exported program takes images as float tensors in [0, 1] at the training size (any batch
size) and returns logits: the data normalisation the student was trained with is built into it.
``student.json`` next to it records the input size and the class names.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import Tensor, nn

from splicer.data import build_data
from splicer.data.build import SMALL_SIDE
from splicer.spec import spec_from_dict
from splicer.training.checkpoint import load_checkpoint, network_from_checkpoint, resolve_checkpoint


class Normalized(nn.Module):
    """The student with its input normalisation in front: [0, 1] images in, logits out."""

    def __init__(self, network: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.network = network
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, images: Tensor) -> Tensor:
        return self.network((images - self.mean) / self.std)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a `splicer distill` (or student) run folder, or its .pt file")
    parser.add_argument("--which", default="best", choices=["best", "last"], help="checkpoint of a run folder")
    parser.add_argument("--out", type=Path, help="the .pt2 file to write (default: export/student.pt2 in the run's folder)")
    args = parser.parse_args()

    path = resolve_checkpoint(args.run, args.which)
    args.out = args.out or path.parent / "export" / "student.pt2"
    checkpoint = load_checkpoint(path)
    spec = spec_from_dict(checkpoint["spec"], source=str(path))
    student = network_from_checkpoint(checkpoint, path, spec).eval()  # the student, weights loaded

    # The normalisation statistics splicer used for this data (per-channel statistics of the
    # training images for small images, ImageNet's for large ones): read from the data itself.
    data = build_data(spec.data, spec.input_size, spec.num_classes, 1, torch.device("cpu"), spec.train.seed)
    model = Normalized(student, data.mean, data.std).eval()

    # torch.export traces the model once into a self-contained program (graph + weights) that
    # torch.export.load runs in any process, without the Python classes that built it.
    example = torch.rand(2, *spec.input_size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(model, (example,), dynamic_shapes={"images": {0: batch}})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, args.out)
    # How splicer prepared evaluation images: large ones resized (shorter side) and centre-cropped, small ones resized.
    large = max(spec.input_size[1:]) > SMALL_SIDE
    sidecar = {
        "input_size": list(spec.input_size),
        "classes": data.class_names,
        "resize_then_crop": round(min(spec.input_size[1:]) * 256 / 224) if large else None,
    }
    args.out.with_suffix(".json").write_text(json.dumps(sidecar, indent=2) + "\n")
    print(f"wrote {args.out} and {args.out.with_suffix('.json')} ({spec.student.model}, {spec.num_classes} classes)")


if __name__ == "__main__":
    main()
