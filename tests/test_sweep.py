"""``splicer run --sweep``: a grid of spec values, each with its SFTN and students, in the
layout of tables 5/6; finished cells are reused when the sweep is rerun or extended."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from splicer.cli.main import app
from splicer.errors import SplicerError
from splicer.spec import spec_from_dict
from splicer.experiments import sweep
from splicer.experiments.sweep import cell_name, grid, parse_sweeps, run_sweep
from tests.conftest import toy_spec

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_thread")


def small_spec_dict() -> dict:
    return toy_spec(
        data={"dataset": "synthetic", "synthetic_train": 256, "synthetic_test": 128},
        train={"epochs": 2, "batch_size": 32, "lr": 0.05, "milestones": [1], "device": "cpu"},
    )


def test_parse_and_grid(tmp_path: Path):
    sweeps = parse_sweeps(["loss.tau=1,5", "train.milestones=[1, 2],[3]"])
    assert sweeps == [("loss.tau", [1, 5]), ("train.milestones", [[1, 2], [3]])]
    assert grid(sweeps) == [
        {"loss.tau": 1, "train.milestones": [1, 2]},
        {"loss.tau": 1, "train.milestones": [3]},
        {"loss.tau": 5, "train.milestones": [1, 2]},
        {"loss.tau": 5, "train.milestones": [3]},
    ]
    assert cell_name({"loss.tau": 5}) == "loss.tau=5" and cell_name({}) == "reference"
    with pytest.raises(SplicerError, match="KEY.PATH=V1,V2"):
        parse_sweeps(["loss.tau"])
    with pytest.raises(SplicerError, match="loss.bogus"):
        run_sweep(spec_from_dict(small_spec_dict()), parse_sweeps(["loss.bogus=1,2"]), ["kd"], [0], tmp_path / "x")
    assert not (tmp_path / "x").exists()  # nothing written for a bad key


@pytest.fixture(scope="module")
def two_values(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """`splicer run --sweep loss.tau=1,5` through the CLI."""
    folder = tmp_path_factory.mktemp("sweep")
    spec_file = folder / "toy.yaml"
    spec_file.write_text(yaml.safe_dump(small_spec_dict(), sort_keys=False))
    out = folder / "out"
    result = runner.invoke(app, ["run", str(spec_file), "--sweep", "loss.tau=1,5", "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    return spec_file, out


def test_two_value_sweep_report_has_the_layout_of_tables_5_and_6(two_values: tuple[Path, Path]):
    _, out = two_values
    report = json.loads((out / "report.json").read_text())
    assert [row["assignment"] for row in report["cells"]] == [{"loss.tau": 1}, {"loss.tau": 5}]
    assert list(report["references"]) == ["reference"]  # tau does not change the standard teacher
    for row in report["cells"]:
        summary = json.loads((out / "seed0" / row["cell"] / "sftn" / "summary.json").read_text())
        assert row["sftn"]["mean"] == summary["final"]["top1"]
        assert yaml.safe_load((out / "seed0" / row["cell"] / "sftn" / "spec.yaml").read_text())["loss"]["tau"] == row[
            "assignment"
        ]["loss.tau"]
        assert 0 <= row["students"]["kd"]["mean"] <= 100
    markdown = (out / "report.md").read_text()
    assert "| Setting | Teacher accuracy | Student by KD |" in markdown
    assert "| SFTN, loss.tau=1 |" in markdown and "| SFTN, loss.tau=5 |" in markdown and "| Standard |" in markdown
    assert not (out / "seed0" / "loss.tau=1" / "standard").exists()  # the standard teacher is trained once
    assert (out / "seed0" / "reference" / "standard" / "last.pt").is_file()


def test_rerun_and_extension_reuse_finished_cells(two_values: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch):
    spec_file, out = two_values
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.pt")}
    trained: list[tuple[str, str]] = []
    original_teacher, original_distill = sweep.train_teacher, sweep.distill

    def teacher(spec, standard, path, resume, quiet):  # type: ignore[no-untyped-def]
        trained.append(("teacher", str(path.relative_to(out))))
        return original_teacher(spec, standard, path, resume, quiet)

    def distill(spec, teacher_run, method, path, resume, quiet):  # type: ignore[no-untyped-def]
        trained.append(("distill", str(path.relative_to(out))))
        return original_distill(spec, teacher_run, method, path, resume, quiet)

    monkeypatch.setattr(sweep, "train_teacher", teacher)
    monkeypatch.setattr(sweep, "distill", distill)
    again = runner.invoke(app, ["run", str(spec_file), "--sweep", "loss.tau=1,5", "--out", str(out), "-q"])
    assert again.exit_code == 0, again.output
    assert trained == []
    extended = runner.invoke(app, ["run", str(spec_file), "--sweep", "loss.tau=1,5,10", "--out", str(out), "-q"])
    assert extended.exit_code == 0, extended.output
    assert trained == [("teacher", "seed0/loss.tau=10/sftn"), ("distill", "seed0/loss.tau=10/kd-from-sftn")]
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())  # finished runs untouched
    assert len(json.loads((out / "report.json").read_text())["cells"]) == 3


def test_a_sweep_folder_refuses_another_spec(two_values: tuple[Path, Path]):
    spec_file, out = two_values
    result = runner.invoke(app, ["run", str(spec_file), "--sweep", "loss.tau=1", "--epochs", "3", "--out", str(out), "-q"])
    assert result.exit_code == 2 and "another spec" in result.output


def test_schedule_scale_multiplies_epochs_and_milestones():
    from splicer.training.overrides import scale_schedule

    spec = spec_from_dict(toy_spec(train={"epochs": 240, "milestones": [150, 180, 210]}))
    longer = scale_schedule(spec, 4)
    assert longer.train.epochs == 960 and longer.train.milestones == [600, 720, 840]
    assert scale_schedule(spec, 0.5).train.milestones == [75, 90, 105]
    with pytest.raises(SplicerError, match="schedule-scale"):
        scale_schedule(spec, 0)


def test_a_key_that_changes_the_standard_teacher_gets_a_reference_per_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Folder layout only: training is replaced by writing a finished summary."""
    calls: list[str] = []

    def fake_run(path: Path, spec) -> dict:  # type: ignore[no-untyped-def]
        calls.append(str(path.relative_to(tmp_path / "out")))
        path.mkdir(parents=True)
        summary = {"run": str(path), "epochs": spec.train.epochs, "eval_split": "test", "final": {"top1": 50.0}}
        (path / "summary.json").write_text(json.dumps(summary))
        return summary

    monkeypatch.setattr(sweep, "train_teacher", lambda spec, standard, path, resume, quiet: fake_run(path, spec))
    monkeypatch.setattr(sweep, "distill", lambda spec, teacher, method, path, resume, quiet: fake_run(path, spec))
    spec = spec_from_dict(small_spec_dict())
    report = run_sweep(spec, parse_sweeps(["distill.kd_tau=2,4"]), ["kd"], [0], tmp_path / "out", quiet=True)
    assert sorted(report["references"]) == ["distill.kd_tau=2", "distill.kd_tau=4"]
    assert "seed0/distill.kd_tau=2/standard" in calls and "seed0/distill.kd_tau=4/kd-from-standard" in calls
    assert "Standard, distill.kd_tau=4" in (tmp_path / "out" / "report.md").read_text()
