#!/usr/bin/env bash
# Creates .venv (if needed) and installs bert_jax with the given extras. Idempotent and quiet.
#   EXTRAS=torch,test bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
EXTRAS=${EXTRAS:-}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
if [[ ",$EXTRAS," == *",torch,"* ]] && ! python -c "import torch" 2>/dev/null; then
  # A pinned CPU build first: a loose torch requirement would pull several GB of CUDA wheels.
  python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
fi
spec="."
[ -n "$EXTRAS" ] && spec=".[${EXTRAS}]"
python -m pip install -q -e "$spec"
