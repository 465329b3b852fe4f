#!/usr/bin/env bash
# Offline demo of fine-tuning (issue #8): the pydocs_family task from the pretrained tiny Quick-start
# checkpoint, and the same model from scratch, same steps and settings. Prints both result.json files.
#   bash bench/finetune_demo.sh [PRETRAIN_WORKDIR=runs/tiny] [OUT=runs/ft-demo] [extra --config flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
pre="${1:-runs/tiny}"; out="${2:-runs/ft-demo}"; shift $(( $# < 2 ? $# : 2 ))
vocab=$(ls "$pre"/data/*/vocab/spm.model | head -1)
python -m bert_jax.finetune --config=finetune --init_checkpoint="$pre" --workdir="$out/pretrained" "$@"
python -m bert_jax.finetune --config=finetune --workdir="$out/scratch" --config.data.vocab_file="$vocab" "$@"
for run in pretrained scratch; do echo "== $run"; cat "$out/$run/result.json"; echo; done
