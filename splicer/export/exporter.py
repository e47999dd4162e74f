"""``export_run``: write one checkpoint of a run in one format, check it, and describe it in a sidecar."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from splicer.errors import SplicerError
from splicer.export.formats import Format, Normalized, get_format
from splicer.export.source import ExportSource, check_run, open_source

CHECK_IMAGES = 3
"""Images every export is checked on: a batch size other than the one programs are traced with."""
TOLERANCE = 1e-4
"""Largest difference allowed between the exported network's logits and splicer's, relative to the largest logit
(and absolute below 1)."""


def default_out(run: Path, which: str, fmt: Format, normalize: bool) -> Path:
    """``RUN/export/<which>[-normalized].<suffix>``: one file per checkpoint, format and input convention."""
    return run / "export" / f"{which}{'-normalized' if normalize else ''}{fmt.suffix}"


def sidecar_path(out: Path) -> Path:
    """The JSON that describes ``out``: its name with ``.json`` appended (``best.onnx.json``)."""
    return out.with_name(out.name + ".json")


def export_run(
    run: str | Path,
    format: str,
    which: str = "best",
    out: Path | None = None,
    normalize: bool = False,
    force: bool = False,
    say: Callable[[str], None] = lambda message: None,
) -> tuple[Path, dict[str, Any]]:
    """Export ``run``'s ``which`` checkpoint as ``format``; returns the file written and its sidecar's content.

    Everything the user can get wrong is refused before the network is rebuilt. The file is
    written to a scratch folder next to ``out`` and moved into place, with its sidecar, only
    once it has been loaded back as a user would (into a freshly created original model, or
    by onnxruntime or torch.export.load) and gave splicer's own network's logits on the
    same images.
    """
    fmt = get_format(format)
    fmt.require_packages()
    if normalize and not fmt.program:
        raise SplicerError(
            f"--normalize builds the input normalisation into a program (onnx, pt2); a {fmt.name} file holds the "
            "model's weights alone (the sidecar gives the mean and std to normalise with)"
        )
    folder = check_run(run, which)
    out = Path(out) if out is not None else default_out(folder.path, which, fmt, normalize)
    _check_out(out, force)
    say(f"rebuilding the network of {folder.path / (which + '.pt')}")
    source = open_source(folder, which)
    network_spec = source.network_spec
    model = Normalized(source.model, source.mean, source.std).eval() if normalize else source.model
    images = torch.rand(CHECK_IMAGES, *source.spec.input_size, generator=torch.Generator().manual_seed(1))
    normalised = _normalise(images, source)
    inputs = images if normalize else normalised  # what the exported file takes
    with torch.no_grad():
        expected = source.network(normalised)
    say(f"writing {out} ({fmt.name}, {network_spec.model})")
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = out.parent / f".{out.name}.partial"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    try:
        written = scratch / out.name
        with torch.no_grad():
            facts = fmt.write(model, written, tuple(source.spec.input_size))
        say(f"checking {out.name}: loading it back and comparing logits with splicer's network")
        difference = _difference(fmt.check(written, inputs, _factory(source)), expected, fmt)
        description = _describe(source, fmt, out, normalize, facts, difference)
        sidecar_path(written).write_text(json.dumps(description, indent=2) + "\n")
        for path in scratch.iterdir():  # with the sidecar; a large ONNX file also with its external data
            os.replace(path, out.parent / path.name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return out, description


def _check_out(out: Path, force: bool) -> None:
    """No export silently replaces a file: an existing ``out`` or sidecar needs ``force``; a folder is never one."""
    if out.is_dir():
        raise SplicerError(f"--out {out}: this is a folder; name the file to write, e.g. {out / 'model.onnx'}")
    existing = [str(path) for path in (out, sidecar_path(out)) if path.exists()]
    if existing and not force:
        raise SplicerError(
            f"--out: {' and '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; "
            "pass --force to overwrite, or choose another --out"
        )


def _normalise(images: Tensor, source: ExportSource) -> Tensor:
    mean = torch.tensor(source.mean).view(1, -1, 1, 1)
    std = torch.tensor(source.std).view(1, -1, 1, 1)
    return (images - mean) / std


def _difference(logits: Tensor, expected: Tensor, fmt: Format) -> float:
    """The largest difference between the exported network's logits and splicer's; refuses one over tolerance."""
    difference = (logits.float() - expected.float()).abs().max().item()
    allowed = TOLERANCE * max(1.0, expected.abs().max().item())
    if not difference <= allowed:
        raise SplicerError(
            f"the exported {fmt.name} network gives logits that differ from splicer's by {difference:.3g} "
            f"(allowed {allowed:.3g}); nothing was written. Please report this with the run's spec"
        )
    return difference


def _factory(source: ExportSource) -> Callable[[], torch.nn.Module]:
    """A fresh original model, created as users create it (no spec checkpoint: the exported weights replace all)."""
    from splicer.models.registry import create_model

    network = source.network_spec

    def create() -> torch.nn.Module:
        with torch.random.fork_rng(devices=[]):
            return create_model(network.model, source.spec.num_classes, network.kwargs)

    return create


def _describe(
    source: ExportSource, fmt: Format, out: Path, normalize: bool, facts: dict[str, Any], difference: float
) -> dict[str, Any]:
    """The sidecar: what the file is, what it expects, what it came from and how well it did."""
    from splicer import __version__
    from splicer.data.build import SMALL_SIDE

    spec, network = source.spec, source.network_spec
    _, height, width = spec.input_size
    large = spec.data.dataset == "imagefolder" and max(height, width) > SMALL_SIDE
    summary = source.summary
    checkpoint = source.checkpoint
    return {
        "file": out.name,
        "format": fmt.name,
        fmt.name: facts,
        "splicer_version": __version__,
        "network": source.role,
        "model": {
            "reference": network.model,
            "kwargs": network.kwargs,
            "num_classes": spec.num_classes,
            "create": _constructor(network.model, spec.num_classes, network.kwargs),
        },
        "input_size": list(spec.input_size),
        "mean": source.mean,
        "std": source.std,
        "normalization_built_in": normalize,
        "input": (
            "float32 images (N, C, H, W) in [0, 1]; the program normalises them"
            if normalize
            else "float32 images (N, C, H, W), normalised: (x - mean) / std per channel, x in [0, 1]"
        ),
        "resize_then_crop": round(min(height, width) * 256 / 224) if large else None,
        "classes": source.classes,
        "run": str(source.run.path),
        "checkpoint": {
            "which": source.which,
            "epoch": checkpoint["epoch"],
            "kind": checkpoint["kind"],
            "method": checkpoint["meta"].get("method"),
            "teacher_kind": checkpoint["meta"].get("teacher_kind"),
        },
        "accuracy": (
            {"eval_split": summary["eval_split"], "final": summary["final"], "best": summary["best"]}
            if summary is not None
            else None
        ),
        "check": {"images": CHECK_IMAGES, "max_abs_diff": difference, "against": "splicer's network, same images"},
        "spec": checkpoint["spec"],
    }


def _constructor(reference: str, num_classes: int, kwargs: dict[str, Any]) -> str:
    """Python that creates the original model, into which the state_dict and safetensors files load."""
    from splicer.models.registry import constructor_source

    if reference.startswith("cifar:"):  # splicer's own zoo: the one case that imports splicer
        from splicer.models.cifar import CIFAR_MODELS

        name = {key.lower(): key for key in CIFAR_MODELS}[reference.partition(":")[2].lower()]
        extra = "".join(f", {key}={value!r}" for key, value in kwargs.items())
        imports = "from splicer.models.cifar import CIFAR_MODELS"
        call = f"CIFAR_MODELS[{name!r}](num_classes={num_classes}{extra})"
    else:
        imports, call = constructor_source(reference, num_classes, kwargs)
    return f"{imports}; model = {call}"
