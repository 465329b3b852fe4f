#!/usr/bin/env bash
# The GPU figures of bench/RESULTS.md, one JSON line per run, appended to ${OUT:-.}/gpu.jsonl.
#   bash bench/gpu_suite.sh core       # attention check; large seq 128/512 cuDNN vs XLA; vs HF torch
#   bash bench/gpu_suite.sh ablations  # MLM gather, bf16 optimizer state, fp32, remat, scan vs unrolled
#   bash bench/gpu_suite.sh grain      # train large with the grain backend, no TensorFlow; kill, resume, to_hf
#   bash bench/gpu_suite.sh defaults   # --config=large as shipped vs HF eager, torch.compile and KerasHub (#16)
#   bash bench/gpu_suite.sh fp8        # model.fp8 vs bf16: step time at seq 128/512, loss curves on pydocs (#16)
#   bash bench/gpu_suite.sh families   # ELECTRA and DistilBERT steps vs HF PyTorch; electra_small on held-out text (#18)
#   bash bench/gpu_suite.sh kernel_check  # attention dropout inside our Pallas kernel and inside cuDNN's (#16)
# defaults = defaults_a (shipped large vs HF eager, and with our pallas kernel, at 128) + defaults_b (the rest);
# families = families_bench + families_heldout. WORK (default: OUT) holds the training workdirs: a prepared
# data dir already under WORK/<run>/data/ (copied from another machine, say) is reused, not prepared again.
# PREPARE_ONLY=1 with grain or families_heldout prepares that stage's data under WORK here and stops (no
# TensorFlow, as on the device), so a GPU session carries WORK and spends no device time preparing.
# A host with JAX and PyTorch but none of our other packages and no network: bench/offline_wheels.sh; one device
# call that installs them and runs stages in order: bench/gpu_session.sh.
# Each run is a separate process (peak memory is per process) under a time limit, so one failure
# (an OOM, say) is recorded and the rest still run.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-.}/gpu.jsonl"
work="${WORK:-${OUT:-.}}"
log="${OUT:-.}/gpu.log"
# XLA's persistent cache: a resumed run (grain stage) or a rerun on the same machine skips the compile (unrolled
# BERT-large: ~65 s on an H200)
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-${TMPDIR:-/tmp}/bert_jax_gpu_suite_xla_cache}"
run() {
  local limit=$1; shift
  echo "### $*" | tee -a "$log"
  if ! timeout "$limit" python3 "$@" 2>>"$log" | tee -a "$out"; then
    echo "{\"failed\": \"$*\"}" | tee -a "$out"
    tail -5 "$log"
  fi
}
# A directory whose sitecustomize makes TensorFlow unimportable, as on a GPU image without it; echoes its path.
no_tf() {
  local dir="$work/no_tf"
  mkdir -p "$dir"
  printf 'import sys\nsys.modules["tensorflow"] = None\nsys.modules["tensorflow_datasets"] = None\n' \
      > "$dir/sitecustomize.py"
  echo "$dir"
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
  kernel_check)  # #16 item 2: attention dropout inside a fused kernel, checked as bench/attention_dropout_check.py says
    run 90 bench/attention_dropout_check.py --impl=pallas   # our kernel (layers/dropout_attention_kernel.py), Triton
    # can cuDNN's fused dropout train? (a new mask per call, per layer and per key; fwd/bwd masks paired in a scan)
    run 90 bench/attention_dropout_check.py --impl=cudnn
    # jax 0.11.2 on an H200 aborted that run inside XLA's command buffers (CuDnnThunk under a while loop, "Check
    # failed: local_device_ordinal.has_value()"); once more with command buffers off
    XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_command_buffer=" run 90 bench/attention_dropout_check.py --impl=cudnn
    ;;
  defaults|defaults_a|defaults_b)  # #16: --config=large as shipped (platform defaults; attention dropout 0.1)
    D="bench/train_bench.py --config=large --dtype=bfloat16 --steps=10 --warmup=2"
    if [ "$1" != defaults_b ]; then
      run 240 $D --seq=128 --batch=256 --compare_torch
      # attention dropout 0.1 inside our Pallas kernel vs the explicit path, unrolled without remat (the fast layout)
      run 240 $D --seq=128 --batch=256 --scan_layers=false --remat=none --attention=pallas
    fi
    if [ "$1" != defaults_a ]; then
      run 240 $D --seq=512 --batch=64 --compare_torch
      run 240 $D --seq=512 --batch=64 --scan_layers=false --remat=none --attention=pallas
      run 400 $D --seq=128 --batch=256 --compare_torch --torch_compile
      run 400 $D --seq=512 --batch=64 --compare_torch --torch_compile
      KERAS_BACKEND=jax run 300 $D --seq=128 --batch=256 --compare_keras   # needs keras-hub (bench/keras_peer.py)
    fi
    ;;
  fp8)  # #16 item 4: FP8 with delayed scaling vs bf16, same process settings, shipped defaults then fused ones
    D="bench/train_bench.py --config=large --dtype=bfloat16 --steps=10 --warmup=2"
    run 240 $D --seq=128 --batch=256
    run 240 $D --seq=128 --batch=256 --fp8
    run 240 $D --seq=512 --batch=64
    run 240 $D --seq=512 --batch=64 --fp8
    run 120 $L128 --batch=256 $U --scan_layers=false
    run 120 $L128 --batch=256 $U --scan_layers=false --fp8
    # bf16, bf16 with another seed, fp8: 300 steps of base each on pydocs (grain: no TensorFlow needed)
    run 900 bench/fp8_curves.py --config=base --steps=300 --batch=128 --workdir="${OUT:-.}/fp8_curves" \
        --extra=--config.data.backend=grain
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
  grain)  # issue #17: pydocs -> train with the grain backend and TensorFlow unimportable, with eval and
    # checkpoints; SIGKILL mid-run and resume; to_hf; then train_bench at the same settings (tokens/s ratio).
    # GRAIN_CONFIG/GRAIN_STEPS/GRAIN_BATCH/GRAIN_WORKERS shrink it for a CPU rehearsal (e.g. tiny, 60, 16, 1).
    cfg=${GRAIN_CONFIG:-large}; steps=${GRAIN_STEPS:-300}; batch=${GRAIN_BATCH:-256}; workers=${GRAIN_WORKERS:-8}
    w="$work/grain_run"; noTF=$(no_tf)
    T="env PYTHONPATH=$noTF:$PWD${PYTHONPATH:+:$PYTHONPATH}"  # keeps carried packages (PYTHONPATH) importable
    ARGS="--config=$cfg --workdir=$w --config.data.backend=grain --config.data.corpus=pydocs
       --config.data.vocab_size=8000 --config.model.vocab_size=8000 --config.data.dupe_factor=5
       --config.data.grain_workers=$workers --config.train.steps=$steps --config.train.batch_size=$batch
       --config.optim.warmup_steps=$((steps / 10)) --config.train.log_every=$((steps / 30 > 0 ? steps / 30 : 1))
       --config.train.eval_every=$((steps / 3)) --config.train.eval_batches=5
       --config.checkpoint.every_steps=$((steps / 3))"
    A="-m bert_jax.train $ARGS"
    if [ -n "${PREPARE_ONLY:-}" ]; then $T python3 bench/prepare_run_data.py $ARGS; exit $?; fi
    echo "### grain: first run, killed after step $((steps / 2))" | tee -a "$log"
    $T python3 $A >>"$log" 2>&1 &   # env execs python: $! is the trainer itself, so kill -9 reaches it
    pid=$!
    deadline=$((SECONDS + 400))
    until [ "$(python3 -c "import json,sys; print(max([json.loads(l)['step'] for l in open(sys.argv[1])
        if 'split' not in l] or [0]))" "$w/metrics.jsonl" 2>/dev/null || echo 0)" -ge $((steps / 2)) ] \
        || ! kill -0 $pid 2>/dev/null || [ $SECONDS -ge $deadline ]; do sleep 1; done
    kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null
    echo "### grain: resume to step $steps" | tee -a "$log"
    $T timeout 400 python3 $A >>"$log" 2>&1 || echo '{"failed": "grain resume"}' | tee -a "$out"
    grep -E "resumed|eval  step|reusing|WARNING" "$log" | tail -8
    $T timeout 200 python3 -m bert_jax.convert to_hf --workdir="$w" --output="$work/grain_hf" >>"$log" 2>&1 \
        || echo '{"failed": "grain to_hf"}' | tee -a "$out"
    ls -l "$work/grain_hf" | tee -a "$log"
    python3 - "$w/metrics.jsonl" "$cfg" <<'PY' | tee -a "$out"
import json, statistics, sys
lines = [json.loads(line) for line in open(sys.argv[1])]
train = [r for r in lines if r.get("split") != "eval"]
rates = [r["tokens_per_sec"] for r in train if r.get("tokens_per_sec")][3:]  # past compilation
print(json.dumps({"bench": "grain_train_cli", "config": sys.argv[2], "last_step": train[-1]["step"],
                  "steps_logged": [r["step"] for r in train][:3] + ["..."],
                  "median_tokens_per_sec": statistics.median(rates) if rates else None,
                  "loss": train[-1]["loss"], "eval": [r for r in lines if r.get("split") == "eval"][-1]}))
PY
    PYTHONPATH=$noTF:$PWD${PYTHONPATH:+:$PYTHONPATH} run 150 bench/train_bench.py --config=$cfg --seq=128 --batch=$batch --dtype=bfloat16 --steps=10 --warmup=2
    ;;
  families|families_bench|families_heldout)  # #18: both two-model steps against HF PyTorch's in the same process, bf16; then whether a GPU-sized
    # discriminator (ELECTRA-Small) beats the all-original baseline on held-out documents, which the 2-layer CPU
    # demo never does. Corpus: the installed packages' docstrings (bench/sitedocs_corpus.py; pydocs is too small,
    # a 12-layer model memorises it), its own 8k SentencePiece, the grain backend (no TensorFlow there).
    # The learning rate follows the paper's schedule (10k warmup steps of a 1M-step run) over the run's first
    # FAMILY_STEPS: a warmup of 10% of a short run lets the generator learn the unigram within a few hundred steps,
    # and the discriminator, which learns only while the generator's samples are easy to tell, then never does
    # (H200 and cpu-2, 2026-11-27, bench/RESULTS.md).
    # FAMILY_STEPS/FAMILY_BATCH/FAMILY_LIMIT/FAMILY_BENCH shrink it for a CPU rehearsal (e.g. 60, 8, 600,
    # "--batch=2 --steps=2 --warmup=1").
    steps=${FAMILY_STEPS:-6000}; batch=${FAMILY_BATCH:-128}; limit=${FAMILY_LIMIT:-420}
    B="bench/train_bench.py --seq=128 --dtype=bfloat16 --compare_torch ${FAMILY_BENCH:---batch=64 --steps=10 --warmup=2}"
    if [ "$1" != families_heldout ] && [ -z "${PREPARE_ONLY:-}" ]; then
      run 300 $B --config=electra_base
      run 300 $B --config=distilbert_base
    fi
    [ "$1" = families_bench ] && exit 0
    w="$work/electra_small_run"; corpus="$work/sitedocs.txt"
    if [ -f "$corpus" ]; then
      echo "### reusing $corpus (its package versions are in the line that wrote it)" | tee -a "$log"
    else
      python3 bench/sitedocs_corpus.py --output="$corpus" | tee -a "$log"
    fi
    ARGS="--config=electra_small --workdir=$w
        --config.data.corpus=$corpus --config.data.vocab_size=8000 --config.model.vocab_size=8000
        --config.data.lower_case=False --config.data.backend=grain --config.train.steps=$steps
        --config.data.grain_workers=${FAMILY_WORKERS:-8}
        --config.train.batch_size=$batch --config.optim.schedule_steps=1000000
        --config.train.log_every=$((steps / 20 > 0 ? steps / 20 : 1)) --config.train.eval_every=$((steps / 6))
        --config.train.eval_batches=20 --config.checkpoint.every_steps=$steps"
    if [ -n "${PREPARE_ONLY:-}" ]; then  # as the device prepares it: no TensorFlow, so ArrayRecord only
      PYTHONPATH=$(no_tf):$PWD${PYTHONPATH:+:$PYTHONPATH} python3 bench/prepare_run_data.py $ARGS; exit $?
    fi
    echo "### electra_small on sitedocs, $steps steps, batch $batch, at most ${limit}s" | tee -a "$log"
    timeout "$limit" python3 -m bert_jax.train $ARGS >>"$log" 2>&1 \
        || echo '{"failed": "electra_small run (or its time limit)"}' | tee -a "$out"
    python3 - "$w/metrics.jsonl" <<'PY' | tee -a "$out"
import json, sys
lines = [json.loads(line) for line in open(sys.argv[1])]
keys = ("step", "rtd_accuracy", "replaced_fraction", "rtd_auc", "rtd_precision", "rtd_recall", "rtd_loss",
        "mlm_accuracy")
print(json.dumps({"bench": "electra_small_held_out", "evals": [
    {**{k: r.get(k) for k in keys}, "all_original": 1 - r["replaced_fraction"]}
    for r in lines if r.get("split") == "eval"]}))
PY
    # the generator's eval MLM accuracy beside what counting neighbours gets on the same data
    run 300 bench/ngram_mlm_baseline.py --data_dir="$(dirname "$(ls "$w"/data/*/manifest.json | head -1)")" \
        --workdir="$w"
    ;;
  memory)
    run 90 $L512 --batch=64 --attention=cudnn --attention_dropout=0 --prng_impl=unsafe_rbg --remat=full
    run 90 $L512 --batch=64 --attention=cudnn --attention_dropout=0 --prng_impl=unsafe_rbg --remat=dots_no_batch
    run 240 $L128 --batch=128 --attention=cudnn --attention_dropout=0 --prng_impl=unsafe_rbg --scan_layers=false --steps=5
    ;;
esac
