#!/usr/bin/env bash
# The report's whole plan (configs/paper.toml: 3 blocks x 15,000 iterations, then 10,000 of N,
# batch 16 of 48x48) as one device job: mcan-train at its defaults (bf16, channels_last, fused
# Adam, CUDA graphs), under a time limit that stops it at a checkpoint (SIGTERM) rather than
# losing it. Calling the script again on the same machine (the device tool keeps ignored files
# between calls while the machine is warm) resumes the run where it stopped; a finished run only
# copies its results again. What comes back, at most 8 files in $OUT (else benchmarks/results/):
#   paper-<date>-report.md     the run's report.md (curves, phase table, time shares, options)
#   paper-<date>-metrics.jsonl every logged line: losses, validations, step times
#   paper-<date>-curves.png, paper-<date>-strip.png, paper-<date>-run.json
#   paper-<date>-train.log     mcan-train's log of this call, with its wall time
#
#   bash benchmarks/gpu_train_paper.sh            # the paper plan on the bundled City100 crops
#   DATA=DIR bash benchmarks/gpu_train_paper.sh   # on another dataset folder (train/ and test/)
# The bundled crops are 12 small training scenes; for all 40 City100 Nikon training pairs, cut
# them here first (../shared does not travel to the device) and carry the folder (36 MB):
#   python samples/make_sample.py ../shared/data/city100_nikon .gpu-data/city100 --crop 512 --train 40 --test 5
#   device run with carry [".gpu-data"]: DATA=.gpu-data/city100 bash benchmarks/gpu_train_paper.sh
#   bash benchmarks/gpu_train_paper.sh --smoke    # PLAN (default demo) cut to 2 iterations a span,
#                                                 # on a CPU: CI runs it so the script cannot rot
# LIMIT (seconds, default 560) bounds the training command; RUN (default runs/paper-gpu) is the
# run directory; PLAN (default paper) a shipped plan's name or a TOML file. Exit 0 when the run is finished, 3 when the limit stopped it (call again),
# 1 on an error.
set -uo pipefail
cd "$(dirname "$0")/.."
SMOKE=""
[[ "${1:-}" == "--smoke" ]] && SMOKE=1
PY="${PYTHON:-python3}"
RESULTS="${OUT:-benchmarks/results}"
RUN="${RUN:-runs/paper-gpu}"
DATA="${DATA:-sample}"
LIMIT="${LIMIT:-560}"
PLAN="${PLAN:-}"
mkdir -p "$RESULTS"
stamp="paper-$(date +%Y%m%d)"
args=(--config "${PLAN:-paper}" --data "$DATA" --out "$RUN" --no-progress)
if [[ -n "$SMOKE" ]]; then
    stamp="paper-smoke-$(date +%Y%m%d)"
    args=(--config "${PLAN:-demo}" --data "$DATA" --out "$RUN" --no-progress --max-iters 2 --device cpu)
fi
log="$RESULTS/$stamp-train.log"
echo "gpu_train_paper: mcan-train ${args[*]} (at most $LIMIT s)"
t0=$SECONDS
timeout --signal=TERM --kill-after=60 "$LIMIT" "$PY" -m mcan_deploy.cli.train "${args[@]}" > "$log" 2>&1
rc=$?
echo "gpu_train_paper: this call took $((SECONDS - t0)) s (exit $rc)" | tee -a "$log"
for name in report.md metrics.jsonl curves.png strip.png run.json; do
    [[ -e "$RUN/$name" ]] && cp "$RUN/$name" "$RESULTS/$stamp-$name"
done
tail -n 12 "$log"
case $rc in
    0) exit 0 ;;
    124 | 130 | 143) echo "gpu_train_paper: stopped at a checkpoint in $RUN; call again to resume"; exit 3 ;;
    *) exit 1 ;;
esac
