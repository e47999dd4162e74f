"""The Python API on the paper's VGG13/VGG8 pair: build the SFTN, run it, read its branches.

    python examples/01_python_api.py                      # the paper's spec, specs/vgg13_vgg8.yaml
    python examples/01_python_api.py --spec my_pair.yaml  # any other spec
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import splicer

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=REPO / "specs" / "vgg13_vgg8.yaml")
    parser.add_argument("--batch", type=int, default=8, help="images in the demo batch")
    args = parser.parse_args()

    # compile_spec runs the whole compiler and keeps what it decided; build() returns just the module.
    result = splicer.compile_spec(args.spec)
    sftn = result.sftn  # an ordinary nn.Module: train it, move it, torch.compile it
    spec = result.spec
    print(f"{spec.name}: {len(sftn.teacher.blocks)} teacher blocks, {len(sftn.branches)} student branches")
    for i, plan in enumerate(result.transforms, start=1):
        print(f"  T^{i}: {plan.describe()}")  # the transform from teacher block i to student block i+1

    # One forward pass gives the teacher's logits, one set of logits per branch, and the block features.
    images = torch.randn(args.batch, *spec.input_size)
    sftn.eval()
    with torch.no_grad():
        out = sftn(images)
    print(f"teacher logits {tuple(out.teacher_logits.shape)}")
    for i, (logits, feature) in enumerate(zip(out.branch_logits, out.teacher_features), start=1):
        print(f"  branch {i}: reads teacher feature {tuple(feature.shape[1:])}, gives logits {tuple(logits.shape)}")

    # Branch i is an nn.Module too: transform T^i, then student blocks i+1..N and the student head.
    branch = sftn.branches[0]
    with torch.no_grad():
        assert torch.allclose(branch(out.teacher_features[0]), out.branch_logits[0], atol=1e-5)
    parameters = sum(p.numel() for p in branch.parameters())
    print(f"branch 1 has {len(branch.blocks)} student blocks and {parameters:,} parameters")

    # sftn.teacher alone maps images to logits with the same (shared) parameters: what stage 2 distils from.
    with torch.no_grad():
        assert torch.allclose(sftn.teacher(images), out.teacher_logits, atol=1e-5)
    print("sftn.teacher(images) equals the SFTN's teacher logits")


if __name__ == "__main__":
    main()
