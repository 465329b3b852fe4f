#!/usr/bin/env bash
# One device call: install the carried wheels, run bench/gpu_suite.sh stages in order, bring the train runs'
# metrics.jsonl back under $OUT.
#   bash bench/gpu_session.sh grain defaults_a        # GRAIN_CONFIG=base, FAMILY_STEPS=... pass through
# The device's copy has no .git: give the commit as BENCH_COMMIT=<hash> (bench/train_bench.py's lines record it,
# with the command and package versions).
# Before the call, here (where PyPI is reachable and time is not device time):
#   bash bench/offline_wheels.sh .whl [--keras]                        # what the GPU image lacks
#   GRAIN_CONFIG=base PREPARE_ONLY=1 WORK=gpu_work bash bench/gpu_suite.sh grain   # the stages' data
#   PREPARE_ONLY=1 WORK=gpu_work bash bench/gpu_suite.sh families_heldout
# and carry .whl and gpu_work (both git-ignored here: list them in the call's carry).
set -uo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export WORK=${WORK:-gpu_work} PYTHONUNBUFFERED=1
for stage in "$@"; do
  echo "=== $stage, $(date -u +%H:%M:%S) UTC"
  bash bench/gpu_suite.sh "$stage"
done
if [ -n "${OUT:-}" ]; then
  for metrics in "$WORK"/*/metrics.jsonl; do
    [ -f "$metrics" ] && cp "$metrics" "$OUT/$(basename "$(dirname "$metrics")")_metrics.jsonl"
  done
fi
