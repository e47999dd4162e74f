"""train.loggers: TensorBoard event files and MLflow runs that hold the scalars of metrics.jsonl,
one per run folder (a method's phases included), resumed without doubled points; a logger whose
package is missing refused before anything is written. That only rank 0 writes events under torchrun
is checked in test_distributed.py.

TensorBoard is in the `test` extra. MLflow is not (with its server dependencies it takes over two
minutes to install): its test runs where it is installed (`pip install .[mlflow]`).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from splicer.cli.main import app
from splicer.errors import SplicerError
from splicer.spec import spec_from_dict
from splicer.training.loggers.base import scalars
from splicer.training.stage1 import train_teacher
from tests.conftest import records, toy_spec

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()


def logged_spec(**train: object) -> dict:
    return toy_spec(
        data={"dataset": "synthetic", "synthetic_train": 128, "synthetic_test": 64},
        train={"epochs": 1, "batch_size": 32, "device": "cpu", **train},
    )


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("spec") / "toy.yaml"
    path.write_text(yaml.safe_dump(logged_spec(), sort_keys=False))
    return path


def tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of the TensorBoard run in ``folder``, as TensorBoard reads it back."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def jsonl_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """The same series as metrics.jsonl holds them."""
    series: dict[str, list[tuple[int, float]]] = {}
    for record in records(folder):
        for tag, value in scalars(record).items():
            series.setdefault(tag, []).append((record["epoch"], value))
    return series


TIMINGS = ("img_per_s", "step_seconds", "seconds")


def assert_same_series(logged: dict, expected: dict, untimed: set[int] = frozenset()) -> None:
    """Same tags, steps and values; the timings of the epochs in ``untimed`` are not compared."""
    assert logged.keys() == expected.keys()
    for tag, points in expected.items():
        assert [step for step, _ in logged[tag]] == [step for step, _ in points], tag
        compared = [i for i, (step, _) in enumerate(points) if tag not in TIMINGS or step not in untimed]
        values = [logged[tag][i][1] for i in compared]
        assert values == pytest.approx([points[i][1] for i in compared], rel=1e-6), tag


def train(spec_file: Path, out: Path, epochs: int, *extra: str) -> None:
    result = runner.invoke(app, ["train", str(spec_file), "--epochs", str(epochs), "--out", str(out), "-q", *extra])
    assert result.exit_code == 0, result.output


@pytest.mark.slow
def test_tensorboard_holds_the_metrics_jsonl_scalars_once_per_epoch_across_resumes(spec_file: Path, tmp_path: Path):
    out = tmp_path / "sftn"
    tensorboard = ["--set", "train.loggers=[jsonl,tensorboard]"]
    train(spec_file, out, 1)  # jsonl only: TensorBoard is added on the resume
    epoch_one = tmp_path / "epoch1.pt"
    shutil.copy(out / "last.pt", epoch_one)
    train(spec_file, out, 2, "--resume", *tensorboard)
    assert tensorboard_scalars(out)["loss"][0][0] == 1  # epoch 1 filled in from metrics.jsonl
    # Interrupted after epoch 2 was logged but before its checkpoint: the resume trains epoch 2 again.
    shutil.copy(epoch_one, out / "last.pt")
    train(spec_file, out, 3, "--resume", *tensorboard)

    logged, expected = tensorboard_scalars(out), jsonl_scalars(out)
    assert [step for step, _ in logged["loss"]] == [1, 2, 3]  # no doubled epoch 2
    assert {"loss", "lr", "img_per_s", "train_acc", "eval_top1", "eval_top5"} <= logged.keys()
    assert {"terms/teacher_ce", "terms/branch_kl", "terms/branch_ce"} <= logged.keys()
    assert_same_series(logged, expected)


@pytest.mark.slow
def test_a_distillation_logs_its_phase_and_its_student_as_two_tensorboard_runs(spec_file: Path, tmp_path: Path):
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    train(spec_file, tmp_path / "teacher", 1)
    out = tmp_path / "ft-student"
    result = runner.invoke(
        app,
        ["distill", str(spec_file), "--teacher", str(tmp_path / "teacher"), "--method", "ft", "--out", str(out), "-q"]
        + ["--set", "train.loggers=[tensorboard]"],
    )
    assert result.exit_code == 0, result.output

    runs = EventMultiplexer().AddRunsFromDirectory(str(tmp_path)).Runs()
    assert set(runs) == {"ft-student", str(Path("ft-student", "phases", "paraphraser"))}  # the teacher logged none
    for folder in (out, out / "phases" / "paraphraser"):
        assert_same_series(tensorboard_scalars(folder), jsonl_scalars(folder))
    assert "terms/kd" in tensorboard_scalars(out)


def test_a_missing_logger_package_is_refused_before_anything_is_written(
    spec_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if it were not installed
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", str(spec_file), "--out", str(out), "--set", "train.loggers=[tensorboard]"])
    assert result.exit_code == 2
    expected = (
        "train.loggers includes 'tensorboard' but the tensorboard package is not installed: "
        "pip install 'splicer[tensorboard]'"
    )
    assert expected in " ".join(result.output.split())
    assert "Traceback" not in result.output
    assert not out.exists()
    # The Python API refuses too, before the run folder exists.
    with pytest.raises(SplicerError, match="tensorboard package is not installed"):
        train_teacher(spec_from_dict(logged_spec(loggers=["tensorboard"])), out=out, quiet=True)
    assert not out.exists()


def test_loggers_are_validated_and_keep_metrics_jsonl(spec_file: Path):
    result = runner.invoke(app, ["train", str(spec_file), "--set", "train.loggers=[jsonl,tensorbord]"])
    assert result.exit_code == 2
    assert "train.loggers: unknown logger 'tensorbord'; did you mean 'tensorboard'?" in result.output
    assert "Valid loggers: jsonl, tensorboard, mlflow" in result.output
    assert spec_from_dict(logged_spec(loggers="tensorboard")).train.loggers == ["jsonl", "tensorboard"]
    assert spec_from_dict(logged_spec(loggers=[])).train.loggers == ["jsonl"]
    assert spec_from_dict(logged_spec()).train.loggers == ["jsonl"]


@pytest.mark.slow
def test_mlflow_run_holds_the_spec_and_the_metrics_jsonl_scalars_across_a_resume(spec_file: Path, tmp_path: Path):
    pytest.importorskip("mlflow", reason="mlflow is not in the test extra; pip install '.[mlflow]'")
    from mlflow.tracking import MlflowClient

    out = tmp_path / "sftn"
    mlflow = ["--set", "train.loggers=[mlflow]"]
    train(spec_file, out, 1, *mlflow)
    epoch_one = tmp_path / "epoch1.pt"
    shutil.copy(out / "last.pt", epoch_one)
    train(spec_file, out, 2, "--resume", *mlflow)
    shutil.copy(epoch_one, out / "last.pt")  # epoch 2 logged, its checkpoint lost: trained again
    train(spec_file, out, 3, "--resume", *mlflow)

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("toy")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "sftn" and run.info.status == "FINISHED"
    assert run.data.params["train.lr"] == "0.05" and run.data.params["teacher.model"] == "python:tests.toy_nets:tiny_resnet"
    expected = jsonl_scalars(out)
    logged = {
        key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)) for key in expected
    }
    assert set(run.data.metrics) == expected.keys()
    assert [step for step, _ in logged["loss"]] == [1, 2, 3]
    # MLflow cannot remove a point: epoch 2 keeps its first logging, whose timings were measured then.
    assert_same_series(logged, expected, untimed={2})

