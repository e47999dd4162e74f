"""Classify image files with a student exported by 05_export_student.py; needs torch and torchvision, not splicer.

    python examples/05_predict_without_splicer.py runs/example/kd-from-sftn/export/student.pt2 photo1.png photo2.jpg

Each image is printed by the path it was given, so files of one name in several folders stay apart.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms import functional as TF


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("program", type=Path, help="the .pt2 file; its .json sidecar sits next to it")
    parser.add_argument("images", type=Path, nargs="+")
    parser.add_argument("--top", type=int, default=3, help="classes shown per image")
    args = parser.parse_args()

    # The sidecar: FILE.json from `splicer export`, student.json from 05_export_student.py.
    sidecars = [args.program.with_name(args.program.name + ".json"), args.program.with_suffix(".json")]
    info = json.loads(next((path for path in sidecars if path.is_file()), sidecars[-1]).read_text())
    channels, height, width = info["input_size"]
    model = torch.export.load(args.program).module()  # an nn.Module; normalisation is built in

    # Images as splicer evaluated them: RGB (or grayscale) at the input size, in [0, 1]; the normalisation
    # is inside the program.
    def load(path: Path) -> torch.Tensor:
        image = Image.open(path).convert("RGB" if channels == 3 else "L")
        if info["resize_then_crop"]:  # large images: shorter side resized, then the centre cut out
            image = TF.center_crop(TF.resize(image, info["resize_then_crop"]), [height, width])
        else:
            image = image.resize((width, height), Image.BILINEAR)
        return TF.to_tensor(image)

    batch = torch.stack([load(path) for path in args.images])
    if not info.get("normalization_built_in", True):  # `splicer export` without --normalize
        mean, std = (torch.tensor(info[key]).view(1, -1, 1, 1) for key in ("mean", "std"))
        batch = (batch - mean) / std
    with torch.no_grad():
        probabilities = model(batch).softmax(1)
    top = probabilities.topk(min(args.top, probabilities.shape[1]), dim=1)
    for path, scores, indices in zip(args.images, top.values, top.indices):
        ranked = ", ".join(f"{info['classes'][k]} {p:.1%}" for p, k in zip(scores.tolist(), indices.tolist()))
        print(f"{path}: {ranked}")


if __name__ == "__main__":
    main()
