"""Online and curriculum baselines (paper table 4): stage-2 alternatives to distilling from
a pretrained, frozen teacher.

============  ======================================================================
name          what trains the student
============  ======================================================================
dml           Deep mutual learning (Zhang et al., 2018): teacher and student from
              scratch together, each with CE + KL to the other's prediction.
kdcl          KDCL-Naive (Guo et al., 2020): teacher and student from scratch
              together, each with CE + KD to their averaged logits.
rco           Route-constrained optimisation, one-stage EEI (Jin et al., 2019): KD
              from the standard teacher's checkpoints saved at equal epoch intervals
              (its anchors), in training order.
============  ======================================================================

One module per baseline; each exposes ``train(spec, out, resume, quiet, teacher)`` and
returns the run summary of the student (a ``distill`` checkpoint, so ``splicer eval`` and
``splicer probe`` read it like any distilled student).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from splicer.spec import Spec

BASELINES = ("dml", "kdcl", "rco")
TITLES = {"dml": "DML", "kdcl": "KDCL-Naive", "rco": "RCO-one-stage-EEI"}


def train_baseline(
    name: str, spec: Spec, out: Path, resume: bool = False, quiet: bool = False, teacher: Path | None = None
) -> dict[str, Any]:
    """Train the baseline ``name``; ``teacher`` is the anchored standard teacher run (RCO only)."""
    from splicer.errors import SplicerError

    if name == "dml":
        from splicer.training.online.dml import train
    elif name == "kdcl":
        from splicer.training.online.kdcl import train
    elif name == "rco":
        from splicer.training.online.rco import train
    else:
        raise SplicerError(f"unknown baseline {name!r}; valid: {', '.join(BASELINES)}")
    return train(spec, out, resume, quiet, teacher)
