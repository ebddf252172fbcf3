#!/usr/bin/env bash
# The GPU suite (benchmarks/gpu_suite.py): offline, time-boxed, most valuable figures first.
#   bash benchmarks/gpu_suite.sh --out /tmp/gpu --pack "$OUT/gpu_suite.tar.gz"   # on one GPU
#   bash benchmarks/gpu_suite.sh --rehearsal --out /tmp/rehearsal                 # CPU (CI)
# Needs the wheelhouse beside it: `make gpu-wheelhouse` (carry .whl/gpu to the GPU machine).
set -uo pipefail
cd "$(dirname "$0")/.."
unset TRITON_INTERPRET
py=${SCIGPT_GPU_PYTHON:-python3}
if [ "${1:-}" = "--rehearsal" ] || [[ " $* " == *" --rehearsal "* ]]; then
  py=${SCIGPT_REHEARSAL_PYTHON:-.venv/bin/python}
fi
exec "$py" benchmarks/gpu_suite.py "$@"
