"""The frozen teacher's forward pass on the CPU (issue 27): resnet32x4 of specs/resnet32x4_resnet8x4.yaml, batch 64,
one thread, no_grad; teacher as trained vs BatchNorm folded, contiguous vs channels-last, and folded channels-last
under torch.compile (inductor freezing, as ``distill.teacher_compile``). Configurations run in turn each round and the
best per configuration is kept, so that a shared machine's load falls on all of them alike. Also measured: the
BatchNorms' share of the forward as trained (torch.profiler, self CPU time) and, with ``--bf16``, the folded
channels-last teacher under bf16 autocast, timed once (it is far slower on CPUs without native bf16).

    python benchmarks/teacher_forward.py [--rounds 6] [--bf16]

Prints a table and stores results/teacher_forward.{md,json}."""

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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import provenance  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

REPO = Path(__file__).resolve().parent.parent
BATCH = 64


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
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--bf16", action="store_true", help="also time bf16 autocast once (minutes on a CPU without it)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    runs = configurations()
    best = dict.fromkeys(runs, float("inf"))
    with torch.no_grad():
        for net, images in runs.values():  # warm-up (and compilation) outside the timing
            net(images)
        for _ in range(args.rounds):
            for name, (net, images) in runs.items():
                start = time.perf_counter()
                net(images)
                best[name] = min(best[name], time.perf_counter() - start)
        if args.bf16:
            name = "BatchNorm folded, channels-last, bf16 autocast (timed once)"
            net, images = runs["BatchNorm folded, channels-last"]
            with torch.autocast("cpu", dtype=torch.bfloat16):
                net(images[:2])  # warm-up on two images: a full batch takes minutes
                start = time.perf_counter()
                net(images)
                best[name] = time.perf_counter() - start
        shares = {layout: batchnorm_share(*runs[f"as trained, {layout}"]) for layout in ("contiguous", "channels-last")}
    meta = provenance(None, threads=1)  # after the timing: its load average is the one the timing ran under
    base = best["as trained, contiguous"]
    rows = [(name, seconds * 1000 / BATCH, seconds / base) for name, seconds in best.items()]
    lines = [
        "# The frozen teacher's forward pass on the CPU (resnet32x4, batch 64, one thread)",
        "",
        f"Best of {args.rounds} interleaved rounds.",
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
    (out / "teacher_forward.md").write_text("\n".join(lines) + "\n")
    records = [{"teacher": name, "ms_per_image": ms, "ratio": ratio} for name, ms, ratio in rows]
    payload = {"meta": meta, "rounds": args.rounds, "rows": records, "batchnorm_share": shares}
    (out / "teacher_forward.json").write_text(json.dumps(payload, indent=2) + "\n")


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
