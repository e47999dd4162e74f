"""How long ``compile_spec`` takes, whole and piece by piece, after imports and one warm-up.

Targets: specs/vgg13_vgg8.yaml under 1 s, timm resnet50 -> resnet18 (``blocks: auto``,
3x224x224) under 3 s, specs/vit_small_resnet18.yaml (a token-sequence teacher cut by depth)
under 3 s. Each figure is the median of ``--runs`` runs in one process. The machine
is shared, so the load average is recorded with the results in
``benchmarks/results/compile_speed.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import_start = time.perf_counter()
import timm  # noqa: E402, F401  (timed with the other imports; timm models are compiled below)
import torch  # noqa: E402
from provenance import provenance  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from splicer.assembly.build import (  # noqa: E402
    BuildResult,
    NetworkPlan,
    assemble,
    compile_spec,
    verify_build,
)
from splicer.models.registry import create_model  # noqa: E402
from splicer.spec import Spec, load_spec, spec_from_dict  # noqa: E402
from splicer.synthesis.transforms import plan_transform  # noqa: E402
from splicer.trace.cuts import find_cut_points, resolve_block_ends  # noqa: E402
from splicer.trace.partition import split_graph  # noqa: E402
from splicer.trace.shapes import propagate_shapes  # noqa: E402
from splicer.trace.stages import auto_block_ends  # noqa: E402
from splicer.trace.tracer import trace_model  # noqa: E402

IMPORT_SECONDS = time.perf_counter() - import_start
REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
PIECES = ("create models", "trace", "shape propagation", "cut analysis", "assembly", "verification")


def cases() -> dict[str, tuple[Spec, float]]:
    """The specs timed and their target seconds (with verification)."""
    timm_pair = spec_from_dict(
        {
            "name": "resnet50_resnet18",
            "num_classes": 1000,
            "input_size": [3, 224, 224],
            "teacher": {"model": "timm:resnet50", "blocks": "auto"},
            "student": {"model": "timm:resnet18", "blocks": "auto"},
        }
    )
    return {
        "vgg13_vgg8 (specs/vgg13_vgg8.yaml)": (load_spec(REPO / "specs" / "vgg13_vgg8.yaml"), 1.0),
        "timm resnet50 -> resnet18, auto, 3x224x224": (timm_pair, 3.0),
        "timm vit_small -> resnet18 (specs/vit_small_resnet18.yaml)": (
            load_spec(REPO / "specs" / "vit_small_resnet18.yaml"),
            3.0,
        ),
    }


def timed_pieces(spec: Spec) -> dict[str, float]:
    """Run the compiler's steps one by one (as compile_spec does) and time each."""
    times = dict.fromkeys(PIECES, 0.0)

    def clock(piece: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        value = fn()
        times[piece] += time.perf_counter() - start
        return value

    plans = []
    for role, network in (("teacher", spec.teacher), ("student", spec.student)):
        model = clock(
            "create models", lambda: create_model(network.model, spec.num_classes, network.kwargs, network.checkpoint)
        )
        traced = clock("trace", lambda: trace_model(model, name=role))
        clock("shape propagation", lambda: propagate_shapes(traced.graph_module, spec.input_size))

        def cut() -> tuple[list, list, list]:
            cut_points = find_cut_points(traced, model)
            if network.blocks == "auto":
                ends, _ = auto_block_ends(traced, model, cut_points, network.num_blocks)
            else:
                by_node = {c.node: c for c in cut_points}
                nodes = resolve_block_ends(traced, network.blocks, cut_points, role)
                ends = [by_node[n.name] for n in nodes]
            node_by_name = {n.name: n for n in traced.nodes}
            return cut_points, ends, split_graph(traced.graph_module, [node_by_name[c.node] for c in ends])

        cut_points, ends, parts = clock("cut analysis", cut)
        plans.append(NetworkPlan(role, network.model, model, traced, cut_points, ends, parts, network.blocks == "auto"))
    teacher, student = plans
    if len(teacher.block_ends) != len(student.block_ends):
        raise SystemExit(f"{spec.name}: teacher and student block counts differ; pick a pair that needs no pairing")

    def build() -> tuple[list, Any]:
        transforms = [plan_transform(t, s) for t, s in zip(teacher.block_layouts[:-1], student.block_layouts[:-1])]
        return transforms, assemble(spec, teacher, student, transforms)

    transforms, sftn = clock("assembly", build)
    result = BuildResult(spec, spec.source, sftn, teacher, student, transforms, None, 0.0)
    clock("verification", lambda: verify_build(result))
    return times


def median_seconds(fn: Callable[[], Any], runs: int) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="timed runs per figure (the median is reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for compile_speed.md/.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    rows = []
    for name, (spec, target) in cases().items():
        compile_spec(spec, verify=True)  # warm-up: lazy imports, first-call caches
        verified = median_seconds(lambda: compile_spec(spec, verify=True), args.runs)
        unverified = median_seconds(lambda: compile_spec(spec, verify=False), args.runs)
        piece_runs = [timed_pieces(spec) for _ in range(args.runs)]
        pieces = {p: statistics.median(run[p] for run in piece_runs) for p in PIECES}
        row = {"case": name, "target_s": target, "verify_s": verified, "no_verify_s": unverified, "pieces_s": pieces,
               "meets_target": verified < target}
        rows.append(row)
        print(f"{name}: verify {verified:.3f} s, no verify {unverified:.3f} s (target {target} s) "
              + ", ".join(f"{p} {s:.3f}" for p, s in pieces.items()), flush=True)
    meta = {
        **provenance(argv, args.threads),
        "load average before (1/5/15 min)": " ".join(f"{x:.2f}" for x in load_before),
        "imports s (torch, timm, splicer; first import in this process)": round(IMPORT_SECONDS, 2),
        "runs per figure": f"median of {args.runs}, after one warm-up compile",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    lines = ["# compile_spec speed", "", *(f"- {k}: {v}" for k, v in meta.items()), "",
             "| case | target s | verify=True s | verify=False s | " + " | ".join(PIECES) + " | meets target |",
             "|---|---|---|---|" + "---|" * len(PIECES) + "---|"]
    for r in rows:
        pieces = " | ".join(f"{r['pieces_s'][p]:.3f}" for p in PIECES)
        lines.append(f"| {r['case']} | {r['target_s']} | {r['verify_s']:.3f} | {r['no_verify_s']:.3f} | {pieces} | "
                     f"{'yes' if r['meets_target'] else 'no'} |")
    lines += ["", "Pieces are timed by calling the compiler's steps one by one; their sum is close to verify=True.", ""]
    (args.out / "compile_speed.md").write_text("\n".join(lines))
    (args.out / "compile_speed.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
