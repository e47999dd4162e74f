"""A harness for tables of user mistakes: run a command in a working folder, then check that it
refused with one clear message and changed nothing the user had.

    before = folder_hashes(tmp_path)
    code, output = run_cli(["build", "spec.yaml"], cwd=tmp_path)
    assert_clear_refusal(code, output, culprits=["spec.yaml"])
    assert folder_hashes(tmp_path) == before

A clear refusal: exit status 2, no Python traceback, at most MAX_LINES lines of output, and the
message names every culprit given (the file, field or value at fault).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from typer.testing import CliRunner

MAX_LINES = 10
REPO = Path(__file__).resolve().parent.parent


def folder_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` by path relative to it, and ``"folder"`` for every folder,
    so that a changed, removed or added file or folder shows as a difference."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "folder"
        for path in sorted(root.rglob("*"))
    }


def run_cli(args: list[str], cwd: Path) -> tuple[int, str]:
    """``splicer ARGS`` in this process (fast), from ``cwd``; its exit status and stdout + stderr."""
    from splicer.cli.main import app

    previous = Path.cwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(app, args)
    finally:
        os.chdir(previous)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        # An exception typer did not turn into an exit status: show it as the traceback it is.
        import traceback

        text = "".join(traceback.format_exception(result.exception))
        return 1, result.output + text
    return result.exit_code, result.output


def run_subprocess(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[int, str]:
    """``python -m splicer ARGS`` in a fresh process, for what only a real process shows (stderr written by torch)."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "120", **(env or {})}
    done = subprocess.run(
        [sys.executable, "-m", "splicer", *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done.returncode, done.stdout + done.stderr


def assert_clear_refusal(code: int, output: str, culprits: Iterable[str]) -> None:
    """Exit status 2, no traceback, a short message that names every culprit."""
    assert code == 2, f"exit status {code}, expected 2:\n{output}"
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert 1 <= len(lines) <= MAX_LINES, f"{len(lines)} lines:\n{output}"
    for culprit in culprits:
        assert culprit in output, f"{culprit!r} not named in:\n{output}"
