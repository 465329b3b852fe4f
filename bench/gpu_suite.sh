#!/usr/bin/env bash
# The GPU figures of bench/RESULTS.md, one JSON line per run, appended to ${OUT:-.}/gpu.jsonl.
#   bash bench/gpu_suite.sh core       # attention check; large seq 128/512 cuDNN vs XLA; vs HF torch
#   bash bench/gpu_suite.sh ablations  # MLM gather, bf16 optimizer state, fp32, remat, scan vs unrolled
# Each run is a separate process (peak memory is per process) under a time limit, so one failure
# (an OOM, say) is recorded and the rest still run.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-.}/gpu.jsonl"
log="${OUT:-.}/gpu.log"
run() {
  local limit=$1; shift
  echo "### $*" | tee -a "$log"
  if ! timeout "$limit" python3 "$@" 2>>"$log" | tee -a "$out"; then
    echo "{\"failed\": \"$*\"}" | tee -a "$out"
    tail -5 "$log"
  fi
}
L128="bench/train_bench.py --config=large --seq=128 --dtype=bfloat16 --remat=none --steps=10 --warmup=2"
L512="bench/train_bench.py --config=large --seq=512 --dtype=bfloat16 --remat=none --steps=10 --warmup=2"
U="--attention=cudnn --attention_dropout=0 --prng_impl=unsafe_rbg"  # the fused-attention settings of the HF runs
case "${1:-core}" in
  core)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$log"
    run 100 bench/attention_check.py --config=large --batch=8 --seq=512
    run 150 $L128 --batch=256 --attention=cudnn --attention_dropout=0 --compare_torch
    run 150 $L512 --batch=64 --attention=cudnn --attention_dropout=0 --compare_torch
    # XLA attention needs the [B, N, T, S] scores in memory: half the batch fits without remat.
    run 90 $L128 --batch=128 --attention=xla --attention_dropout=0
    run 90 $L128 --batch=128 --attention=cudnn --attention_dropout=0
    run 90 $L512 --batch=32 --attention=xla --attention_dropout=0
    run 90 $L512 --batch=32 --attention=cudnn --attention_dropout=0
    ;;
  ablations)
    B128="$L128 --batch=128 --attention=cudnn --attention_dropout=0"
    run 60 $B128 --nodropout
    run 60 $B128 --prng_impl=unsafe_rbg
    run 60 $B128 --prng_impl=rbg
    run 150 $L128 --batch=256 --attention=cudnn --attention_dropout=0 --prng_impl=unsafe_rbg --compare_torch
    run 150 $L512 --batch=64 --attention=cudnn --attention_dropout=0 --prng_impl=unsafe_rbg --compare_torch
    run 60 $B128 --prng_impl=unsafe_rbg --mlm_all_positions
    run 60 $B128 --prng_impl=unsafe_rbg --opt_state_dtype=bfloat16
    run 90 $B128 --prng_impl=unsafe_rbg --scan_layers=false
    ;;
  profile)
    run 120 $L128 --batch=128 --attention=cudnn --attention_dropout=0 --prng_impl=unsafe_rbg --steps=5 \
        --profile_dir="${OUT:-.}/profile"
    python3 bench/trace_summary.py "${OUT:-.}/profile" --top=30 | tee "${OUT:-.}/profile_top.txt"
    ;;
  final)
    run 100 $L128 --batch=128 $U --steps=5 --profile_dir="${OUT:-.}/profile"
    python3 bench/trace_summary.py "${OUT:-.}/profile" --top=15 | tee "${OUT:-.}/profile_top.txt"
    rm -rf "${OUT:-.}/profile"
    run 100 $L128 --batch=256 $U --compare_torch
    run 100 $L512 --batch=64 $U --compare_torch
    run 150 $L128 --batch=256 $U --scan_layers=false --compare_torch
    ;;
  rest_a)  # rest_a, rest_b: what the first H100 session ran out of time for
    run 60 $L128 --batch=128 $U
    run 60 $L128 --batch=128 $U --fused_qkv
    run 60 $L128 --batch=128 $U --mlm_all_positions
    run 60 $L128 --batch=128 $U --nodropout
    run 60 $L128 --batch=64 $U
    run 60 $L128 --batch=64 $U --dtype=float32
    ;;
  rest_b)
    run 90 $L512 --batch=64 $U
    run 90 $L512 --batch=64 $U --remat=full
    XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 run 90 $L512 --batch=64 $U
    run 150 $L128 --batch=256 $U --scan_layers=false --compare_torch
    ;;
  memory)
    run 90 $L512 --batch=64 --attention=cudnn --attention_dropout=0 --prng_impl=unsafe_rbg --remat=full
    run 90 $L512 --batch=64 --attention=cudnn --attention_dropout=0 --prng_impl=unsafe_rbg --remat=dots_no_batch
    run 240 $L128 --batch=128 --attention=cudnn --attention_dropout=0 --prng_impl=unsafe_rbg --scan_layers=false --steps=5
    ;;
esac
