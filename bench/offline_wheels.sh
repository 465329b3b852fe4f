#!/usr/bin/env bash
# Wheels for an offline GPU host whose image has JAX, PyTorch, transformers, flax, optax and orbax but none of our
# other dependencies (as the H200 of 2026-11-27 had: bench/RESULTS.md). Downloads them for CPython 3.12 on x86-64
# manylinux into DIR, here where PyPI is reachable:
#   bash bench/offline_wheels.sh [DIR=.whl] [--keras]     # --keras: also the KerasHub peer (--compare_keras)
# then, on the host, from the repository root:
#   python3 -m pip install --no-index --no-deps --target /tmp/site DIR/*.whl && export PYTHONPATH=/tmp/site:$PWD
# The versions are the ones that ran there (grain's own needs included); --no-deps keeps the image's packages.
set -euo pipefail
dir=${1:-.whl}
packages=(ml_collections==1.1.0 grain==0.2.18 array_record==0.8.6 tensorboardX==2.6.5 dm-tree==0.1.10
          portpicker==1.6.0 importlib_resources==7.1.0)
if [ "${2:-}" = --keras ]; then
  # KerasHub without TensorFlow Text (only its tokenizers need it; bench/keras_peer.py)
  packages+=(keras==3.15.1 keras-hub==0.32.0 kagglehub==1.0.3 kagglesdk==0.1.38 namex==0.1.0 optree==0.20.0)
fi
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$dir" "${packages[@]}"
du -sh "$dir"
