"""What every stored benchmark table records about how it was made: date, command, commit, versions, machine.

Stored results must stay true on another machine: folders are named relative to the
repository (:func:`repo_relative`), and the git commit (:func:`git_commit`) says which code
produced the figures, marked "+dirty" when the working tree had uncommitted changes.
"""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def provenance(argv: list[str] | None, threads: int) -> dict[str, str]:
    """Date, exact command, commit, library versions, machine and load, for a results file's header."""
    import timm
    import torch

    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": portable_command(sys.argv[0], argv if argv is not None else sys.argv[1:]),
        "commit": git_commit(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores (shared), torch threads {threads}",
        "load average at end (1/5/15 min)": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def git_commit() -> str:
    """The checked-out commit, with "+dirty" when tracked files differ from it; says so when unknown.

    Stored results are left out: a benchmark that rewrites its table as it goes (timm coverage)
    must not call its own code dirty.
    """
    try:
        head = _git("rev-parse", "HEAD")
        changed = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)benchmarks/results")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not run from a git checkout)"
    return head + ("+dirty" if changed else "")


def repo_relative(path: str | os.PathLike[str]) -> str:
    """``path`` relative to the repository (POSIX separators), never an absolute path of this machine."""
    absolute = Path(path).resolve()
    try:
        return absolute.relative_to(REPO).as_posix()
    except ValueError:  # outside the repository: relative to it all the same
        return Path(os.path.relpath(absolute, REPO)).as_posix()


def portable_command(script: str, argv: list[str]) -> str:
    """The command line as stored: the script and any absolute path argument relative to the repository."""
    words = [repo_relative(script)]
    for word in argv:
        option, sep, value = word.partition("=") if word.startswith("--") else ("", "", word)
        value = ",".join(repo_relative(part) if os.path.isabs(part) else part for part in value.split(","))
        words.append(option + sep + value)
    return shlex.join(["python", *words])


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True)
    return done.stdout.strip()
