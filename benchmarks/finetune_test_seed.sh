#!/usr/bin/env bash
# Issue 26, step 2: one seed of the fine-tuning proof on the test split, its methods split into groups that
# train side by side, one process and one thread each (at most 2 groups at once on 2 cores). Each group
# trains the seed's three teachers (standard, full SFTN, SFTN fine-tuned from the standard one) and the
# student alone itself (the same runs: one seed gives the same weights on one device, which --combine
# checks) and distils its methods from each teacher. Default groups: "kd,sskd dkd,crd,fitnets" (about
# 1 h 40 min each); METHOD_GROUPS="kd dkd,fitnets" runs smaller ones (46 and 62 min). Each group stores
# results/proof_cpu_overfit_finetune_seedS-METHODS.{md,json} and _curves.svg (commit them: run folders do
# not outlive a session). When every seed has every method, one table:
#   python benchmarks/proof.py --config cpu-overfit-finetune --combine \
#     benchmarks/results/proof_cpu_overfit_finetune_seed0-kd.json,benchmarks/results/proof_cpu_overfit_finetune_seed0-dkd-fitnets.json,...
# An interrupted group resumes when the script is run again with the same groups (finished runs are reused);
# a new group of a seed whose teachers another group finished copies them (below) and trains its methods only.
#   bash benchmarks/finetune_test_seed.sh SEED [RUNS_FOLDER] [-- more proof.py flags]    (default runs/)
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: [METHOD_GROUPS='kd,sskd dkd,crd,fitnets'] bash benchmarks/finetune_test_seed.sh SEED [RUNS_FOLDER] [-- more proof.py flags]"
seed=${1:?$usage}
shift
runs=runs
if [[ $# -gt 0 && "$1" != "--" ]]; then runs=$1; shift; fi
if [[ $# -gt 0 && "$1" == "--" ]]; then shift; fi
[[ "$seed" =~ ^[0-9]+$ ]] || { echo "finetune_test_seed.sh: SEED must be a number, got '$seed'; $usage" >&2; exit 2; }
read -r -a groups <<< "${METHOD_GROUPS:-kd,sskd dkd,crd,fitnets}"
export OMP_NUM_THREADS=1
python=${PYTHON:-.venv/bin/python}
mkdir -p "$runs"
# A seed's teachers and student alone are the same runs in every group: where another group of this seed
# finished them (in this session or an earlier one whose runs/ survived), copy them instead of retraining
# (28 min a group on one thread); --combine still checks that the groups' shared runs score alike.
shared=(standard sftn sftn-finetuned student)
experiment="$runs/proof_cpu_overfit_finetune"
donor=""
for folder in "$experiment"/proof_cpu_overfit_finetune_seed"$seed"-*/seed"$seed"; do
  complete=1
  for run in "${shared[@]}"; do [[ -f "$folder/$run/summary.json" ]] || complete=0; done
  if [[ $complete == 1 ]]; then donor=$folder; break; fi
done
pids=()
for group in "${groups[@]}"; do
  tag="seed$seed-${group//,/-}"
  if [[ -n "$donor" ]]; then
    target="$experiment/proof_cpu_overfit_finetune_$tag/seed$seed"
    mkdir -p "$target"
    for run in "${shared[@]}"; do [[ -e "$target/$run" ]] || cp -r "$donor/$run" "$target/$run"; done
  fi
  "$python" benchmarks/proof.py --config cpu-overfit-finetune --seeds "$seed" --methods "$group" --tag "$tag" \
    --runs "$runs" --quiet "$@" > "$runs/finetune_test_$tag.log" 2>&1 &
  pids+=($!)
done
status=0
for i in "${!groups[@]}"; do
  tag="seed$seed-${groups[$i]//,/-}"
  wait "${pids[$i]}" || { echo "group ${groups[$i]} failed: see $runs/finetune_test_$tag.log" >&2; status=1; }
done
exit $status
