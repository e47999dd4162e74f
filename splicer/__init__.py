"""splicer: compile a teacher and a student network into a student-friendly teacher network.

The public API is imported lazily so that ``import splicer`` (and the CLI's start-up) stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = [
    "SFTN",
    "SFTNOutput",
    "BlockNet",
    "Spec",
    "SplicerError",
    "build",
    "build_student",
    "compile_spec",
    "export_run",
    "load_spec",
]

_EXPORTS = {
    "SFTN": "splicer.assembly.modules",
    "SFTNOutput": "splicer.assembly.modules",
    "BlockNet": "splicer.assembly.modules",
    "Spec": "splicer.spec",
    "SplicerError": "splicer.errors",
    "build": "splicer.assembly.build",
    "build_student": "splicer.assembly.build",
    "compile_spec": "splicer.assembly.build",
    "export_run": "splicer.export.exporter",
    "load_spec": "splicer.spec",
}

if TYPE_CHECKING:
    from splicer.assembly.build import build, build_student, compile_spec
    from splicer.assembly.modules import SFTN, BlockNet, SFTNOutput
    from splicer.errors import SplicerError
    from splicer.export.exporter import export_run
    from splicer.spec import Spec, load_spec


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'splicer' has no attribute {name!r}")
