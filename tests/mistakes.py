"""A small harness for the table-driven mistake tests: hash a folder, run the CLI, assert one clean message.

Every mistake must end with exit status 2, one short message that names the culprit, no
traceback (ours or torchrun's) and no file changed that existed before the command ran.
"""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass
from pathlib import Path

MAX_LINES = 10
"""A message longer than this buries the one line that matters."""


def folder_hashes(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root``, by path relative to it."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@dataclass
class Outcome:
    exit_code: int
    output: str


def run_cli(args: list[str]) -> Outcome:
    """``splicer ARGS`` in this process (typer's CliRunner: fast, no new interpreter)."""
    from typer.testing import CliRunner

    from splicer.cli.main import app

    result = CliRunner().invoke(app, args)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        text = "".join(traceback.format_exception(result.exception))
        return Outcome(result.exit_code, result.output + "\nTraceback (from CliRunner)\n" + text)
    return Outcome(result.exit_code, result.output)


def run_process(command: list[str], cwd: Path, env: dict[str, str], timeout: float) -> Outcome:
    """A command in a new process (torchrun cases), stdout and stderr together."""
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return Outcome(done.returncode, done.stdout + done.stderr)


def assert_one_clean_message(outcome: Outcome, *culprits: str) -> None:
    """Exit 2, no traceback, at most MAX_LINES lines of message, naming every ``culprit`` (case-insensitive)."""
    text = outcome.output
    assert outcome.exit_code == 2, f"exit {outcome.exit_code}:\n{text}"
    assert "Traceback" not in text and "ChildFailedError" not in text, text
    lines = [line for line in text.splitlines() if line.strip()]
    assert 1 <= len(lines) <= MAX_LINES, f"{len(lines)} lines:\n{text}"
    for culprit in culprits:
        assert culprit.lower() in text.lower(), f"{culprit!r} not named in:\n{text}"


def assert_unchanged(root: Path, before: dict[str, str]) -> None:
    """Every file that existed before is still there with the same bytes."""
    after = folder_hashes(root)
    changed = [name for name, digest in before.items() if after.get(name) != digest]
    assert not changed, f"changed or removed: {changed}"
