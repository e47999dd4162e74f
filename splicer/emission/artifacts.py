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
