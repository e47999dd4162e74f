#!/usr/bin/env bash
# Issue 26, step 1: choose the fine-tuning epochs and teacher learning-rate multiplier of
# benchmarks/specs/proof_cpu_overfit_finetune.yaml on a validation split (5,000 training images held
# out, seed 0; never the test set). One standard teacher, then per candidate an SFTN fine-tuned from
# it and a KD student from that SFTN; prints each candidate's teacher and KD-student validation top-1.
# Candidates: finetune.epochs 20 or 40 x {teacher_lr_mult 0 with freeze_through 2 (blocks 1-2 frozen),
# teacher_lr_mult 0.1, teacher_lr_mult 1}. Finished runs are skipped, so the script can be rerun.
# About 2.75 h on one thread (benchmarks/README.md, "Fine-tuning a teacher you have").
#   bash benchmarks/finetune_validation.sh [RUNS_FOLDER]      (default runs/proof_cpu_overfit_finetune/val)
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
SPLICER=${SPLICER:-.venv/bin/splicer}
SPEC=benchmarks/specs/proof_cpu_overfit_finetune.yaml
OUT=${1:-runs/proof_cpu_overfit_finetune/val}
ROOT=$(bash ../shared/tools/cifar10-root)
COMMON=(--seed 0 -q --set "data.root=$ROOT" --set data.val_split=5000)
mkdir -p "$OUT"

done_run() { [[ -f "$1/summary.json" ]]; }

done_run "$OUT/standard" || "$SPLICER" train "$SPEC" --standard "${COMMON[@]}" --out "$OUT/standard"
done_run "$OUT/kd-from-standard" || "$SPLICER" distill "$SPEC" --teacher "$OUT/standard" --method kd "${COMMON[@]}" --out "$OUT/kd-from-standard"
for epochs in 20 40; do
  for mult in 0 0.1 1; do
    name="e${epochs}-m${mult}"
    extra=(--set "finetune.epochs=$epochs" --set "finetune.milestones=[$((epochs * 3 / 4))]" --set "finetune.teacher_lr_mult=$mult")
    [[ "$mult" == 0 ]] && extra+=(--set finetune.freeze_through=2)
    done_run "$OUT/sftn-$name" || "$SPLICER" train "$SPEC" --from "$OUT/standard" "${COMMON[@]}" "${extra[@]}" --out "$OUT/sftn-$name"
    done_run "$OUT/kd-from-sftn-$name" || "$SPLICER" distill "$SPEC" --teacher "$OUT/sftn-$name" --method kd "${COMMON[@]}" --out "$OUT/kd-from-sftn-$name"
  done
done

.venv/bin/python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
def s(run): return json.loads((out / run / "summary.json").read_text())
print("| candidate | teacher val top-1 | teacher wall s | KD student val top-1 |\n|:--|--:|--:|--:|")
for name in ["standard"] + [f"sftn-e{e}-m{m}" for e in (20, 40) for m in ("0", "0.1", "1")]:
    teacher, student = s(name), s("kd-from-" + name)
    print(f"| {name} | {teacher['final']['top1']:.2f} | {teacher['wall_seconds']:.0f} | {student['final']['top1']:.2f} |")
PY
