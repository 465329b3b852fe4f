#!/usr/bin/env bash
# Parameter-efficient fine-tuning on the offline pydocs_family demo (issue #19): one tiny pretraining run (the
# Quick-start `tiny` config), then full fine-tuning, frozen encoder, Houlsby and Pfeiffer adapters, prompt tuning,
# prefix tuning and LoRA from that checkpoint with the same steps, batch and seed; prints a Markdown table.
#   bash bench/peft_demo.sh [OUT=runs/peft-demo] [extra --config flags for every fine-tuning run...]
# PRETRAIN_WORKDIR reuses a pretraining workdir; METHODS="method:lr ..." picks runs; finished runs
# (OUT/<method>/result.json) are not rerun. POOLING=mean (default) classifies the mean of the tokens' outputs,
# which a frozen trunk needs (its [CLS] only learned NSP) and which has no transformers class, so no hf/ export is
# written; POOLING=cls gives the HF-exportable heads and their export checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
out="${1:-runs/peft-demo}"; shift $(( $# < 1 ? $# : 1 ))
pre="${PRETRAIN_WORKDIR:-$out/tiny}"
# method:peak learning rate. Methods that train few weights on a frozen trunk take larger steps.
methods=${METHODS:-full:2e-4 frozen:3e-2 houlsby:1e-2 pfeiffer:1e-2 prompt:3e-2 prefix:3e-2 lora:5e-3}
pooling=${POOLING:-mean}
head=(--config.model.pooling="$pooling")
[ "$pooling" = cls ] || head+=(--config.train.export_hf=False)
[ -d "$pre/checkpoints" ] || "$PYTHON" -m bert_jax.train --config=tiny --workdir="$pre"
for entry in $methods; do
  method=${entry%%:*}; lr=${entry#*:}
  [ -f "$out/$method/result.json" ] || "$PYTHON" -m bert_jax.finetune --config=finetune --init_checkpoint="$pre" \
      --workdir="$out/$method" --config.train.method="$method" --config.train.learning_rate="$lr" "${head[@]}" "$@"
done
"$PYTHON" - "$out" $methods <<'PY'
import collections, json, os, sys
out, lrs = sys.argv[1], dict(e.split(":") for e in sys.argv[2:])


def ms_per_step(run):
  """seq_per_sec is cumulative from the first step (compilation included): time the steps after the first line."""
  train = [json.loads(l) for l in open(os.path.join(run, "metrics.jsonl")) if '"split": "train"' in l]
  batch = json.load(open(os.path.join(run, "result.json")))["batch_size"]
  elapsed = lambda m: m["step"] * batch / m["seq_per_sec"]
  return 1000 * (elapsed(train[-1]) - elapsed(train[0])) / (train[-1]["step"] - train[0]["step"])


rows = [(m, json.load(open(os.path.join(out, m, "result.json"))), ms_per_step(os.path.join(out, m)))
        for m in ("full", "frozen", "houlsby", "pfeiffer", "prompt", "prefix", "lora") if m in lrs
        and os.path.exists(os.path.join(out, m, "result.json"))]
labels = [json.loads(l)["label"] for l in open(os.path.join(out, rows[0][0], "task", "eval.jsonl"))]
full_ms = {m: ms for m, _, ms in rows}.get("full")
print("| method | learning rate | eval accuracy | eval macro-F1 | trainable params | share | ms/step | vs full |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for method, r, ms in rows:
  print(f"| {method} | {lrs[method]} | {r['accuracy']:.3f} | {r['f1']:.3f} | {r['trainable_params']:,} | "
        f"{100 * r['trainable_params'] / r['total_params']:.2f}% | {ms:.0f} | "
        + (f"{ms / full_ms:.2f}x |" if full_ms else "- |"))
share = max(collections.Counter(labels).values()) / len(labels)
print(f"\nalways the majority class: accuracy {share:.3f}, macro-F1 {2 * share / (1 + share) / len(set(labels)):.3f} "
      f"({len(labels)} eval rows, {len(set(labels))} classes)")
PY
