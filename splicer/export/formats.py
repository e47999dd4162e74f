"""The formats ``splicer export`` writes, each with the loader that checks the written file.

``state_dict`` and ``safetensors`` hold the original model's weights in its own keys;
``onnx`` and ``pt2`` hold the whole network as a program that takes a batch of images
(any batch size) and returns logits. A writer returns the facts about the file that the
sidecar records; a checker loads the file as a user would and returns the logits it gives.
"""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from splicer.errors import SplicerError, did_you_mean

INPUT_NAME, OUTPUT_NAME = "images", "logits"
ONNX_SINGLE_FILE_BYTES = 1 << 30
"""Weights up to this size stay inside the .onnx file; larger ones go to FILE.data next to it (protobuf's
2 GB limit on one file, with room for the graph)."""
EXTRA_HINT = "pip install 'splicer[export]'"

Factory = Callable[[], nn.Module]
"""A fresh original model (``timm.create_model(name, num_classes=N)`` or the like), for the weight formats' check."""


@dataclass(frozen=True)
class Format:
    """One export format: its file suffix, the packages it needs, its writer and its checker."""

    name: str
    suffix: str
    program: bool  # a runnable network (normalisation can be built in), not weights alone
    packages: tuple[str, ...]
    write: Callable[[nn.Module, Path, tuple[int, ...]], dict[str, Any]]
    check: Callable[[Path, Tensor, Factory], Tensor]

    def require_packages(self) -> None:
        """Refuse, before any work, when a package this format needs is not installed."""
        missing = [name for name in self.packages if importlib.util.find_spec(name) is None]
        if missing:
            raise SplicerError(
                f"--format {self.name} needs the package{'s' if len(missing) > 1 else ''} {', '.join(missing)}, "
                f"which {'are' if len(missing) > 1 else 'is'} not installed: {EXTRA_HINT}"
            )
        if self.name == "onnx" and "dynamo" not in inspect.signature(torch.onnx.export).parameters:
            raise SplicerError(
                f"--format onnx needs torch 2.5 or newer (its torch.export-based exporter); this is {torch.__version__}"
            )


class Normalized(nn.Module):
    """A network with its input normalisation in front: images in [0, 1] in, logits out."""

    def __init__(self, network: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.network = network
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: Tensor) -> Tensor:
        return self.network((images - self.mean) / self.std)


def _example(input_size: tuple[int, ...]) -> Tensor:
    """The batch programs are traced with; 2 images, so that the batch size stays a free dimension."""
    return torch.rand(2, *input_size, generator=torch.Generator().manual_seed(0))


def _weights(model: nn.Module) -> dict[str, Tensor]:
    """The state_dict as separate contiguous tensors (safetensors refuses tensors that share memory)."""
    return {key: value.detach().contiguous().clone() for key, value in model.state_dict().items()}


def write_state_dict(model: nn.Module, path: Path, input_size: tuple[int, ...]) -> dict[str, Any]:
    torch.save(_weights(model), path)
    return {"load": "model.load_state_dict(torch.load(FILE, weights_only=True), strict=True)"}


def check_state_dict(path: Path, images: Tensor, factory: Factory) -> Tensor:
    return _run_fresh(factory, torch.load(path, map_location="cpu", weights_only=True), images)


def write_safetensors(model: nn.Module, path: Path, input_size: tuple[int, ...]) -> dict[str, Any]:
    from safetensors.torch import save_file

    save_file(_weights(model), str(path), metadata={"format": "pt"})
    return {"load": "model.load_state_dict(safetensors.torch.load_file(FILE), strict=True)"}


def check_safetensors(path: Path, images: Tensor, factory: Factory) -> Tensor:
    from safetensors.torch import load_file

    return _run_fresh(factory, load_file(str(path)), images)


def _run_fresh(factory: Factory, state: dict[str, Tensor], images: Tensor) -> Tensor:
    """A freshly created original model, the file's weights loaded with strict=True, on ``images``."""
    model = factory()
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        return model.eval()(images)


def _batch_dimension() -> tuple[dict[int, Any]]:
    return ({0: torch.export.Dim("batch")},)


def write_onnx(model: nn.Module, path: Path, input_size: tuple[int, ...]) -> dict[str, Any]:
    """torch's default (torch.export-based) ONNX exporter at its default opset, with a free batch dimension.

    The TorchScript-based exporter (``dynamo=False``) is deprecated since torch 2.9; this one
    needs the onnxscript package.
    """
    import onnx

    size = sum(value.numel() * value.element_size() for value in model.state_dict().values())
    external = size > ONNX_SINGLE_FILE_BYTES
    torch.onnx.export(
        model,
        (_example(input_size),),
        str(path),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes=_batch_dimension(),
        dynamo=True,
        external_data=external,
        verbose=False,
    )
    proto = onnx.load(str(path), load_external_data=False)
    opset = next(entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx"))
    return {
        "opset": opset,
        "input": INPUT_NAME,
        "output": OUTPUT_NAME,
        "dynamic_axes": {INPUT_NAME: [0], OUTPUT_NAME: [0]},
        "external_data": f"{path.name}.data" if external else None,
    }


def check_onnx(path: Path, images: Tensor, factory: Factory) -> Tensor:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})
    return torch.from_numpy(logits)


def write_pt2(model: nn.Module, path: Path, input_size: tuple[int, ...]) -> dict[str, Any]:
    """A torch.export program, for ``torch.export.load(FILE).module()``, with a free batch dimension."""
    program = torch.export.export(model, (_example(input_size),), dynamic_shapes=_batch_dimension())
    torch.export.save(program, str(path))
    return {"load": "torch.export.load(FILE).module()"}


def check_pt2(path: Path, images: Tensor, factory: Factory) -> Tensor:
    with torch.no_grad():
        return torch.export.load(str(path)).module()(images)


FORMATS: dict[str, Format] = {
    "state_dict": Format("state_dict", ".pth", False, (), write_state_dict, check_state_dict),
    "safetensors": Format("safetensors", ".safetensors", False, ("safetensors",), write_safetensors, check_safetensors),
    "onnx": Format("onnx", ".onnx", True, ("onnx", "onnxscript", "onnxruntime"), write_onnx, check_onnx),
    "pt2": Format("pt2", ".pt2", True, (), write_pt2, check_pt2),
}


def get_format(name: str) -> Format:
    """The format called ``name``, or a message that lists the valid ones."""
    if name not in FORMATS:
        raise SplicerError(f"--format {name!r}: unknown format{did_you_mean(name, FORMATS) or ';'} valid: {', '.join(FORMATS)}")
    return FORMATS[name]
