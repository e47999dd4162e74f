"""Run a script in a fresh Python process where ``import splicer`` fails, to prove it stands alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# Installed before the script runs: any attempt to import splicer raises, and at exit the
# process checks that no splicer module got in some other way.
_GUARD = """
import atexit, importlib.abc, runpy, sys

class NoSplicer(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "splicer" or name.startswith("splicer."):
            raise ImportError(f"{name} imported by a script that must run without splicer")
        return None

sys.meta_path.insert(0, NoSplicer())
atexit.register(lambda: [m for m in sys.modules if m.split(".")[0] == "splicer"] and sys.exit("splicer was imported"))
script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
"""


def run_without_splicer(
    script: Path, *args: str, cwd: Path, timeout: float = 300, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with ``args`` in ``cwd``, without splicer on the path or importable; with ``check``, fails the
    test on error."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run(
        [sys.executable, "-c", _GUARD, str(script), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )
    assert done.returncode == 0 or not check, f"{script} failed:\n{done.stdout}\n{done.stderr}"
    return done
