"""An SFTN for your own model code (``python:MODULE:FACTORY``), cut where you choose.

    python examples/03_own_model.py --out build/own_net

Step 1 lists where the model can be cut, exactly as this shell command does from the repository root
(``own_net`` must be importable: its folder on PYTHONPATH, or splicer run from examples/ itself):

    PYTHONPATH=examples splicer inspect python:own_net:make_net --all --num-classes 10 --input-size 3 32 32

Step 2 builds the SFTN with block ends picked from that listing's "Cut point (spec name)" column.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import splicer
from splicer.cli.main import app
from splicer.emission.artifacts import emit_artifacts
from splicer.spec import spec_from_dict

MODEL = "python:own_net:make_net"  # own_net.py sits next to this script, so it is importable


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32, help="input side in pixels")
    parser.add_argument("--out", type=Path, default=Path("build/own_net"))
    args = parser.parse_args()

    # Step 1: every valid cut point (a block may end only where a single tensor is live, so never
    # between a residual block's branches; `add`, `add_1`, ... are the ends of the residual sums).
    app(["inspect", MODEL, "--all", "--num-classes", "10", "--input-size", "3", str(args.size), str(args.size)],
        standalone_mode=False)

    # Step 2: the teacher (width 16) is cut after the first residual block of stage1 instead of at the
    # stage end, to hand the first branch an earlier feature; the student (width 8) at its stage ends.
    spec = spec_from_dict(
        {
            "name": "own_net",
            "num_classes": 10,
            "input_size": [3, args.size, args.size],
            "teacher": {"model": MODEL, "kwargs": {"width": 16}, "blocks": ["stage1.0", "stage2", "stage3"]},
            "student": {"model": MODEL, "kwargs": {"width": 8}, "blocks": ["stage1", "stage2", "stage3"]},
        },
        source="03_own_model.py",
    )
    result = splicer.compile_spec(spec)  # also checks the teacher's blocks in sequence against OwnNet itself
    for i, plan in enumerate(result.transforms, start=1):
        print(f"T^{i}: {plan.describe()}")
    print(f"teacher blocks vs the original model: max abs diff {result.equivalence_error:.2g}")

    out = result.sftn(torch.randn(2, 3, args.size, args.size))
    print(f"teacher logits {tuple(out.teacher_logits.shape)}, {len(out.branch_logits)} branch logits")

    # Every layer here is a torch.nn layer, so `splicer build` also writes the standalone sftn.py and train_sftn.py.
    written = emit_artifacts(result, args.out)
    print("wrote " + ", ".join(str(path) for path in written.values()))


if __name__ == "__main__":
    main()
