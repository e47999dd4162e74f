"""Write a compiled SFTN's artifacts to a folder: source and its trainer, report, graphs (text and pictures), resolved spec."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import yaml

from splicer.assembly.build import BuildResult
from splicer.emission.graph import branch_graph, to_dot, to_mermaid
from splicer.emission.picture import write_result_pictures
from splicer.emission.report import markdown_report
from splicer.emission.source import EmissionError, emit_source
from splicer.emission.trainer import emit_trainer


def write_text_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so an interrupted run never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def resolved_spec_yaml(result: BuildResult) -> str:
    return yaml.safe_dump(result.resolved_spec().model_dump(mode="json"), sort_keys=False)


BUILD_FILES = (
    "sftn.py",
    "train_sftn.py",
    "report.md",
    "branch_graph.dot",
    "branch_graph.mmd",
    "spec.resolved.yaml",
    "branch_graph.svg",
    "branch_graph.png",
)
"""The files :func:`emit_artifacts` writes."""


def check_build_folder(out_dir: Path, spec_name: str, force: bool) -> None:
    """A build may go into a new or empty folder, or over a build of the same spec; over another spec's
    build, or files of its names, only with ``force``; never into a training run or an experiment."""
    from splicer.errors import SplicerError
    from splicer.training.runs import built_spec_name, folder_contents

    found = folder_contents(out_dir)
    if found is None:
        return
    kind, what = found
    if kind in ("run", "experiment", "sweep"):
        raise SplicerError(f"--out {out_dir}: this folder holds {what}; nothing was written. Choose another --out")
    if kind == "build" and built_spec_name(out_dir) == spec_name:
        return
    clashes = [name for name in BUILD_FILES if (out_dir / name).exists()]
    if force or not clashes:
        return
    raise SplicerError(
        f"--out {out_dir}: this folder holds {what}, and building spec {spec_name!r} would overwrite "
        f"{', '.join(clashes[:3])}{' and more' if len(clashes) > 3 else ''}; nothing was written. "
        "Choose another --out, or pass --force to replace them"
    )


def emit_artifacts(result: BuildResult, out_dir: str | Path) -> dict[str, Path]:
    """Write every artifact; returns what was written by kind.

    A failed ``sftn.py`` is noted, not fatal; ``train_sftn.py`` imports it, so it is written only with it.
    """
    out = Path(out_dir)
    written: dict[str, Path] = {}
    try:
        source = emit_source(result)
    except EmissionError as exc:
        result.notes.append(f"sftn.py and train_sftn.py not written: {exc}")
    else:
        written["source"] = out / "sftn.py"
        write_text_atomic(written["source"], source)
        written["trainer"] = out / "train_sftn.py"
        write_text_atomic(written["trainer"], emit_trainer(result))
    graph = branch_graph(result)
    texts = {
        "report": ("report.md", markdown_report(result)),
        "dot": ("branch_graph.dot", to_dot(graph, result.spec.name)),
        "mermaid": ("branch_graph.mmd", to_mermaid(graph)),
        "spec": ("spec.resolved.yaml", resolved_spec_yaml(result)),
    }
    for kind, (name, text) in texts.items():
        written[kind] = out / name
        write_text_atomic(written[kind], text)
    written["svg"], written["png"] = out / "branch_graph.svg", out / "branch_graph.png"
    write_result_pictures(result, [written["svg"], written["png"]])
    return written
