"""metrics.jsonl: one JSON record per epoch in the run folder, always written: summary.json,
curves.png and the reports of `splicer run` and sweeps are built from it."""

from __future__ import annotations

import json
from typing import Any

from splicer.training.loggers.base import earlier_records
from splicer.training.runs import RunDir


class JsonlSink:
    def __init__(self, run: RunDir, resumed_epoch: int | None) -> None:
        self.path = run.metrics
        # Epochs logged after a resumed run's checkpoint was written are trained again: drop their records.
        kept = earlier_records(run, resumed_epoch)
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def log_epoch(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def close(self, failed: bool) -> None:
        pass  # every record is written when it is logged


def open_sink(run: RunDir, spec_dict: dict[str, Any], resumed_epoch: int | None) -> JsonlSink:
    return JsonlSink(run, resumed_epoch)
