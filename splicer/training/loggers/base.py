"""What every metrics sink does, and the scalars an epoch record holds."""

from __future__ import annotations

from typing import Any, Protocol

from splicer.training.logging import read_metrics
from splicer.training.runs import RunDir


class MetricsSink(Protocol):
    """One destination of a run's per-epoch records (opened by its module's ``open_sink``)."""

    def log_epoch(self, record: dict[str, Any]) -> None:
        """Store one epoch's record (see :func:`scalars`); called after every epoch."""

    def close(self, failed: bool) -> None:
        """Flush and close; ``failed``: the run stopped with an error."""


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """An epoch record's numbers under their metrics.jsonl names, a loss term as ``terms/NAME``;
    the epoch itself is the step, and values not measured this epoch (None) are left out."""
    flat = {f"terms/{name}": value for name, value in record["terms"].items()}
    flat.update((key, value) for key, value in record.items() if key not in ("epoch", "terms"))
    return {key: float(value) for key, value in flat.items() if value is not None}


def earlier_records(run: RunDir, resumed_epoch: int | None) -> list[dict[str, Any]]:
    """The records a resumed run keeps from before its checkpoint: what a logger added on the resume
    fills in first, so that its curves start at epoch 1."""
    if resumed_epoch is None:
        return []
    return [record for record in read_metrics(run.metrics) if record["epoch"] <= resumed_epoch]
