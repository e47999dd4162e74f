"""What a run reports while it trains: a progress bar per epoch, one line per epoch and its
record to the metrics sinks (:mod:`splicer.training.loggers`), the summary and the curves.

Every method is a no-op off the main process (see :class:`Distributed`), so trainers call
them unconditionally.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from splicer.training.distributed import Distributed
from splicer.training.loggers import check_installed, open_sinks
from splicer.training.runs import RunDir

if TYPE_CHECKING:
    from splicer.training.loggers.base import MetricsSink


class EpochProgress:
    """Handle on one epoch's progress bar: advance per step (cheap), refresh numbers when known."""

    def __init__(self, progress: Any, task: Any) -> None:
        self._progress = progress
        self._task = task

    def advance(self, steps: int = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, steps)

    def show(self, loss: float, acc: float | None, img_per_s: float) -> None:
        if self._progress is not None:
            accuracy = f"  acc {acc:5.1f}%" if acc is not None else ""
            stats = f"loss {loss:.4f}{accuracy}  {img_per_s:,.0f} img/s"
            self._progress.update(self._task, stats=stats)


class RunLogger:
    """Rank-aware console output and run files for one run folder."""

    def __init__(self, run: RunDir, dist: Distributed, title: str, quiet: bool = False) -> None:
        self.run = run
        self.dist = dist
        self.title = title
        self.quiet = quiet or not dist.is_main
        self._console: Any = None
        self._sinks: list[MetricsSink] = []

    @property
    def console(self) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=True, highlight=False)
        return self._console

    def info(self, message: str) -> None:
        if not self.quiet:
            self.console.print(message, markup=False, soft_wrap=True)

    @contextmanager
    def recording(self, spec_dict: dict[str, Any], resumed_epoch: int | None) -> Iterator[None]:
        """Within: the run's metrics go to the sinks of ``train.loggers``; on the way out they are
        closed, marked failed if training raised. On a resume, epochs after the checkpoint are forgotten."""
        self._start(spec_dict, resumed_epoch)
        try:
            yield
        except BaseException:
            self._close(failed=True)
            raise
        self._close(failed=False)

    def _start(self, spec_dict: dict[str, Any], resumed_epoch: int | None) -> None:
        """Create the folder, write the resolved spec and open the metrics sinks."""
        check_installed(spec_dict["train"]["loggers"])  # on every rank: all refuse, none waits for the others
        if not self.dist.is_main:
            return
        self.run.path.mkdir(parents=True, exist_ok=True)
        self.run.spec.write_text(yaml.safe_dump(spec_dict, sort_keys=False))
        self._sinks = open_sinks(self.run, spec_dict, resumed_epoch)

    def _close(self, failed: bool) -> None:
        for sink in self._sinks:
            sink.close(failed)
        self._sinks = []

    @contextmanager
    def epoch_progress(self, epoch: int, epochs: int, steps: int) -> Iterator[EpochProgress]:
        """A transient progress bar (loss, accuracy, img/s, ETA) over one epoch's steps."""
        with self.progress(f"{self.title} epoch {epoch}/{epochs}", steps) as progress:
            yield progress

    @contextmanager
    def progress(self, label: str, steps: int) -> Iterator[EpochProgress]:
        """A transient progress bar (numbers, ETA) over ``steps`` steps of any long work, led by ``label``."""
        if self.quiet or not self.console.is_terminal:  # a bar redrawn in a log file is noise
            yield EpochProgress(None, None)
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        progress = Progress(
            TextColumn(label),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        with progress:
            task = progress.add_task("train", total=steps, stats="")
            yield EpochProgress(progress, task)

    def log_epoch(self, record: dict[str, Any], epochs: int, eval_name: str) -> None:
        """Send the epoch's record to every sink (metrics.jsonl first) and print it as one line."""
        if not self.dist.is_main:
            return
        for sink in self._sinks:
            sink.log_epoch(record)
        if self.quiet:
            return
        line = f"{self.title} epoch {record['epoch']}/{epochs}  lr {record['lr']:.4g}  loss {record['loss']:.4f}"
        if record["train_acc"] is not None:
            line += f"  train acc {record['train_acc']:.2f}%"
        if record.get("eval_top1") is not None:
            line += f"  {eval_name} top-1 {record['eval_top1']:.2f}% top-5 {record['eval_top5']:.2f}%"
        line += f"  {record['img_per_s']:,.0f} img/s  {record['seconds']:.1f}s"
        self.console.print(line, markup=False, soft_wrap=True)

    def finish(self, summary: dict[str, Any], kl_term: str | None) -> None:
        """Write summary.json and curves.png."""
        if not self.dist.is_main:
            return
        self.run.summary.write_text(json.dumps(summary, indent=2) + "\n")
        from splicer.training.plots import plot_curves

        plot_curves(read_metrics(self.run.metrics), self.run.curves, title=self.title, kl_term=kl_term)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The per-epoch records of a run (none when it has not finished an epoch)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
