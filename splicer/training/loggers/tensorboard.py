"""TensorBoard event files in the run folder itself, so that ``tensorboard --logdir runs/`` lists
each run by its folder (a method's phases as ``RUN/phases/<name>``). The step is the epoch."""

from __future__ import annotations

from typing import Any

from splicer.training.loggers.base import earlier_records, scalars
from splicer.training.runs import RunDir


class TensorBoardSink:
    def __init__(self, run: RunDir, resumed_epoch: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # TensorBoard hides the points of earlier event files from this step on: a resumed run
        # trains the epochs after its checkpoint again, and a fresh one in a used folder starts over.
        first_epoch = (resumed_epoch or 0) + 1
        earlier = [] if any(run.path.glob("events.out.tfevents.*")) else earlier_records(run, resumed_epoch)
        self._writer = SummaryWriter(log_dir=str(run.path), purge_step=first_epoch)
        for record in earlier:  # loggers: [tensorboard] added on a resume
            self.log_epoch(record)

    def log_epoch(self, record: dict[str, Any]) -> None:
        for tag, value in scalars(record).items():
            self._writer.add_scalar(tag, value, record["epoch"])
        self._writer.flush()  # a watched run shows each epoch when it ends

    def close(self, failed: bool) -> None:
        self._writer.close()


def open_sink(run: RunDir, spec_dict: dict[str, Any], resumed_epoch: int | None) -> TensorBoardSink:
    return TensorBoardSink(run, resumed_epoch)
