#!/usr/bin/env bash
# The GPU checks of the fused Triton RCAB kernels in one go, sized for a short GPU lease (at
# most 5 minutes on an H100/H200): the kernel tests natively on CUDA (100 s at most), then
# benchmarks/rcab_bench.py (200 s at most).
#
#   bash benchmarks/gpu_check.sh            # results in $OUT if set (device tool), else benchmarks/results/
#
# Needs python3 with torch (CUDA build), triton and pytest; the package runs from this checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET  # compiled kernels, not the interpreter
RESULTS="${OUT:-benchmarks/results}"
mkdir -p "$RESULTS"
python3 - <<'PY'
import torch, triton
assert torch.cuda.is_available(), "gpu_check: no CUDA device visible"
print("gpu_check:", torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__,
      "CUDA", torch.version.cuda)
PY
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv > "$RESULTS/gpu-info.csv" 2>&1 || true
# correctness first (about a minute of kernel compiles); then the timings, which write their
# JSON after every section and end with torch.compile, so a cut-off run keeps the rest
status=0
timeout 100 python3 -m pytest -q -x -p no:cacheprovider tests/kernels/test_rcab.py 2>&1 | tee "$RESULTS/gpu-tests.log" || status=1
timeout 200 python3 benchmarks/rcab_bench.py --device cuda --reps 10 --out "$RESULTS" 2>&1 | tee "$RESULTS/rcab-bench.log" || status=1
exit $status
