#!/usr/bin/env bash
# One-shot GPU acceptance, sized for a short GPU lease: under 8 minutes on an H100/H200, every
# step under its own time limit, each writing JSON and Markdown as it goes (a step cut off keeps
# what it measured; the next steps still run):
#   1. the Triton kernel tests, compiled natively              (80 s)
#   2. benchmarks/rcab_bench.py: fused RCAB tail vs eager       (120 s)
#   3. engine_check.py engine: paper-size N on a 12 MP photo, every plan x fp32/bf16/fp16 x
#      torch/Triton RCAB: time, peak vs the memory model, difference from fp32 whole (150 s)
#   4. engine_check.py folder: mcan-upscale on four 12 MP photos vs the model time alone (70 s)
#   5. engine_check.py train: the trainer's step of a block and of N in fp32, bf16 and bf16 with
#      CUDA graphs, and the hours the paper plan would take at each rate (60 s)
#
#   bash benchmarks/gpu_check.sh            # results in $OUT if set (device tool), else benchmarks/results/
#   bash benchmarks/gpu_check.sh --smoke    # the same scripts on a CPU at tiny sizes (Triton's
#                                           # interpreter); CI runs it so the script cannot rot
#
# Needs python3 with torch (CUDA build), triton, pytest, opencv and safetensors; the package runs
# from this checkout. Exit code 1 when a step failed or timed out.
set -uo pipefail
cd "$(dirname "$0")/.."
SMOKE=""
[[ "${1:-}" == "--smoke" ]] && SMOKE="--smoke"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
RESULTS="${OUT:-benchmarks/results}"
mkdir -p "$RESULTS"
status=0
step() {  # step SECONDS NAME COMMAND...: run with a time limit, log to $RESULTS/NAME.log
    local limit=$1 name=$2
    shift 2
    echo "gpu_check: $name (at most ${limit} s)"
    timeout --kill-after=10 "$limit" "$@" > "$RESULTS/$name.log" 2>&1
    local rc=$?
    tail -n 3 "$RESULTS/$name.log"
    if [[ $rc -ne 0 ]]; then
        echo "gpu_check: $name FAILED (exit $rc$([[ $rc -eq 124 ]] && echo ', time limit'))"
        status=1
    fi
}
if [[ -n "$SMOKE" ]]; then
    export TRITON_INTERPRET=1  # kernels run in Triton's interpreter on CPU tensors
    "$PY" -c "import torch, triton; print('gpu_check --smoke: CPU, torch', torch.__version__, 'triton', triton.__version__)"
    step 240 rcab-bench "$PY" benchmarks/rcab_bench.py --smoke --device cpu --reps 1 --no-compile --out "$RESULTS"
else
    unset TRITON_INTERPRET  # compiled kernels, not the interpreter
    "$PY" - <<'PY' || exit 1
import torch, triton
assert torch.cuda.is_available(), "gpu_check: no CUDA device visible"
print("gpu_check:", torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__,
      "CUDA", torch.version.cuda)
PY
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv > "$RESULTS/gpu-info.csv" 2>&1 || true
    step 80 gpu-tests "$PY" -m pytest -q -x -p no:cacheprovider tests/kernels/test_rcab.py
    step 120 rcab-bench "$PY" benchmarks/rcab_bench.py --device cuda --reps 10 --out "$RESULTS"
fi
step 150 engine "$PY" benchmarks/engine_check.py engine $SMOKE --seconds 110 --out "$RESULTS"
step 70 folder "$PY" benchmarks/engine_check.py folder $SMOKE --out "$RESULTS"
step 60 train "$PY" benchmarks/engine_check.py train $SMOKE --out "$RESULTS"
echo "gpu_check: results in $RESULTS ($(ls "$RESULTS" | tr '\n' ' '))"
exit $status
