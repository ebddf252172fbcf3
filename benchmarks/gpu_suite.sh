#!/usr/bin/env bash
# The one prepared GPU check (about 8 minutes on one H200): compiled kernel numerics (bf16
# included: the cuda-marked tests and every CPU case again, compiled and autotuned), then
# benchmarks/kernels.py (Triton attention vs SDPA flash and cuDNN; fused patch embedding vs
# torch.compile). Results and logs go to $OUT (or benchmarks/results).
#
#   bash benchmarks/gpu_suite.sh            # e.g. through the device tool, with OUT set
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/results}
mkdir -p "$out"
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-/tmp/torch_extensions}
unset TRITON_INTERPRET
# scigpt.kernels maps to kernels/ only through the package (pyproject package-dir)
python -m pip install -q --no-deps -e . >"$out/install.log" 2>&1 || cat "$out/install.log"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" \
  | tee -a "$out/gpu.txt"

timeout 240 python -m pytest -q -p no:cacheprovider tests/test_kernels_attention.py \
  tests/test_kernels_patch_embed.py 2>&1 | tee "$out/gpu_kernel_tests.log" | tail -15
timeout 330 python benchmarks/kernels.py 2>&1 | tee "$out/kernels.log"
cp benchmarks/results/kernels_attention.* benchmarks/results/kernels_patch_embed.* "$out/" \
  2>/dev/null || true
