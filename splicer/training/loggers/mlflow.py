"""MLflow: one MLflow run per run folder, in the experiment named after the spec; the resolved
spec, flattened, as its parameters; each epoch's scalars as metrics (step = epoch).

The store is ``train.mlflow_uri``, else ``MLFLOW_TRACKING_URI``, else a SQLite file in the run
folder (``RUN/mlflow.db``: MLflow's own file store is in maintenance mode and refuses to open by
default). A resumed run continues its MLflow run, named in ``RUN/mlflow.json``.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from splicer.errors import SplicerError
from splicer.training.loggers.base import earlier_records, scalars
from splicer.training.runs import RunDir

BATCH = 100
"""Parameters per request: the most MLflow's log_batch accepts."""


class MlflowSink:
    def __init__(self, run: RunDir, spec_dict: dict[str, Any], resumed_epoch: int | None) -> None:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        given = spec_dict["train"].get("mlflow_uri") or os.environ.get("MLFLOW_TRACKING_URI")
        uri = given or f"sqlite:///{(run.path / 'mlflow.db').resolve()}"
        self._logged = 0  # epochs already in the MLflow run (a resumed run logs only later ones)
        try:
            self._client = MlflowClient(tracking_uri=uri)
            experiment = self._client.get_experiment_by_name(spec_dict["name"])
            experiment_id = (
                experiment.experiment_id if experiment else self._client.create_experiment(spec_dict["name"])
            )
            self._run_id = self._resumed_run(run, given) if resumed_epoch is not None else None
            if self._run_id is None:
                self._run_id = self._client.create_run(
                    experiment_id, run_name=run_name(run), tags={"splicer.run": str(run.path)}
                ).info.run_id
                self._log_params(spec_dict)
                for record in earlier_records(run, resumed_epoch):  # loggers: [mlflow] added on a resume
                    self.log_epoch(record)
            run.mlflow.write_text(json.dumps({"run_id": self._run_id, "tracking_uri": given}) + "\n")
        except MlflowException as exc:
            setting = "train.mlflow_uri" if spec_dict["train"].get("mlflow_uri") else "MLFLOW_TRACKING_URI"
            raise SplicerError(f"{setting} {uri}: MLflow cannot log there: {exc.message}") from None

    def _resumed_run(self, run: RunDir, given: str | None) -> str | None:
        """The MLflow run this run folder logged to, when it is in the same store; None otherwise."""
        if not run.mlflow.is_file():
            return None
        stored = json.loads(run.mlflow.read_text())
        if stored.get("tracking_uri") != given:
            return None
        from mlflow.exceptions import MlflowException

        try:
            self._client.update_run(stored["run_id"], status="RUNNING")
        except MlflowException:
            return None  # deleted from the store: start a new MLflow run
        history = self._client.get_metric_history(stored["run_id"], "loss")
        self._logged = max((m.step for m in history), default=0)
        return stored["run_id"]

    def _log_params(self, spec_dict: dict[str, Any]) -> None:
        from mlflow.entities import Param

        params = [Param(key, _text(value)) for key, value in flatten(spec_dict).items()]
        for start in range(0, len(params), BATCH):
            self._client.log_batch(self._run_id, params=params[start : start + BATCH])

    def log_epoch(self, record: dict[str, Any]) -> None:
        if record["epoch"] <= self._logged:  # logged before an interruption; resume retrains it identically
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, record["epoch"]) for key, value in scalars(record).items()]
        self._client.log_batch(self._run_id, metrics=metrics)

    def close(self, failed: bool) -> None:
        self._client.set_terminated(self._run_id, status="FAILED" if failed else "FINISHED")


def run_name(run: RunDir) -> str:
    """The run folder's name; a method's phase as ``<run>/<phase>``."""
    if run.path.parent.name == "phases":
        return f"{run.path.parent.parent.name}/{run.path.name}"
    return run.path.name


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings under dotted names (``train.lr``); lists stay whole values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def open_sink(run: RunDir, spec_dict: dict[str, Any], resumed_epoch: int | None) -> MlflowSink:
    return MlflowSink(run, spec_dict, resumed_epoch)
