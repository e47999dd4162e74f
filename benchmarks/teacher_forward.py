"""The frozen teacher's forward pass on the CPU (issue 27): resnet32x4 of specs/resnet32x4_resnet8x4.yaml, batch 64,
one thread, no_grad; teacher as trained vs BatchNorm folded, contiguous vs channels-last, and folded channels-last
under torch.compile (inductor freezing, as ``distill.teacher_compile``). Configurations run in turn each round and the
best per configuration is kept, so that a shared machine's load falls on all of them alike. Also measured: the
BatchNorms' share of the forward as trained (torch.profiler, self CPU time) and the folded channels-last teacher
under bf16 autocast: in the rounds on a CPU with AMX (where ``distill.teacher_precision: auto`` picks it), else
only with ``--bf16`` and timed once (emulated bf16 takes minutes a batch).

    python benchmarks/teacher_forward.py [--rounds 6] [--bf16] [--name teacher_forward]

Prints a table and stores results/NAME.{md,json}."""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

import splicer
from splicer.spec import load_spec
from splicer.trace.fold_batchnorm import fold_batchnorm
from splicer.training.hardware import native_bf16

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import provenance  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

REPO = Path(__file__).resolve().parent.parent
BATCH = 64
BF16 = "BatchNorm folded, channels-last, bf16 autocast"


def configurations() -> dict[str, tuple[torch.nn.Module, torch.Tensor]]:
    """Name -> (teacher, input) for each way of running the frozen teacher."""
    spec = load_spec(REPO / "specs" / "resnet32x4_resnet8x4.yaml")
    teacher = splicer.compile_spec(spec).sftn.teacher.eval().requires_grad_(False)
    folded = copy.deepcopy(teacher)
    for block in folded.blocks:
        fold_batchnorm(block)
    images = torch.randn(BATCH, *spec.input_size)
    last = images.contiguous(memory_format=torch.channels_last)
    runs = {}
    for name, net in (("as trained", teacher), ("BatchNorm folded", folded)):
        runs[f"{name}, contiguous"] = (copy.deepcopy(net), images)
        runs[f"{name}, channels-last"] = (copy.deepcopy(net).to(memory_format=torch.channels_last), last)
    runs["BatchNorm folded, channels-last, torch.compile"] = (
        torch.compile(copy.deepcopy(folded).to(memory_format=torch.channels_last), options={"freezing": True}),
        last,
    )
    runs[BF16] = (copy.deepcopy(folded).to(memory_format=torch.channels_last), last)
    return runs


def forward(name: str, net: torch.nn.Module, images: torch.Tensor) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name.startswith(BF16)):
        net(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument(
        "--bf16", action="store_true", help="on a CPU without AMX, also time bf16 autocast once (minutes a batch)"
    )
    parser.add_argument("--name", default="teacher_forward", help="results file name (default: teacher_forward)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    amx = native_bf16(torch.device("cpu"))
    runs = configurations()
    once = None if amx else runs.pop(BF16)
    best = dict.fromkeys(runs, float("inf"))
    with torch.no_grad():
        for name, (net, images) in runs.items():  # warm-up (and compilation) outside the timing
            forward(name, net, images)
        for _ in range(args.rounds):
            for name, (net, images) in runs.items():
                start = time.perf_counter()
                forward(name, net, images)
                best[name] = min(best[name], time.perf_counter() - start)
        if once is not None and args.bf16:
            name = f"{BF16} (timed once)"
            forward(name, once[0], once[1][:2])  # warm-up on two images: a full batch takes minutes
            start = time.perf_counter()
            forward(name, *once)
            best[name] = time.perf_counter() - start
        shares = {layout: batchnorm_share(*runs[f"as trained, {layout}"]) for layout in ("contiguous", "channels-last")}
    meta = provenance(None, threads=1)  # after the timing: its load average is the one the timing ran under
    base = best["as trained, contiguous"]
    rows = [(name, seconds * 1000 / BATCH, seconds / base) for name, seconds in best.items()]
    lines = [
        "# The frozen teacher's forward pass on the CPU (resnet32x4, batch 64, one thread)",
        "",
        f"Best of {args.rounds} interleaved rounds. The CPU {'has' if amx else 'has no'} AMX tiles "
        f"(native bf16{'' if amx else ': bf16 is emulated'}).",
        "",
        *(f"- {key}: {value}" for key, value in meta.items()),
        "",
        "| Teacher | ms per image | vs as trained, contiguous |",
        "|:--|--:|--:|",
        *(f"| {name} | {ms:.1f} | {ratio:.2f}x |" for name, ms, ratio in rows),
        "",
        "BatchNorm's share of the forward as trained (torch.profiler, self CPU time of the batch_norm operators "
        "over all operators, one batch): " + ", ".join(f"{layout} {100 * share:.1f} %" for layout, share in shares.items()),
    ]
    print("\n".join(lines))
    out = REPO / "benchmarks" / "results"
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    records = [{"teacher": name, "ms_per_image": ms, "ratio": ratio} for name, ms, ratio in rows]
    payload = {"meta": meta, "rounds": args.rounds, "amx": amx, "rows": records, "batchnorm_share": shares}
    (out / f"{args.name}.json").write_text(json.dumps(payload, indent=2) + "\n")


def batchnorm_share(net: torch.nn.Module, images: torch.Tensor) -> float:
    """The batch_norm operators' self CPU time over all operators' in one forward of ``net``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        net(images)
    events = prof.key_averages()
    total = sum(event.self_cpu_time_total for event in events)
    norm = sum(event.self_cpu_time_total for event in events if "batch_norm" in event.key)
    return norm / total


if __name__ == "__main__":
    main()
