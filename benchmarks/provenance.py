"""What every stored benchmark table records about how it was made: date, command, versions, machine."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import sys


def provenance(argv: list[str] | None, threads: int) -> dict[str, str]:
    """Date, exact command, library versions, machine and load, for a results file's header."""
    import timm
    import torch

    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": shlex.join(["python", sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores (shared), torch threads {threads}",
        "load average at end (1/5/15 min)": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
