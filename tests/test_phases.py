"""Methods with a phase before the main distillation (FT's paraphraser, SSKD's teacher head),
end to end on the synthetic task: `splicer distill` writes each phase's progress, metrics and
checkpoints under RUN/phases/<name>, and --resume after an interruption anywhere (inside a
phase, between the phase and the main run, inside the main run) ends with exactly the
weights of an uninterrupted run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from splicer.cli.main import app
from splicer.spec import spec_from_dict
from splicer.training import engine
from splicer.training.stage1 import train_teacher
from splicer.training.stage2 import distill
from tests.conftest import flatten, records, toy_spec

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
PHASES = {"ft": "paraphraser", "sskd": "teacher-head"}
MAIN_TERMS = {"ft": {"ce", "kd", "feature"}, "sskd": {"ce", "kd", "tf", "ss"}}
PHASE_TERMS = {"ft": {"reconstruction"}, "sskd": {"similarity_ce"}}


def phase_spec(**train: object) -> dict:
    dropout_student = {
        "model": "python:tests.tiny_models:dropout_net",  # its steps draw from the RNG that resume restores
        "kwargs": {"width": 4},
        "blocks": ["layer1", "layer2", "layer3"],
    }
    return toy_spec(
        student=dropout_student,
        data={"dataset": "synthetic", "synthetic_train": 64, "synthetic_test": 32},
        train={"epochs": 2, "batch_size": 16, "lr": 0.05, "milestones": [1], "device": "cpu", **train},
    )


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("spec") / "toy.yaml"
    path.write_text(yaml.safe_dump(phase_spec(), sort_keys=False))
    return path


@pytest.fixture(scope="module")
def teacher(spec_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("teacher") / "standard"
    train_teacher(spec_from_dict(phase_spec()), standard=True, out=out, quiet=True)
    return out


@pytest.mark.parametrize("method", ["ft", "sskd"])
def test_distill_trains_the_phase_then_the_student_in_one_run_folder(
    spec_file: Path, teacher: Path, tmp_path: Path, method: str
):
    out = tmp_path / "run"
    result = runner.invoke(
        app, ["distill", str(spec_file), "--teacher", str(teacher), "--method", method, "--out", str(out), "-q"]
    )
    assert result.exit_code == 0, result.output
    phase = out / "phases" / PHASES[method]
    for artifact in ("spec.yaml", "metrics.jsonl", "last.pt", "curves.png", "summary.json"):
        assert (out / artifact).is_file() and (phase / artifact).is_file(), artifact
    assert not (phase / "best.pt").exists()  # nothing is scored on the eval split in a phase

    # The phase ran the share of the (2-epoch) main schedule the authors give it: 1 epoch.
    phase_records = records(phase)
    assert [r["epoch"] for r in phase_records] == [1]
    assert set(phase_records[0]["terms"]) == PHASE_TERMS[method]
    assert phase_records[0]["train_acc"] is None and phase_records[0]["eval_top1"] is None
    phase_recipe = yaml.safe_load((phase / "spec.yaml").read_text())["train"]
    assert phase_recipe["epochs"] == 1 and phase_recipe["lr"] == (0.01 if method == "ft" else 0.05)
    phase_summary = json.loads((phase / "summary.json").read_text())
    assert phase_summary["kind"] == "phase" and phase_summary["meta"]["phase"] == PHASES[method]

    main_records = records(out)
    assert [r["epoch"] for r in main_records] == [1, 2]
    assert set(main_records[0]["terms"]) == MAIN_TERMS[method]
    assert main_records[-1]["eval_top1"] is not None

    # The phase's module is frozen in the main run: it ends as the phase left it.
    phase_state = torch.load(phase / "last.pt", weights_only=True)
    main_state = torch.load(out / "last.pt", weights_only=True)
    assert phase_state["kind"] == "phase" and phase_state["epoch"] == 1
    trained = {key: value for key, value in phase_state["model"].items()}
    assert trained and all(key.startswith(("paraphraser.", "teacher_head.")) for key in trained)
    for key, value in trained.items():
        assert torch.equal(main_state["extra"]["method"][key], value), key

    evaluated = runner.invoke(app, ["eval", str(phase), "--device", "cpu"])
    assert evaluated.exit_code == 2 and "phase of a" in evaluated.output and "Traceback" not in evaluated.output


class Interrupted(Exception):
    """Stands for a crash or a kill while a run trains."""


def interrupt_at_checkpoint(monkeypatch: pytest.MonkeyPatch, number: int | None) -> list[Path]:
    """Make the ``number``-th checkpoint write fail, before anything is written; returns the list of writes."""
    real, calls = engine.save_atomic, []

    def save(payload: dict, path: Path) -> None:
        calls.append(path)
        if len(calls) == number:
            raise Interrupted(path)
        real(payload, path)

    monkeypatch.setattr(engine, "save_atomic", save)
    return calls


def assert_same_checkpoint(a: Path, b: Path) -> None:
    state_a, state_b = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert state_a["epoch"] == state_b["epoch"]
    for part in ("model", "extra"):
        flat_a, flat_b = flatten(state_a[part]), flatten(state_b[part])
        assert flat_a.keys() == flat_b.keys()
        for key in flat_a:
            assert torch.equal(flat_a[key], flat_b[key]), f"{a}: {part}.{key}"
    for index, buffers in state_a["optimizer"]["state"].items():
        assert torch.equal(buffers["momentum_buffer"], state_b["optimizer"]["state"][index]["momentum_buffer"])
    assert state_a["scheduler"] == state_b["scheduler"]
    assert torch.equal(state_a["rng"]["torch"], state_b["rng"]["torch"])


@pytest.fixture(scope="module")
def resume_spec():
    # Phase of 2 epochs, main run of 2: checkpoint writes 1-2 are the phase's, 3-4 the main run's.
    options = {"ft": {"paraphraser_epochs": 2}, "sskd": {"head_epochs": 2}}
    return spec_from_dict({**phase_spec(), "distill": {"options": options}})


@pytest.fixture(scope="module")
def uninterrupted(resume_spec, teacher: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("straight")
    for method in PHASES:
        distill(resume_spec, teacher, method, out=root / method, quiet=True)
    return {method: root / method for method in PHASES}


@pytest.mark.parametrize(
    ("method", "failing_write"),
    [("ft", 2), ("sskd", 2), ("ft", 3), ("sskd", 4)],
    ids=["ft-inside-the-phase", "sskd-inside-the-phase", "ft-between-phase-and-main", "sskd-inside-the-main-run"],
)
def test_resume_after_an_interruption_anywhere_equals_an_uninterrupted_run(
    resume_spec, teacher: Path, uninterrupted: dict[str, Path], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, method: str, failing_write: int,
):
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        interrupt_at_checkpoint(patch, failing_write)
        with pytest.raises(Interrupted):
            distill(resume_spec, teacher, method, out=out, quiet=True)
    phase = Path("phases") / PHASES[method]
    assert torch.load(out / phase / "last.pt", weights_only=True)["epoch"] == min(failing_write - 1, 2)
    assert (out / "last.pt").is_file() == (failing_write == 4)

    with monkeypatch.context() as patch:
        writes = interrupt_at_checkpoint(patch, None)
        distill(resume_spec, teacher, method, out=out, resume=True, quiet=True)
    assert len(writes) == 5 - failing_write  # only the epochs not yet checkpointed are trained again
    straight = uninterrupted[method]
    for folder in (phase, Path(".")):
        assert_same_checkpoint(straight / folder / "last.pt", out / folder / "last.pt")
        assert [r["epoch"] for r in records(out / folder)] == [1, 2]
        assert [r["loss"] for r in records(out / folder)] == [r["loss"] for r in records(straight / folder)]


def test_a_run_with_only_a_phase_checkpoint_is_resumed_not_overwritten(
    resume_spec, teacher: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec_file: Path
):
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        interrupt_at_checkpoint(patch, 2)
        with pytest.raises(Interrupted):
            distill(resume_spec, teacher, "sskd", out=out, quiet=True)
    fresh = runner.invoke(
        app, ["distill", str(spec_file), "--teacher", str(teacher), "--method", "sskd", "--out", str(out)]
    )
    assert fresh.exit_code == 2 and "already holds a run" in fresh.output and "--resume" in fresh.output
    other_teacher, same_teacher = tmp_path / "other", tmp_path / "copy"
    for folder in (other_teacher, same_teacher):
        folder.mkdir()
    (same_teacher / "last.pt").write_bytes((teacher / "last.pt").read_bytes())
    state = torch.load(teacher / "last.pt", weights_only=True)
    first = next(key for key, value in state["model"].items() if value.is_floating_point())
    state["model"][first] = state["model"][first] + 1e-3
    torch.save(state, other_teacher / "last.pt")

    started_spec = tmp_path / "started.yaml"  # the spec the run started with: --resume refuses another
    started_spec.write_text(yaml.safe_dump(resume_spec.model_dump(mode="json"), sort_keys=False))

    def resume_from(teacher_folder: Path):
        arguments = ["--teacher", str(teacher_folder), "--method", "sskd", "--out", str(out), "--resume", "-q"]
        return runner.invoke(app, ["distill", str(started_spec), *arguments])

    wrong = resume_from(other_teacher)
    assert wrong.exit_code == 2 and "was distilled from other teacher weights" in wrong.output
    phase_checkpoint = out / "phases" / PHASES["sskd"] / "last.pt"
    original, written = phase_checkpoint.read_bytes(), torch.load(phase_checkpoint, weights_only=True)
    del written["meta"]["teacher_digest"]  # as runs written before teachers had a digest
    torch.save(written, phase_checkpoint)
    by_path = resume_from(same_teacher)
    assert by_path.exit_code == 2 and f"pass --teacher {teacher / 'last.pt'}" in by_path.output
    phase_checkpoint.write_bytes(original)
    moved = resume_from(same_teacher)  # the same weights in another folder: a copied or moved experiment
    assert moved.exit_code == 0, moved.output
    assert json.loads((out / "summary.json").read_text())["epochs"] == 2


def test_a_diverging_phase_names_the_setting_of_its_learning_rate(spec_file: Path, teacher: Path, tmp_path: Path):
    result = runner.invoke(
        app,
        ["distill", str(spec_file), "--teacher", str(teacher), "--method", "ft", "--out", str(tmp_path / "run"),
         "--set", "distill.options.ft.paraphraser_lr=1e12", "-q"],
    )
    message = " ".join(result.output.split())
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "paraphraser phase: the loss became NaN/inf" in message
    assert "Try a lower distill.options.ft.paraphraser_lr" in message
