"""Where a run's per-epoch metrics go (``train.loggers``): metrics.jsonl always, TensorBoard event
files and MLflow on request, one module per logger.

The training loop talks to one list of sinks (:func:`open_sinks`), on the main process only. The
optional packages are imported only when their logger is used, and :func:`check_installed`
refuses a missing one before anything trains, not after the first epoch.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from splicer.errors import SplicerError
from splicer.spec.schema import LOGGERS

if TYPE_CHECKING:
    from splicer.training.loggers.base import MetricsSink
    from splicer.training.runs import RunDir

SINKS = {name: f"splicer.training.loggers.{name}" for name in LOGGERS}
"""Logger name -> the module whose ``open_sink(run, spec_dict, resumed_epoch)`` opens it."""

PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow"}
"""Logger name -> the optional package it needs, installed by the splicer extra of the same name."""


def check_installed(loggers: Iterable[str]) -> None:
    """Refuse loggers whose package is missing, with the command that installs it."""
    for name in loggers:
        package = PACKAGES.get(name)
        if package is not None and importlib.util.find_spec(package) is None:
            raise SplicerError(
                f"train.loggers includes {name!r} but the {package} package is not installed: "
                f"pip install 'splicer[{name}]'"
            )


def open_sinks(run: RunDir, spec_dict: dict[str, Any], resumed_epoch: int | None) -> list[MetricsSink]:
    """A sink per logger of ``spec_dict``'s ``train.loggers`` (checked with :func:`check_installed`);
    ``resumed_epoch``: the epoch of the checkpoint a resumed run continues from (its later points are
    dropped), None for a new run."""
    sinks: list[MetricsSink] = []
    try:
        for name in spec_dict["train"]["loggers"]:
            sinks.append(importlib.import_module(SINKS[name]).open_sink(run, spec_dict, resumed_epoch))
    except BaseException:
        for sink in sinks:  # one that cannot open (an MLflow store refusing) closes those opened before it
            sink.close(failed=True)
        raise
    return sinks
