#!/usr/bin/env bash
# The GPU proof on a bare GPU machine with no network: only this repository, the CIFAR-10
# archive and, where the machine's Python lacks some of splicer's dependencies, their wheels.
#
#   bash benchmarks/gpu_proof.sh [--nproc N] ARCHIVE [MINUTES] [RESULTS_DIR] [-- extra proof.py flags]
#
# --nproc N    train with N processes, one per GPU (torchrun --standalone; default 1). The
#              global batch stays the spec's, so N GPUs run the same schedule N ways split.
# ARCHIVE      cifar10-jpg.tar.gz (train/ and test/ in ImageFolder layout under one top folder)
# MINUTES      training budget for both pairs (default 7.5: with decoding, the one-epoch probe
#              and start-up the whole script stays inside 10 minutes on an H100)
# RESULTS_DIR  where proof_gpu.md/.json go (default benchmarks/results)
# SPLICER_WHEELS=DIR installs the wheels in DIR first (into a temporary folder, not the system);
# SPLICER_RUNS=DIR keeps the run folders there (default runs/); PYTHON picks the interpreter.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
nproc=1
if [ "${1:-}" = "--nproc" ]; then nproc=${2:?--nproc needs a number of processes}; shift 2; fi
archive=${1:?usage: bash benchmarks/gpu_proof.sh ARCHIVE [MINUTES] [RESULTS_DIR] [-- proof.py flags]}
shift
minutes=7.5
results=$repo/benchmarks/results
if [ $# -gt 0 ] && [ "$1" != "--" ]; then minutes=$1; shift; fi
if [ $# -gt 0 ] && [ "$1" != "--" ]; then results=$1; shift; fi
if [ $# -gt 0 ] && [ "$1" = "--" ]; then shift; fi

runs=${SPLICER_RUNS:-$repo/runs}
python=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ -n "${SPLICER_WHEELS:-}" ]; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --target "$work/site" "$SPLICER_WHEELS"/*.whl
  export PYTHONPATH="$work/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

tar -xzf "$archive" -C "$work"
train=$(find "$work" -maxdepth 3 -type d -name train -not -path "$work/site/*" | head -n 1)
[ -n "$train" ] || { echo "gpu_proof.sh: no train/ folder in $archive" >&2; exit 2; }

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
launcher=("$python")
if [ "$nproc" != 1 ]; then
  launcher=("$python" -m torch.distributed.run --standalone "--nproc_per_node=$nproc")
fi
"${launcher[@]}" "$repo/benchmarks/proof.py" --config gpu --seeds 0 --fit-minutes "$minutes" --quiet \
  --data-root "$(dirname "$train")" --runs "$runs" --out "$results" "$@"
