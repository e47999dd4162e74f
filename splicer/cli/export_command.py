"""``splicer export``: a trained network out of splicer (state_dict, safetensors, ONNX, torch.export).

Registered by :mod:`splicer.cli.main`; torch and the exporters load inside the function.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def export(
    run: Annotated[
        Path, typer.Argument(help="Run folder of `splicer train` or `splicer distill`.", show_default=False)
    ],
    format: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            help="state_dict or safetensors (the weights in the original model's own keys), onnx or pt2 "
            "(the network as a program).",
            show_default=False,
        ),
    ],
    which: Annotated[str, typer.Option("--which", help="Checkpoint: best or last.")] = "best",
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="File to write (default: RUN/export/<which>[-normalized].<suffix>).", show_default=False
        ),
    ] = None,
    normalize: Annotated[
        bool,
        typer.Option(
            "--normalize", help="onnx, pt2: build the input normalisation in, so the program takes images in [0, 1]."
        ),
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite --out and its sidecar if they exist.")] = False,
) -> None:
    """Export the network of RUN (a student, a standard teacher, an SFTN's teacher alone) with a JSON sidecar."""
    from splicer.export.exporter import export_run, sidecar_path

    def say(message: str) -> None:
        typer.echo(message, err=True)

    written, description = export_run(run, format, which, out, normalize, force, say)
    point = description["checkpoint"]
    check = description["check"]
    typer.echo(
        f"wrote {written} and {sidecar_path(written).name}: {description['model']['reference']}, "
        f"{_network_words(point)}, {which}.pt (epoch {point['epoch']}); loaded back, its logits differ from "
        f"splicer's network's by at most {check['max_abs_diff']:.1g} on {check['images']} images"
    )


def _network_words(checkpoint: dict[str, str | None]) -> str:
    """What was exported, in words: the SFTN's teacher, a standard teacher, a distilled or a lone student."""
    kind = checkpoint["kind"]
    if kind == "sftn":
        return "the SFTN's teacher (branches dropped)"
    if kind == "standard":
        return "the standard teacher"
    if kind == "student":
        return "the student trained alone"
    teacher = "SFTN" if checkpoint["teacher_kind"] == "sftn" else checkpoint["teacher_kind"]
    return f"the student distilled with {checkpoint['method']} from the {teacher} teacher"
