"""A student's training step on the CPU, contiguous against channels-last (issue 27): which memory layout
``train.memory_format: auto`` should pick on the CPU. Per spec, the student as stage 2 trains it
(``splicer.build_student``), a KD step (forward, CE + KL against fixed teacher logits, backward, SGD with
momentum) on a batch of random images, one thread. Both layouts run in turn each round and the best of the
rounds is kept per layout, so that a shared machine's load falls on both alike.

    python benchmarks/student_step_layout.py [--rounds 5] [--steps 3] [--specs a.yaml,b.yaml]

Prints a table and stores results/student_step_layout.{md,json}."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import splicer
from splicer.spec import load_spec
from splicer.training.engine import Runtime
from splicer.training.losses import softened_kl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import provenance  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

REPO = Path(__file__).resolve().parent.parent
BATCH = 64
SPECS = [
    "specs/resnet32x4_resnet8x4.yaml",
    "specs/vgg13_vgg8.yaml",
    "specs/wrn40_2_wrn16_2.yaml",
    "specs/wrn40_2_resnet8x2.yaml",
    "specs/resnet32x4_shufflev1.yaml",
    "specs/resnet32x4_shufflev2.yaml",
    "benchmarks/specs/proof_cpu.yaml",
]


class KDStep:
    """One training step of a student in one memory layout, on fixed images, labels and teacher logits."""

    def __init__(self, spec_path: str, channels_last: bool) -> None:
        spec = load_spec(REPO / spec_path)
        torch.manual_seed(0)
        runtime = Runtime(torch.device("cpu"), channels_last=channels_last)  # the layout as the trainer sets it
        self.student = runtime.place(splicer.build_student(spec).train())
        self.images = runtime.inputs(torch.randn(BATCH, *spec.input_size))
        self.labels = torch.randint(0, spec.num_classes, (BATCH,))
        self.teacher_logits = torch.randn(BATCH, spec.num_classes)
        self.optimizer = torch.optim.SGD(self.student.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def __call__(self) -> None:
        logits = self.student(self.images)
        kl = softened_kl(self.teacher_logits, logits, tau=4.0)
        loss = 0.1 * F.cross_entropy(logits, self.labels) + 0.9 * 16 * kl
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="steps timed together in each round")
    parser.add_argument("--specs", default=",".join(SPECS), help="comma-separated spec files (repository-relative)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for spec_path in args.specs.split(","):
        steps = {layout: KDStep(spec_path, layout == "channels-last") for layout in ("contiguous", "channels-last")}
        best = dict.fromkeys(steps, float("inf"))
        for step in steps.values():
            step()  # warm-up: oneDNN picks its kernels on the first call
        for _ in range(args.rounds):
            for layout, step in steps.items():
                start = time.perf_counter()
                for _ in range(args.steps):
                    step()
                best[layout] = min(best[layout], (time.perf_counter() - start) / args.steps)
        student = load_spec(REPO / spec_path).student.model
        ms = {layout: 1000 * seconds / BATCH for layout, seconds in best.items()}
        rows.append({"spec": spec_path, "student": student, "ms_per_image": ms, "ratio": ms["channels-last"] / ms["contiguous"]})
        print(f"{spec_path}: {student} contiguous {ms['contiguous']:.2f} ms/img, channels-last {ms['channels-last']:.2f}")
    meta = provenance(None, threads=1)
    lines = [
        "# A student's KD training step on the CPU: contiguous against channels-last (batch 64, one thread)",
        "",
        f"Best of {args.rounds} interleaved rounds of {args.steps} steps each; ratio below 1: channels-last is faster.",
        "",
        *(f"- {key}: {value}" for key, value in meta.items()),
        "",
        "| Spec | Student | contiguous ms/img | channels-last ms/img | channels-last / contiguous |",
        "|:--|:--|--:|--:|--:|",
        *(
            f"| {r['spec']} | {r['student']} | {r['ms_per_image']['contiguous']:.2f} | "
            f"{r['ms_per_image']['channels-last']:.2f} | {r['ratio']:.2f}x |"
            for r in rows
        ),
    ]
    print("\n".join(lines))
    out = REPO / "benchmarks" / "results"
    (out / "student_step_layout.md").write_text("\n".join(lines) + "\n")
    (out / "student_step_layout.json").write_text(json.dumps({"meta": meta, "rounds": args.rounds, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
