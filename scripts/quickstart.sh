#!/usr/bin/env bash
# Quick start: set up .venv, then pretrain the tiny config on the offline default corpus.
#   bash scripts/quickstart.sh [extra train flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec python -m bert_jax.train --config=tiny --workdir="${WORKDIR:-runs/tiny}" "$@"
