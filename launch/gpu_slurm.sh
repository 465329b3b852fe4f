#!/usr/bin/env bash
#SBATCH --job-name=bert_jax
#SBATCH --exclusive
#SBATCH --ntasks-per-node=1
# Multi-node GPU training under SLURM: one task per node, each owning the node's GPUs. JAX's SLURM
# auto-detection (SLURM_* variables) sets coordinator, process count and id; nothing else is needed.
#
#   launch/gpu_slurm.sh --nodes=4 --gpus-per-node=8 [--partition=P] [--time=48:00:00] [--dry-run] \
#       -- --config=large --workdir=/shared/runs/large --config.data.train_files='/shared/data/*.tfrecord'
#
# Outside a SLURM job this submits itself with sbatch; inside the job it runs the same train command
# on every node with srun. --dry-run prints the sbatch and srun commands and the environment.
set -euo pipefail
nodes=1; gpus=8; partition=""; wall="48:00:00"; dry=0
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes=*) nodes=${1#*=} ;;
    --gpus-per-node=*) gpus=${1#*=} ;;
    --partition=*) partition=${1#*=} ;;
    --time=*) wall=${1#*=} ;;
    --dry-run) dry=1 ;;
    --) shift; break ;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
  shift
done
[ $# -gt 0 ] || { echo "need train flags after --, e.g. -- --config=large --workdir=..." >&2; exit 2; }

# NCCL over InfiniBand/RoCE where present; XLA keeps GPU memory to itself for the whole run.
nccl_env=(NCCL_DEBUG=WARN NCCL_IB_DISABLE=0 NCCL_NET_GDR_LEVEL=PHB NCCL_SOCKET_IFNAME="${NCCL_SOCKET_IFNAME:-^lo,docker}"
          XLA_PYTHON_CLIENT_MEM_FRACTION=0.92 TF_CPP_MIN_LOG_LEVEL=2)
python=${PYTHON:-.venv/bin/python}
train=(srun --ntasks-per-node=1 --gpus-per-node="$gpus" env "${nccl_env[@]}" "$python" -m bert_jax.train "$@")

if [ -z "${SLURM_JOB_ID:-}" ]; then
  submit=(sbatch --nodes="$nodes" --gpus-per-node="$gpus" --time="$wall")
  [ -n "$partition" ] && submit+=(--partition="$partition")
  submit+=("$0" --nodes="$nodes" --gpus-per-node="$gpus" -- "$@")
  printf '+'; printf ' %q' "${submit[@]}"; printf '\n'
  if [ "$dry" -eq 1 ]; then
    printf '+ (in the job)'; printf ' %q' "${train[@]}"; printf '\n'
    exit 0
  fi
  exec "${submit[@]}"
fi
printf '+'; printf ' %q' "${train[@]}"; printf '\n'
[ "$dry" -eq 1 ] && exit 0
exec "${train[@]}"
