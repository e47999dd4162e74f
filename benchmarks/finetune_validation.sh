#!/usr/bin/env bash
# Issue 26, step 1: choose the fine-tuning epochs and teacher learning-rate multiplier of
# benchmarks/specs/proof_cpu_overfit_finetune.yaml on a validation split (5,000 training images held
# out, seed 0; never the test set). One standard teacher, then per candidate an SFTN fine-tuned from
# it and a KD student from that SFTN; prints each candidate's teacher and KD-student validation top-1.
# Candidates: finetune.epochs 20 or 40 x {teacher_lr_mult 0 with freeze_through 2 (blocks 1-2 frozen),
# teacher_lr_mult 0.1, teacher_lr_mult 1}. Finished runs are skipped and interrupted ones resume
# (--resume from their last.pt), so the script can be stopped and rerun. A second copy started beside
# the first (one thread each) waits for the standard teacher, then takes the candidates the first has
# not started (a lock per run in RUNS_FOLDER/.locks); the copy that finishes last prints the table.
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

mkdir -p "$OUT/.locks"

# ensure wait|skip RUN COMMAND...: return 0 once RUN is finished: skip it if it is, resume it if it was
# interrupted, else start it. Return 1 (skip) or wait (wait) while another copy of this script holds it.
ensure() {
  local mode=$1 run=$2 lock; shift 2
  [[ -f "$run/summary.json" ]] && return 0
  exec {lock}>"$OUT/.locks/$(basename "$run")"
  if [[ "$mode" == wait ]]; then flock "$lock"; elif ! flock -n "$lock"; then exec {lock}>&-; return 1; fi
  if [[ ! -f "$run/summary.json" ]]; then
    local resume=()
    [[ -f "$run/last.pt" ]] && resume=(--resume)
    "$SPLICER" "$@" "${COMMON[@]}" "${resume[@]}" --out "$run" || { echo "failed: $run" >&2; exit 1; }
  fi
  exec {lock}>&-
}

ensure wait "$OUT/standard" train "$SPEC" --standard
ensure skip "$OUT/kd-from-standard" distill "$SPEC" --teacher "$OUT/standard" --method kd || true
candidates=(standard)
for epochs in 20 40; do
  for mult in 0 0.1 1; do
    name="e${epochs}-m${mult}"
    candidates+=("sftn-$name")
    extra=(--set "finetune.epochs=$epochs" --set "finetune.milestones=[$((epochs * 3 / 4))]" --set "finetune.teacher_lr_mult=$mult")
    [[ "$mult" == 0 ]] && extra+=(--set finetune.freeze_through=2)
    ensure skip "$OUT/sftn-$name" train "$SPEC" --from "$OUT/standard" "${extra[@]}" &&
      ensure skip "$OUT/kd-from-sftn-$name" distill "$SPEC" --teacher "$OUT/sftn-$name" --method kd || true
  done
done

# The copy that finishes last writes the table (results/finetune_validation.{md,json}); each earlier one says what is left.
CANDIDATES="${candidates[*]}" .venv/bin/python - "$OUT" "$0" "$@" <<'PY'
import json, os, sys
from pathlib import Path

sys.path.insert(0, "benchmarks")
from provenance import provenance, repo_relative

out, script, args = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
names = os.environ["CANDIDATES"].split()
runs = [run for name in names for run in (name, "kd-from-" + name)]
left = [run for run in runs if not (out / run / "summary.json").is_file()]
if left:
    sys.exit(f"not finished yet (another copy may be training them): {', '.join(left)}; rerun this script when it ends")
summary = {run: json.loads((out / run / "summary.json").read_text()) for run in runs}
rows = [
    {
        "candidate": name,
        "teacher_val_top1": summary[name]["final"]["top1"],
        "teacher_wall_seconds": round(summary[name]["wall_seconds"], 1),
        "kd_student_val_top1": summary["kd-from-" + name]["final"]["top1"],
    }
    for name in names
]
meta = provenance(None, threads=1)
meta["command"] = " ".join(["bash", repo_relative(script), *(repo_relative(a) if Path(a).is_absolute() else a for a in args)])
meta["runs"] = repo_relative(out)
lines = [
    "# Fine-tuning an SFTN from the standard teacher: epochs and teacher lr multiplier on the validation split (issue 26)",
    "",
    "benchmarks/specs/proof_cpu_overfit_finetune.yaml, seed 0, 5,000 training images held out as the validation split.",
    "sftn-eE-mM: E fine-tuning epochs (lr x0.1 at 3/4 of them), teacher_lr_mult M (0: blocks 1-2 frozen).",
    "Teacher wall s: that teacher's own training (the standard teacher's 150 epochs; a candidate's fine-tuning only).",
    "",
    *[f"- {key}: {value}" for key, value in meta.items()],
    "",
    "| candidate | teacher val top-1 | teacher wall s | KD student val top-1 |",
    "|:--|--:|--:|--:|",
    *[f"| {r['candidate']} | {r['teacher_val_top1']:.2f} | {r['teacher_wall_seconds']:.0f} | {r['kd_student_val_top1']:.2f} |" for r in rows],
]
table = "\n".join(lines) + "\n"
Path("benchmarks/results/finetune_validation.md").write_text(table)
Path("benchmarks/results/finetune_validation.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
print(table)
PY
