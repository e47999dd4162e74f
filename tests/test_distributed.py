"""Multi-process training on the CPU with Gloo, started by torchrun as users start it.

Networks without BatchNorm (tests/ddp_nets.py) make one process on the global batch and
DDP over two processes the same computation, so their weights must agree to float
tolerance. The SFTN's transforms carry BatchNorm by design (per-rank statistics), so the
two-process SFTN is checked against the computation DDP defines: each rank's half of the
global batch through the network on its own, the gradients averaged.

Every launch binds 127.0.0.1 only, uses a free port and runs under a subprocess timeout
and a process-group timeout, so a test can fail but never hang.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from splicer.spec import load_spec
from splicer.spec.schema import DistillSpec
from splicer.training.methods import create_method
from tests.conftest import REPO, toy_spec
from tests.test_loggers import assert_same_series, jsonl_scalars, tensorboard_scalars

LAUNCH_TIMEOUT = 420  # seconds; a loaded 2-core machine needs ~1 min per launch
GROUP_TIMEOUT = "60"  # seconds a collective may wait (SPLICER_DIST_TIMEOUT)

PLAIN = {
    "name": "plain",
    "num_classes": 10,
    "input_size": [3, 16, 16],
    "teacher": {"model": "python:tests.ddp_nets:plain_net", "kwargs": {"width": 8}, "blocks": ["stage1", "stage2"]},
    "student": {"model": "python:tests.ddp_nets:plain_net", "kwargs": {"width": 4}, "blocks": ["stage1", "stage2"]},
    # 37 test images: not divisible by 2 processes
    "data": {"dataset": "synthetic", "synthetic_train": 64, "synthetic_test": 37},
    "train": {"epochs": 2, "batch_size": 16, "lr": 0.2, "milestones": [1], "device": "cpu"},
    # OFA's projector of the last block is a 1x1 conv (no BatchNorm): one process and two compute the same
    "distill": {"options": {"ofa": {"stages": [2]}}},
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "GLOO_SOCKET_IFNAME": "lo",
        "SPLICER_DIST_TIMEOUT": GROUP_TIMEOUT,
    }


def torchrun_args(nproc: int, port: int, nnodes: int = 1, host: bool | None = None) -> list[str]:
    args = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nnodes={nnodes}",
        f"--nproc-per-node={nproc}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{port}",
        "--rdzv-id=splicer-test",
        "--local-addr=127.0.0.1",
        "--monitor-interval=0.5",
    ]
    if host is not None:
        args.append(f"--rdzv-conf=is_host={str(host).lower()},join_timeout=120")
    return args


def torchrun(cwd: Path, *splicer_args: str, nproc: int = 2) -> subprocess.CompletedProcess[str]:
    """``torchrun --nproc-per-node N -m splicer ARGS`` in ``cwd``."""
    command = [*torchrun_args(nproc, free_port()), "-m", "splicer", *splicer_args]
    return subprocess.run(command, cwd=cwd, env=launch_env(), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)


def check(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"


def model(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 2e-5) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if a[key].is_floating_point():
            assert torch.allclose(a[key], b[key], atol=atol, rtol=1e-4), f"{key}: max diff {(a[key] - b[key]).abs().max()}"


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


METHODS = "kd,at,sp,rkd,pkt,crd,ft,sskd,ab,ofa"
"""Distilled in both ``plain_runs``: per-image losses, batch relations (SP, RKD, PKT), CRD's banks, SSKD's
in-batch terms, methods with phases, a method with modules of its own that predict classes (OFA)."""


@pytest.fixture(scope="module")
def plain_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`splicer run` (standard, SFTN, student alone, each of METHODS from both teachers), 2 processes and 1."""
    root = tmp_path_factory.mktemp("ddp")
    (root / "plain.yaml").write_text(yaml.safe_dump(PLAIN, sort_keys=False))
    check(torchrun(root, "run", "plain.yaml", "--methods", METHODS, "--out", "two", "-q"))
    env = {key: value for key, value in launch_env().items() if key not in ("RANK", "WORLD_SIZE")}
    one = subprocess.run(
        [sys.executable, "-m", "splicer", "run", "plain.yaml", "--methods", METHODS, "--out", "one", "-q"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=LAUNCH_TIMEOUT,
    )
    check(one)
    return root


@pytest.mark.parametrize(
    "run",
    ["standard", "student"]
    + [f"{method}-from-standard" for method in ("kd", "at", "crd", "sskd", "ofa")],
)
def test_two_processes_reach_the_weights_of_one_process(plain_runs: Path, run: str):
    one, two = plain_runs / "one" / "seed0" / run, plain_runs / "two" / "seed0" / run
    assert_same_weights(model(one / "last.pt"), model(two / "last.pt"))
    # Same losses and the same test accuracy: 37 test images, each scored once over the ranks.
    for a, b in zip(metrics(one), metrics(two), strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["terms"] == pytest.approx(b["terms"], rel=1e-4, abs=1e-6)
        assert a["eval_top1"] == pytest.approx(b["eval_top1"])
        assert a["train_acc"] == pytest.approx(b["train_acc"])
    assert metrics(one)[0]["loss"] != pytest.approx(metrics(one)[-1]["loss"], rel=1e-3)  # it trained


@pytest.mark.parametrize("method", ["sp", "rkd", "pkt"])
def test_batch_relations_span_the_global_batch_under_two_processes(plain_runs: Path, method: str):
    """SP, RKD and PKT relate every pair of images of a batch. Their benchmark weights (SP 3000) make
    this toy diverge, which amplifies float rounding, so weights are compared to each tensor's scale:
    relations within each process's share alone differ by the order of the weights (SP 15, RKD 3883)."""
    one, two = (plain_runs / side / "seed0" / f"{method}-from-standard" for side in ("one", "two"))
    weights_one, weights_two = model(one / "last.pt"), model(two / "last.pt")
    for key, value in weights_one.items():
        if value.is_floating_point():
            assert (value - weights_two[key]).abs().max() <= 1e-3 * value.abs().max() + 1e-6, key
    assert [r["loss"] for r in metrics(one)] == pytest.approx([r["loss"] for r in metrics(two)], rel=1e-3)


@pytest.mark.parametrize(
    ("run", "phase"), [("sskd-from-standard", "teacher-head"), ("ft-from-standard", "paraphraser")]
)
def test_phases_under_two_processes_reach_the_weights_of_one_process(plain_runs: Path, run: str, phase: str):
    """SSKD's head contrasts each rotated copy with the whole global batch, so both ranks gather it."""
    one, two = (plain_runs / side / "seed0" / run / "phases" / phase for side in ("one", "two"))
    assert_same_weights(model(one / "last.pt"), model(two / "last.pt"))
    assert [r["loss"] for r in metrics(one)] == pytest.approx([r["loss"] for r in metrics(two)], rel=1e-5)


@pytest.mark.parametrize(("run", "phase"), [("ft-from-standard", "paraphraser"), ("ab-from-standard", "init")])
def test_methods_with_batchnorm_in_their_modules_finish_under_two_processes(plain_runs: Path, run: str, phase: str):
    """FT's translator and AB's connectors normalise with each rank's share (as DDP does), so they are not
    compared with one process: their phase and main run must finish, with finite losses, on both ranks' data."""
    folder = plain_runs / "two" / "seed0" / run
    for part in (folder / "phases" / phase, folder):
        summary = yaml.safe_load((part / "summary.json").read_text())
        assert summary["processes"] == 2
        assert all(math.isfinite(record["loss"]) for record in metrics(part))


def test_two_process_crd_keeps_the_memory_banks_of_one_process(plain_runs: Path):
    """Each rank writes the whole global batch into its banks and samples its negatives from the global draw."""
    one, two = (
        torch.load(plain_runs / side / "seed0" / "crd-from-standard" / "last.pt", weights_only=True)["extra"]["method"]
        for side in ("one", "two")
    )
    state_one, state_two = one.pop("_extra_state"), two.pop("_extra_state")
    assert one["student_memory"].shape == (64, 128)
    assert_same_weights(one, two)  # both banks and both embeddings
    assert state_one["steps"] == state_two["steps"] == 8  # 2 epochs of 4 global batches
    assert state_one["normalizers"] == pytest.approx(state_two["normalizers"], rel=1e-5)


def test_sweep_under_two_processes_trains_its_reference_as_one_process_and_reuses_it(plain_runs: Path):
    """`run --sweep loss.tau=1,4` with 2 processes: tau leaves the standard teacher alone, so the sweep's
    reference is the one-process `run`'s; a second launch reuses every finished run and writes the report again."""
    command = ("run", "plain.yaml", "--sweep", "loss.tau=1,4", "--methods", "kd", "--out", "sweep", "-q")
    check(torchrun(plain_runs, *command))
    sweep = plain_runs / "sweep" / "seed0"
    for run in ("standard", "kd-from-standard"):
        one_process = model(plain_runs / "one" / "seed0" / run / "last.pt")
        assert_same_weights(one_process, model(sweep / "reference" / run / "last.pt"))
    report = json.loads((plain_runs / "sweep" / "report.json").read_text())
    assert [row["assignment"] for row in report["cells"]] == [{"loss.tau": 1}, {"loss.tau": 4}]
    for cell in ("loss.tau=1", "loss.tau=4"):
        assert json.loads((sweep / cell / "sftn" / "summary.json").read_text())["processes"] == 2
    checkpoints = {path: path.stat().st_mtime_ns for path in sweep.rglob("last.pt")}
    again = torchrun(plain_runs, *command)
    check(again)
    assert {path: path.stat().st_mtime_ns for path in sweep.rglob("last.pt")} == checkpoints  # nothing retrained
    assert again.stdout.count("| Setting |") == 1  # the table, printed once (rank 0)


def test_probe_under_two_processes_scores_as_one_process(plain_runs: Path):
    """`run --resume --probe` under torchrun: every rank probes (the same frozen networks), rank 0 writes table 7."""
    from splicer.experiments.probe import linear_probe, load_probe_data

    shutil.copytree(plain_runs / "two", plain_runs / "probe")
    data_file = plain_runs / "probe.yaml"
    data_file.write_text(yaml.safe_dump({"num_classes": 4, "data": {"dataset": "synthetic", "synthetic_train": 48}}))
    command = ("run", "plain.yaml", "--methods", "kd", "--out", "probe", "--resume", "--probe", "probe.yaml", "-q")
    done = torchrun(plain_runs, *command, "--probe-device", "cpu")
    check(done)
    assert done.stdout.count("## Transfer by linear probe") == 1
    rows = json.loads((plain_runs / "probe" / "report.json").read_text())["transfer"]["rows"]
    assert set(rows) == {"standard", "sftn", "student", "kd-from-standard", "kd-from-sftn"}
    one_process = linear_probe(plain_runs / "one" / "seed0" / "standard", load_probe_data(data_file), "cpu")
    assert rows["standard"]["values"] == [pytest.approx(one_process["top1"])]


def test_baselines_under_two_processes_reach_the_weights_of_one_process(plain_runs: Path):
    """DML, KDCL (student and its jointly trained teacher) and RCO (from the standard teacher's anchor)
    added to the finished experiments by `run --resume`, with 2 processes and with 1."""
    command = ["run", "plain.yaml", "--methods", "kd,dml,kdcl,rco", "--anchors", "1", "--resume", "-q"]
    for side in ("one", "two"):
        shutil.copytree(plain_runs / side, plain_runs / f"baselines-{side}")
        standard = plain_runs / f"baselines-{side}" / "seed0" / "standard"
        (standard / "anchors").mkdir()  # what `--anchors 1` keeps: the final state
        shutil.copy(standard / "last.pt", standard / "anchors" / "epoch-0002.pt")
    one = subprocess.run(
        [sys.executable, "-m", "splicer", *command, "--out", "baselines-one"],
        cwd=plain_runs,
        env={key: value for key, value in launch_env().items() if key not in ("RANK", "WORLD_SIZE")},
        capture_output=True,
        text=True,
        timeout=LAUNCH_TIMEOUT,
    )
    check(one)
    two = torchrun(plain_runs, *command, "--out", "baselines-two")
    check(two)
    assert two.stdout.count("## Online and curriculum baselines") == 1
    for run in ("dml", "kdcl", "rco"):
        one_run, two_run = (plain_runs / f"baselines-{side}" / "seed0" / run / "last.pt" for side in ("one", "two"))
        assert_same_weights(model(one_run), model(two_run))
        if run != "rco":  # the teacher trained alongside
            extra = [torch.load(path, weights_only=True)["extra"]["teacher"] for path in (one_run, two_run)]
            assert_same_weights(*extra)
        summary = json.loads((two_run.parent / "summary.json").read_text())
        assert summary["processes"] == 2


def test_only_rank_zero_writes_and_the_report_is_complete(plain_runs: Path):
    two = plain_runs / "two"
    assert (two / "report.md").is_file() and (two / "report.json").is_file()
    assert not list(two.glob("*.tmp")) and not list(two.rglob("*.tmp"))
    summary = yaml.safe_load((two / "seed0" / "sftn" / "summary.json").read_text())
    assert summary["processes"] == 2


def test_two_process_sftn_is_ddp_of_the_per_rank_halves(plain_runs: Path):
    """The SFTN's transforms normalise with per-rank BatchNorm statistics: replay that in one process."""
    from splicer.assembly.build import compile_spec
    from splicer.data import build_data
    from splicer.training.engine import seed_everything
    from splicer.training.stage1 import sftn_stage

    spec = load_spec(plain_runs / "plain.yaml")
    train = spec.train
    seed_everything(train.seed)
    sftn = compile_spec(spec).sftn
    stage = sftn_stage(sftn, spec.loss, "reference")
    data = build_data(spec.data, spec.input_size, spec.num_classes, train.batch_size, torch.device("cpu"), train.seed)
    optimizer = torch.optim.SGD(sftn.parameters(), lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, train.milestones, train.gamma)
    half = train.batch_size // 2
    for epoch in range(train.epochs):
        data.train.set_epoch(epoch)
        stage.train_mode()
        for images, labels in data.train:
            optimizer.zero_grad()
            for rank in range(2):
                part = slice(rank * half, (rank + 1) * half)
                terms, _ = stage.loss(images[part], labels[part])
                (terms["total"] / 2).backward()
            optimizer.step()
        scheduler.step()
    trained = model(plain_runs / "two" / "seed0" / "sftn" / "last.pt")
    expected = dict(sftn.named_parameters())
    for key, value in expected.items():  # BN running statistics are rank 0's under DDP: parameters only
        assert torch.allclose(trained[key], value.detach(), atol=2e-5, rtol=1e-4), key


def test_two_nodes_give_the_result_of_two_processes_on_one_node(plain_runs: Path):
    """`torchrun --nnodes 2 --nproc-per-node 1` twice, meeting at a c10d rendezvous on 127.0.0.1."""
    port = free_port()
    agents = []
    for host in (True, False):
        command = [*torchrun_args(1, port, nnodes=2, host=host), "-m", "splicer", "train", "plain.yaml"]
        command += ["--standard", "--out", "two-nodes", "-q"]
        agents.append(
            subprocess.Popen(
                command, cwd=plain_runs, env=launch_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    outputs = []
    try:
        for agent in agents:
            outputs.append((agent.wait(timeout=LAUNCH_TIMEOUT), *agent.communicate()))
    finally:
        for agent in agents:
            if agent.poll() is None:
                agent.kill()
    for code, out, err in outputs:
        assert code == 0, f"{out[-2000:]}\n{err[-4000:]}"
    assert_same_weights(model(plain_runs / "two-nodes" / "last.pt"), model(plain_runs / "two" / "seed0" / "standard" / "last.pt"), atol=1e-6)


@pytest.fixture(scope="module")
def batchnorm_spec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ddp-bn")
    spec = toy_spec(
        data={"dataset": "synthetic", "synthetic_train": 64, "synthetic_test": 33},
        train={"epochs": 2, "batch_size": 16, "lr": 0.1, "milestones": [1], "device": "cpu"},
    )
    (root / "toy.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return root


def test_batchnorm_sftn_trains_and_resumes_under_two_processes(batchnorm_spec: Path):
    root = batchnorm_spec
    env = launch_env()
    # The --nproc convenience hands the command to torchrun's launcher.
    whole = subprocess.run(
        [sys.executable, "-m", "splicer", "train", "toy.yaml", "--out", "whole", "-q", "--nproc", "2"]
        + ["--set", "train.loggers=[jsonl,tensorboard]"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=LAUNCH_TIMEOUT,
    )
    check(whole)
    assert [r["epoch"] for r in metrics(root / "whole")] == [1, 2]
    assert len(list((root / "whole").glob("events.out.tfevents.*"))) == 1  # written by rank 0 alone
    assert_same_series(tensorboard_scalars(root / "whole"), jsonl_scalars(root / "whole"))
    check(torchrun(root, "train", "toy.yaml", "--out", "resumed", "--epochs", "1", "-q"))
    check(torchrun(root, "train", "toy.yaml", "--out", "resumed", "--resume", "-q"))
    resumed, uninterrupted = torch.load(root / "resumed" / "last.pt", weights_only=True), torch.load(
        root / "whole" / "last.pt", weights_only=True
    )
    assert resumed["epoch"] == uninterrupted["epoch"] == 2
    for key, value in uninterrupted["model"].items():
        assert torch.equal(resumed["model"][key], value), key
    assert [r["loss"] for r in metrics(root / "resumed")] == [r["loss"] for r in metrics(root / "whole")]


@pytest.mark.parametrize(("mode", "message"), [("raise", "injected failure on rank 1"), ("nan", "the loss became NaN/inf")])
def test_a_failure_on_one_rank_stops_every_rank_with_its_message(tmp_path: Path, mode: str, message: str):
    failing = {"model": "python:tests.ddp_nets:failing_net", "kwargs": {"mode": mode}, "blocks": ["stage1", "stage2"]}
    spec = {**PLAIN, "name": "failing", "teacher": failing, "train": {**PLAIN["train"], "epochs": 3}}
    (tmp_path / "failing.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    started = time.monotonic()
    done = torchrun(tmp_path, "train", "failing.yaml", "--standard", "--out", "failing", "-q")
    assert done.returncode != 0
    assert message in done.stdout + done.stderr
    assert time.monotonic() - started < LAUNCH_TIMEOUT
    assert not (tmp_path / "failing" / "last.pt").exists()  # failed in epoch 1: no checkpoint written


def _dist_step(rank: int, port: int, gradients: Any) -> None:
    """One DDP step of DIST on rank ``rank``'s half of a fixed batch; rank 0 reports the weight's gradient."""
    import torch.distributed as td

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), GLOO_SOCKET_IFNAME="lo")
    td.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        model, images, teacher_logits, labels = _dist_problem()
        method = create_method("dist", DistillSpec(), [], [])  # reads RANK/WORLD_SIZE: gathers the global batch
        share = slice(4 * rank, 4 * rank + 4)
        step = torch.nn.parallel.DistributedDataParallel(model)
        method(step(images[share]), teacher_logits[share], [], [], labels[share])["total"].backward()
        if rank == 0:
            gradients.put(model.weight.grad.clone())
    finally:
        td.destroy_process_group()


def _dist_problem() -> tuple[torch.nn.Linear, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return torch.nn.Linear(6, 5), torch.randn(8, 6), torch.randn(8, 5) * 3, torch.randint(0, 5, (8,))


def test_dist_under_two_processes_takes_the_one_process_step():
    """DIST's intra-class relation spans the batch: each rank gathers the global batch, so a DDP step on two
    halves has the one-process gradient. (On the plain network of ``plain_runs`` DIST's Pearson correlations of
    near-uniform predictions magnify rounding over the epochs, so whole runs are not compared.)"""
    import torch.multiprocessing as mp

    model, images, teacher_logits, labels = _dist_problem()
    method = create_method("dist", DistillSpec(), [], [])
    method(model(images), teacher_logits, [], [], labels)["total"].backward()
    context = mp.get_context("spawn")
    gradients = context.Queue()
    port = free_port()
    workers = [context.Process(target=_dist_step, args=(rank, port, gradients)) for rank in range(2)]
    for worker in workers:
        worker.start()
    two = gradients.get(timeout=LAUNCH_TIMEOUT)
    for worker in workers:
        worker.join(timeout=60)
    assert torch.allclose(two, model.weight.grad, rtol=1e-5, atol=1e-6)

