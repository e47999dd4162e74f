#!/usr/bin/env bash
# Issue 26, step 2: one seed of the fine-tuning proof on the test split, its five methods split over two
# processes (one thread each) so that a seed fits in one session on 2 cores: part a distils KD and SSKD,
# part b DKD, CRD and FitNets, from the standard, full SFTN and fine-tuned SFTN teachers; each part also
# trains the seed's three teachers and the student alone (the same runs: the same seed gives the same
# weights on one device, which --combine checks). Stores results/proof_cpu_overfit_finetune_seed{S}{a,b}.*
# (commit those: run folders do not outlive a session). When every seed is stored, one table:
#   python benchmarks/proof.py --config cpu-overfit-finetune --combine \
#     benchmarks/results/proof_cpu_overfit_finetune_seed0a.json,benchmarks/results/proof_cpu_overfit_finetune_seed0b.json,...
# An interrupted part resumes when the script is run again (finished runs are reused).
#   bash benchmarks/finetune_test_seed.sh SEED [RUNS_FOLDER] [-- more proof.py flags]    (default runs/)
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: bash benchmarks/finetune_test_seed.sh SEED [RUNS_FOLDER] [-- more proof.py flags]"
seed=${1:?$usage}
shift
runs=runs
if [[ $# -gt 0 && "$1" != "--" ]]; then runs=$1; shift; fi
if [[ $# -gt 0 && "$1" == "--" ]]; then shift; fi
[[ "$seed" =~ ^[0-9]+$ ]] || { echo "finetune_test_seed.sh: SEED must be a number, got '$seed'; $usage" >&2; exit 2; }
export OMP_NUM_THREADS=1
python=${PYTHON:-.venv/bin/python}
extra=("$@")
part() {
  "$python" benchmarks/proof.py --config cpu-overfit-finetune --seeds "$seed" --methods "$2" --tag "seed$seed$1" \
    --runs "$runs" --quiet "${extra[@]}" > "$runs/finetune_test_seed$seed$1.log" 2>&1
}
mkdir -p "$runs"
part a kd,sskd & a=$!
part b dkd,crd,fitnets & b=$!
status=0
wait "$a" || { echo "part a failed: see $runs/finetune_test_seed${seed}a.log" >&2; status=1; }
wait "$b" || { echo "part b failed: see $runs/finetune_test_seed${seed}b.log" >&2; status=1; }
exit $status
