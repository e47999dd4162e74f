"""An SFTN for a timm teacher/student pair with ``blocks: auto``, and the choices the compiler made.

    python examples/02_timm_auto_blocks.py
    python examples/02_timm_auto_blocks.py --teacher timm:convnext_nano --student timm:efficientnet_b0 --size 224

No weights are downloaded (timm's models are created with pretrained=False); to start from
trained weights, set ``teacher.checkpoint`` to a local state_dict file in the spec.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import splicer
from splicer.emission.artifacts import emit_artifacts
from splicer.spec import spec_from_dict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="timm:resnet50")
    parser.add_argument("--student", default="timm:mobilenetv3_small_100")
    parser.add_argument("--size", type=int, default=224, help="input side in pixels")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=None, help="also write sftn.py, report.md, ... here")
    args = parser.parse_args()

    # The spec as a dict: the same fields as a YAML spec file (see `splicer schema`).
    spec = spec_from_dict(
        {
            "name": "timm_pair",
            "num_classes": args.classes,
            "input_size": [3, args.size, args.size],
            # auto: one block per resolution stage, from timm's feature_info where the model has one.
            "teacher": {"model": args.teacher, "blocks": "auto"},
            "student": {"model": args.student, "blocks": "auto"},
        },
        source="02_timm_auto_blocks.py",
    )
    result = splicer.compile_spec(spec)

    # What auto chose: the block ends of each network (spec names, usable in `blocks: [...]`) and shapes.
    for plan in (result.teacher, result.student):
        print(f"{plan.role} {plan.reference}: {len(plan.cut_points)} valid cut points; auto chose")
        for label, shape in zip(plan.block_labels, plan.block_shapes):
            print(f"    {label:<24} {'x'.join(map(str, shape))}")
    # The transform synthesised for each teacher block (kind, kernel, stride follow from the shapes).
    for i, plan in enumerate(result.transforms, start=1):
        print(f"T^{i}: {plan.describe()}")
    if args.out is not None:
        # What `splicer build` writes. For timm models sftn.py (and train_sftn.py) create the model with
        # timm.create_model and run the traced blocks over its layers, so they need timm (never splicer).
        written = emit_artifacts(result, args.out)
        print("wrote " + ", ".join(path.name for path in written.values()))
    # Notes explain anything the compiler decided on its own (e.g. merging stages to pair the blocks).
    for note in result.notes:
        print(f"note: {note}")


if __name__ == "__main__":
    main()
