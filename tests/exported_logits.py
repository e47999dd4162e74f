"""Load files written by `splicer export` as a user would, and print how far their logits are from splicer's.

    python tests/exported_logits.py CASES.json

CASES.json lists {"file", "images", "expected"}: an exported file (its sidecar next to it),
[0, 1] images and the logits splicer's network gave on them (both torch.save'd tensors).
The model is created with the sidecar's "create" line, the images normalised with its mean
and std unless the program has the normalisation built in. Prints {file: max abs difference}
as JSON. Needs torch and the model's library (timm, torchvision) or onnxruntime, not splicer.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def logits(file: Path, info: dict, images: torch.Tensor) -> torch.Tensor:
    if not info["normalization_built_in"]:
        mean = torch.tensor(info["mean"]).view(1, -1, 1, 1)
        std = torch.tensor(info["std"]).view(1, -1, 1, 1)
        images = (images - mean) / std
    if info["format"] == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(file), providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run([info["onnx"]["output"]], {info["onnx"]["input"]: images.numpy()})[0])
    if info["format"] == "pt2":
        return torch.export.load(str(file)).module()(images)
    if info["format"] == "safetensors":
        from safetensors.torch import load_file

        state = load_file(str(file))
    else:
        state = torch.load(file, map_location="cpu", weights_only=True)
    namespace: dict = {}
    exec(info["model"]["create"], namespace)  # e.g. "import timm; model = timm.create_model(...)"
    model = namespace["model"]
    model.load_state_dict(state, strict=True)
    return model.eval()(images)


def main() -> None:
    results = {}
    for case in json.loads(Path(sys.argv[1]).read_text()):
        file = Path(case["file"])
        info = json.loads(file.with_name(file.name + ".json").read_text())
        with torch.no_grad():
            got = logits(file, info, torch.load(case["images"]))
        results[case["file"]] = (got - torch.load(case["expected"])).abs().max().item()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
