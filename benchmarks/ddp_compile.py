"""Speed on the CPU proof configuration: eager vs ``torch.compile`` per training step, and
one vs two processes (torchrun, Gloo) for the same global batch.

1. Eager vs compiled (Inductor): the training step (forward, loss, backward, SGD step) of
   the stage-1 SFTN, the standard teacher and stage-2 KD, built as the trainers build them
   from ``benchmarks/specs/proof_cpu.yaml`` (resnet20 -> resnet8 at widths 8/8/16/32,
   3x16x16, batch 128), one torch thread. Random batches of that shape stand in for the
   images: step time does not depend on their content. The first compiled step's time is
   the compilation; the step figures are medians over ``--steps`` timed steps after warm-up.
2. One vs two processes: ``splicer train`` of the same SFTN, global batch 128, one thread per
   process, as one process and as ``torchrun --nproc-per-node 2`` on 127.0.0.1, on a
   synthetic task of the same shape; img/s and step time of the second epoch, from the
   runs' own metrics.

    OMP_NUM_THREADS=1 python benchmarks/ddp_compile.py --steps 20

Stores ``benchmarks/results/ddp_compile.{md,json}`` with the command, the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from provenance import provenance  # benchmarks/ is on sys.path when run as a script

from splicer.assembly.build import build_student, compile_spec
from splicer.spec import Spec, load_spec
from splicer.training.engine import Stage, TrainStep
from splicer.training.methods import create_method
from splicer.training.stage1 import sftn_stage, standard_stage
from splicer.training.stage2 import block_shapes, distill_loss

REPO = Path(__file__).resolve().parent.parent
SPEC = REPO / "benchmarks" / "specs" / "proof_cpu.yaml"
RESULTS = REPO / "benchmarks" / "results"


def stages(spec: Spec) -> dict[str, Stage]:
    """The three training steps the proof runs, built as stage1/stage2 build them."""
    torch.manual_seed(0)
    sftn = compile_spec(spec).sftn
    torch.manual_seed(0)
    teacher = compile_spec(spec).sftn.teacher
    frozen = compile_spec(spec).sftn.teacher.requires_grad_(False).eval()
    student = build_student(spec)
    kd = create_method("kd", spec.distill, block_shapes(frozen, spec), block_shapes(student, spec))
    return {
        "stage-1 SFTN": sftn_stage(sftn, spec.loss, "sftn"),
        "standard teacher": standard_stage(teacher, "standard"),
        "stage-2 KD (student)": Stage(
            "distill", "kd", student, student, distill_loss(student, frozen, kd), extra={"method": kd}, frozen=[frozen]
        ),
    }


def time_steps(stage: Stage, compiled: bool, steps: int, warmup: int, batch: int, spec: Spec) -> dict[str, float]:
    """Median seconds per training step; with ``compiled``, also the first step's (compilation) seconds."""
    step_fn: Any = TrainStep(stage)
    if compiled:
        torch._dynamo.reset()
        step_fn = torch.compile(step_fn)
    params = [p for m in stage.trained() for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)
    stage.train_mode()
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, *spec.input_size, generator=generator)
    labels = torch.randint(0, spec.num_classes, (batch,), generator=generator)

    def one_step() -> float:
        started = time.perf_counter()
        terms, _ = step_fn(images, labels)
        optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        optimizer.step()
        return time.perf_counter() - started

    first = one_step()
    for _ in range(warmup):
        one_step()
    times = [one_step() for _ in range(steps)]
    step = statistics.median(times)
    return {"first_step_s": first, "step_s": step, "img_per_s": batch / step}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def train_processes(nproc: int, images: int, folder: Path) -> dict[str, float]:
    """`splicer train` of the proof SFTN on a synthetic task, ``nproc`` processes; epoch-2 figures."""
    out = folder / f"nproc{nproc}"
    args = [
        "train", str(SPEC), "--out", str(out), "--epochs", "2", "-q",
        "--set", "data.dataset=synthetic", "--set", f"data.synthetic_train={images}",
        "--set", "data.synthetic_test=256", "--set", "train.compile=false",
    ]  # fmt: skip
    if nproc == 1:
        command = [sys.executable, "-m", "splicer", *args]
    else:
        command = [
            sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{free_port()}", "--local-addr=127.0.0.1", "-m", "splicer", *args,
        ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "GLOO_SOCKET_IFNAME": "lo"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
    if done.returncode != 0:
        sys.exit(f"ddp_compile.py: {' '.join(command)} failed:\n{done.stderr[-3000:]}")
    record = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    return {"step_s": record["step_seconds"], "img_per_s": record["img_per_s"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before timing (default 3)")
    parser.add_argument("--ddp-images", type=int, default=2560, help="synthetic training images for part 2")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    spec = load_spec(SPEC)
    batch = spec.train.batch_size

    compile_rows = {}
    for name, stage in stages(spec).items():
        eager = time_steps(stage, False, args.steps, args.warmup, batch, spec)
        compiled = time_steps(stage, True, args.steps, args.warmup, batch, spec)
        compile_rows[name] = {
            "eager": eager,
            "compiled": compiled,
            "compile_s": compiled["first_step_s"] - compiled["step_s"],
            "speedup": eager["step_s"] / compiled["step_s"],
        }
        print(name, json.dumps(compile_rows[name]), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        ddp_rows = {n: train_processes(n, args.ddp_images, Path(tmp)) for n in (1, 2)}
    for n, row in ddp_rows.items():
        print(f"{n} process(es)", json.dumps(row), flush=True)

    info = provenance(argv, threads=1)
    lines = [
        "# Eager vs torch.compile, and 1 vs 2 processes (CPU proof configuration)",
        "",
        *(f"- {key}: {value}" for key, value in info.items()),
        "- the machine was shared with other jobs while this ran: absolute figures are noisy, "
        "ratios measured back to back are the useful part",
        "- no GPU was available: CUDA figures (compile, NCCL) are not measured here",
        "",
        f"## Training step, eager vs compiled (Inductor), batch {batch}, 3x16x16, one thread",
        "",
        "| step | eager s/step | eager img/s | compiled s/step | compiled img/s | compiled / eager | first compile s |",
        "|:--|--:|--:|--:|--:|--:|--:|",
    ]
    for name, row in compile_rows.items():
        e, c = row["eager"], row["compiled"]
        lines.append(
            f"| {name} | {e['step_s']:.4f} | {e['img_per_s']:.0f} | {c['step_s']:.4f} | {c['img_per_s']:.0f} | "
            f"{c['step_s'] / e['step_s']:.2f}x | {row['compile_s']:.1f} |"
        )
    lines += [
        "",
        f"## Processes for the same global batch {batch} (stage-1 SFTN, one thread each, Gloo on 127.0.0.1)",
        "",
        "| processes | s/step | img/s | vs 1 process |",
        "|--:|--:|--:|--:|",
    ]
    for n, row in ddp_rows.items():
        lines.append(f"| {n} | {row['step_s']:.4f} | {row['img_per_s']:.0f} | {row['img_per_s'] / ddp_rows[1]['img_per_s']:.2f}x |")
    lines.append("")
    text = "\n".join(lines)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ddp_compile.md").write_text(text)
    result = {"provenance": info, "compile": compile_rows, "processes": {str(n): r for n, r in ddp_rows.items()}}
    (args.out / "ddp_compile.json").write_text(json.dumps(result, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
