"""Mistakes made when a command plans and writes work: each gets one clean message, exit 2, and
leaves every file that was there untouched (issue 23: run planning, folders, checkpoints, --nproc).

Each case runs ``splicer ARGS`` in a workspace holding trained runs (1 epoch of a tiny synthetic
spec, trained once for the module), and asserts exit status 2, no traceback, a message of at most
10 lines naming the culprit, and the sha256 of every file under the workspace unchanged; a refused
command writes no new file either.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import REPO, toy_spec
from tests.mistakes import assert_clear_refusal, folder_hashes, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")

TRAIN = {"epochs": 1, "batch_size": 16, "lr": 0.05, "milestones": [1], "device": "cpu"}
DATA = {"dataset": "synthetic", "synthetic_train": 64, "synthetic_test": 32}


def spec_dict(**changes: object) -> dict:
    spec = toy_spec(data=DATA, train=TRAIN, distill={"methods": ["kd"]})
    spec.update(changes)
    return spec


def write_yaml(path: Path, content: dict) -> Path:
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


def cli_ok(args: list[str], cwd: Path) -> None:
    code, output = run_cli(args, cwd)
    assert code == 0, output


def assert_one_clean_message(code: int, output: str, *culprits: str) -> None:
    """The harness's clear refusal, and no torchrun launcher traceback either."""
    assert_clear_refusal(code, output, culprits)
    assert "ChildFailedError" not in output, output


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Specs, trained runs (1 epoch each), an experiment, builds and broken checkpoints."""
    root = tmp_path_factory.mktemp("mistakes")
    write_yaml(root / "spec.yaml", spec_dict())
    wide = spec_dict(name="wide")
    wide["teacher"] = {**wide["teacher"], "kwargs": {"width": 16}}
    write_yaml(root / "wide.yaml", wide)
    write_yaml(root / "twenty.yaml", spec_dict(name="twenty", num_classes=20))
    write_yaml(root / "other.yaml", spec_dict(name="other"))
    write_yaml(root / "probe.yaml", {"num_classes": 4, "data": {"dataset": "synthetic", "synthetic_train": 32, "synthetic_test": 16}})
    write_yaml(root / "probe1ch.yaml", {"num_classes": 4, "data": {"dataset": "synthetic"}, "input_size": [1, 16, 16]})
    spec = str(root / "spec.yaml")
    cli_ok(["run", spec, "--methods", "kd", "--out", "experiment", "-q"], root)
    cli_ok(["train", "twenty.yaml", "--standard", "--out", "teacher20", "-q"], root)
    cli_ok(["build", "other.yaml", "--out", "other-build"], root)
    (root / "notes").mkdir()
    (root / "notes" / "report.md").write_text("my own notes\n")
    (root / "sweep").mkdir()
    (root / "sweep" / "sweep.json").write_text('{"spec": {}}\n')
    sftn = root / "experiment" / "seed0" / "sftn" / "last.pt"
    state = torch.load(sftn, weights_only=True)
    torch.save(state["model"], root / "plain.pt")  # a bare state_dict, no spec
    state["model"] = dict(state["model"])
    first = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][first] = torch.full_like(state["model"][first], float("nan"))
    torch.save(state, root / "nan.pt")
    nan_run = root / "nan-run"
    shutil.copytree(root / "experiment" / "seed0" / "sftn", nan_run)
    torch.save(state, nan_run / "last.pt")
    return root


E = "experiment"
SFTN = "experiment/seed0/sftn"
STANDARD = "experiment/seed0/standard"
STUDENT = "experiment/seed0/kd-from-sftn"

CASES = [
    # train: folders
    ("train-into-experiment", ["train", "spec.yaml", "--out", E], ["experiment", "--out"]),
    ("train-into-finished-distill", ["train", "spec.yaml", "--out", STUDENT], ["already holds a run", "--resume"]),
    ("train-standard-resume-sftn", ["train", "spec.yaml", "--standard", "--resume", "--out", SFTN], ["sftn", "standard"]),
    ("train-resume-missing", ["train", "spec.yaml", "--resume", "--out", "missing"], ["--resume", "no last.pt"]),
    ("train-into-build", ["train", "spec.yaml", "--out", "other-build"], ["build of spec 'other'"]),
    ("train-into-sweep", ["train", "spec.yaml", "--standard", "--out", "sweep"], ["sweep"]),
    ("train-into-other-files", ["train", "spec.yaml", "--out", "notes"], ["other files", "report.md"]),
    ("train-resume-nan", ["train", "spec.yaml", "--resume", "--out", "nan-run"], ["nan-run", "NaN or inf"]),
    ("train-negative-anchors", ["train", "spec.yaml", "--standard", "--anchors", "-1", "--out", "anchored"], ["--anchors -1"]),
    # train: --nproc
    ("train-nproc-zero", ["train", "spec.yaml", "--nproc", "0"], ["--nproc 0", "use 1 to"]),
    ("train-nproc-huge", ["train", "spec.yaml", "--nproc", "100000"], ["--nproc 100000", "CPU core"]),
    # distill: teacher checkpoints
    ("distill-other-widths", ["distill", "wide.yaml", "--teacher", SFTN, "--method", "kd"],
     ["teacher.kwargs.width 8 in the checkpoint, 16 here", "tensors differ in shape", "is 8x3x3x3 in the checkpoint"]),
    ("distill-plain-state-dict", ["distill", "spec.yaml", "--teacher", "plain.pt", "--method", "kd"], ["plain.pt", "plain state_dict"]),
    ("distill-nan-teacher", ["distill", "spec.yaml", "--teacher", "nan.pt", "--method", "kd"], ["nan.pt", "NaN or inf"]),
    ("distill-other-classes", ["distill", "spec.yaml", "--teacher", "teacher20", "--method", "kd"], ["20 classes"]),
    ("distill-student-as-teacher", ["distill", "spec.yaml", "--teacher", STUDENT, "--method", "kd"], ["not a teacher"]),
    ("distill-experiment-as-teacher", ["distill", "spec.yaml", "--teacher", E, "--method", "kd"], ["no last.pt", "experiment/seed0/"]),
    ("distill-missing-teacher", ["distill", "spec.yaml", "--teacher", "nowhere", "--method", "kd"], ["nowhere"]),
    ("distill-option-typo", ["distill", "spec.yaml", "--teacher", SFTN, "--method", "dkd", "--set", "distill.options.dkd.betta=2"],
     ["distill.options.dkd.betta", "beta"]),
    ("distill-into-experiment", ["distill", "spec.yaml", "--teacher", SFTN, "--method", "kd", "--out", E], ["experiment"]),
    ("distill-resume-missing", ["distill", "spec.yaml", "--teacher", SFTN, "--method", "kd", "--resume", "--out", "missing"],
     ["--resume", "no last.pt"]),
    ("distill-nproc-zero", ["distill", "spec.yaml", "--teacher", SFTN, "--method", "kd", "--nproc", "0"], ["--nproc 0"]),
    # eval
    ("eval-plain-state-dict", ["eval", "plain.pt"], ["plain.pt", "plain state_dict"]),
    ("eval-experiment-folder", ["eval", E], ["experiment", "experiment/seed0/"]),
    ("eval-nan", ["eval", "nan.pt"], ["nan.pt", "NaN or inf"]),
    ("eval-teacher-other-classes", ["eval", STUDENT, "--teacher", "teacher20"], ["teacher20", "num_classes 20 (teacher) vs 10 (run)"]),
    # run: the plan
    ("run-sweep-method-typo", ["run", "spec.yaml", "--sweep", "loss.tau=1,2", "--methods", "kdd"], ["kdd"]),
    ("run-sweep-option-typo", ["run", "spec.yaml", "--sweep", "distill.options.dkd.betta=1,2", "--methods", "dkd"],
     ["distill.options.dkd.betta", "beta"]),
    ("run-sweep-bad-value", ["run", "spec.yaml", "--sweep", "loss.tau=1,hot", "--methods", "kd"], ["--sweep loss.tau=\"hot\"", "loss.tau", "hot"]),
    ("run-sweep-into-run", ["run", "spec.yaml", "--sweep", "loss.tau=1,2", "--out", SFTN], ["sftn run", "--out"]),
    ("run-sweep-with-baseline", ["run", "spec.yaml", "--sweep", "loss.tau=1,2", "--methods", "kd,dml"], ["baselines"]),
    ("run-resume-teacher-run", ["run", "spec.yaml", "--resume", "--out", SFTN], ["not an experiment"]),
    ("run-resume-missing", ["run", "spec.yaml", "--resume", "--out", "missing"], ["--resume", "no such folder"]),
    ("run-over-experiment", ["run", "spec.yaml", "--out", E], ["already holds an experiment", "--resume"]),
    ("run-into-build", ["run", "spec.yaml", "--out", "other-build"], ["build of spec 'other'"]),
    ("run-method-typo", ["run", "spec.yaml", "--methods", "kd,atx"], ["atx"]),
    ("run-probe-missing", ["run", "spec.yaml", "--probe", "nothere.yaml"], ["nothere.yaml"]),
    ("run-probe-channels", ["run", "spec.yaml", "--probe", "probe1ch.yaml"], ["1 channel", "expects 3"]),
    ("run-rco-without-anchors", ["run", "spec.yaml", "--methods", "kd,rco", "--anchors", "0"], ["--anchors 0", "rco"]),
    ("run-seeds", ["run", "spec.yaml", "--seeds", "one,two"], ["--seeds"]),
    ("run-nproc-batch", ["run", "spec.yaml", "--batch-size", "15", "--nproc", "2"], ["--nproc 2", "15"]),
    # probe
    ("probe-channels", ["probe", SFTN, "--data", "probe1ch.yaml", "--device", "cpu"], ["1 channel", "expects 3"]),
    ("probe-plain-state-dict", ["probe", "plain.pt", "--data", "probe.yaml", "--device", "cpu"], ["plain state_dict"]),
    ("probe-nan", ["probe", "nan.pt", "--data", "probe.yaml", "--device", "cpu"], ["NaN or inf"]),
    # export (a checkpoint loader too)
    ("export-nan-run", ["export", "nan-run", "--format", "state_dict", "--which", "last", "--out", "w.pt"], ["NaN or inf"]),
    ("export-experiment", ["export", E, "--format", "state_dict"], ["experiment/seed0/"]),
    # build
    ("build-over-other-spec", ["build", "spec.yaml", "--out", "other-build"], ["spec 'other'", "--force"]),
    ("build-into-run", ["build", "spec.yaml", "--out", SFTN], ["sftn run"]),
    ("build-over-own-files", ["build", "spec.yaml", "--out", "notes"], ["report.md", "--force"]),
]


@pytest.mark.parametrize(("args", "culprits"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_a_mistake_gets_one_clean_message_and_changes_nothing(workspace: Path, args: list[str], culprits: list[str]):
    before = folder_hashes(workspace)
    code, output = run_cli(args, workspace)
    assert_one_clean_message(code, output, *culprits)
    assert folder_hashes(workspace) == before  # nothing changed, removed or added


def test_the_nan_teacher_is_not_blamed_on_the_learning_rate(workspace: Path):
    code, output = run_cli(["distill", "spec.yaml", "--teacher", "nan.pt", "--method", "kd", "--out", "nan-student"], workspace)
    assert code == 2 and "learning rate" not in output and "became NaN" not in output


def test_builds_of_the_same_spec_and_forced_builds_go_through(workspace: Path, tmp_path: Path):
    spec, other = str(workspace / "spec.yaml"), str(workspace / "other.yaml")
    cli_ok(["build", spec, "--out", "b"], tmp_path)
    cli_ok(["build", spec, "--out", "b"], tmp_path)  # rebuilding the same spec into its folder
    cli_ok(["build", other, "--out", "b", "--force"], tmp_path)
    assert "name: other" in (tmp_path / "b" / "spec.resolved.yaml").read_text()


def launch_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo",
            "SPLICER_DIST_TIMEOUT": "60"}


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@pytest.mark.slow
@pytest.mark.skipif(cores() < 2, reason="--nproc 2 needs two CPU cores")
def test_a_mistake_found_in_the_processes_of_nproc_is_said_once_without_torchrun_traceback(workspace: Path):
    """The widths only show when the processes load the teacher: rank 0 says it, the launch exits 2."""
    before = folder_hashes(workspace)
    command = [sys.executable, "-m", "splicer", "distill", "wide.yaml", "--teacher", SFTN, "--method", "kd",
               "--out", "wide-student", "-q", "--nproc", "2"]
    done = subprocess.run(command, cwd=workspace, env=launch_env(), capture_output=True, text=True, timeout=300)
    assert_one_clean_message(done.returncode, done.stdout + done.stderr, "teacher.kwargs.width")
    assert (done.stdout + done.stderr).count("does not fit") == 1
    assert folder_hashes(workspace) == before


@pytest.mark.slow
def test_under_torchrun_only_rank_0_prints_a_user_error(workspace: Path):
    """torchrun started by the user: every rank meets the indivisible batch, one message is printed."""
    with __import__("socket").socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2",
               "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--local-addr=127.0.0.1",
               "-m", "splicer", "train", "spec.yaml", "--batch-size", "15", "--out", "odd-batch", "-q"]
    done = subprocess.run(command, cwd=workspace, env=launch_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert (done.stdout + done.stderr).count("must divide by the 2 processes") == 1, done.stderr
    assert not (workspace / "odd-batch" / "last.pt").exists()
