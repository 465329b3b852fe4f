#!/usr/bin/env bash
# Create a TPU VM slice, ship the code, install, run the same train command on every worker, stream the
# logs, and delete the slice.
#
#   launch/tpu_pod.sh --name=bert-large --zone=us-central2-b --accelerator-type=v4-32 \
#       [--runtime-version=tpu-ubuntu2204-base] [--project=P] [--spot | --queued] [--num-slices=2] \
#       [--git-ref=origin/main | --tarball=bert_jax.tar.gz] [--keep] [--dry-run] \
#       -- --config=large --workdir=gs://BUCKET/runs/large --config.data.train_files='gs://BUCKET/data/*.tfrecord'
#
# --queued asks through queued resources (required for --num-slices > 1, the multislice path; each
# slice's workers get MEGASCALE_* variables from the runtime). --dry-run prints every gcloud command.
set -euo pipefail
name=""; zone=""; accel=""; runtime="tpu-ubuntu2204-base"; project=""; spot=0; queued=0; slices=1
git_ref=""; tarball=""; keep=0; dry=0
while [ $# -gt 0 ]; do
  case "$1" in
    --name=*) name=${1#*=} ;;
    --zone=*) zone=${1#*=} ;;
    --accelerator-type=*) accel=${1#*=} ;;
    --runtime-version=*) runtime=${1#*=} ;;
    --project=*) project=${1#*=} ;;
    --spot) spot=1 ;;
    --queued) queued=1 ;;
    --num-slices=*) slices=${1#*=} ;;
    --git-ref=*) git_ref=${1#*=} ;;
    --tarball=*) tarball=${1#*=} ;;
    --keep) keep=1 ;;
    --dry-run) dry=1 ;;
    --) shift; break ;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
  shift
done
[ -n "$name" ] && [ -n "$zone" ] && [ -n "$accel" ] || { echo "need --name, --zone and --accelerator-type" >&2; exit 2; }
[ $# -gt 0 ] || { echo "need train flags after --, e.g. -- --config=large --workdir=gs://BUCKET/runs/large" >&2; exit 2; }
if [ "$slices" -gt 1 ]; then queued=1; fi

run() {
  printf '+'; printf ' %q' "$@"; printf '\n'
  if [ "$dry" -eq 0 ]; then "$@"; fi
}
common=(--zone="$zone")
[ -n "$project" ] && common+=(--project="$project")
train_flags=("$@")
if [ "$slices" -gt 1 ] && [[ " $* " != *" --config.mesh.dcn_data="* ]]; then
  train_flags+=(--config.mesh.dcn_data="$slices")  # data parallelism across slices over DCN
fi
train_cmd="cd bert_jax && .venv/bin/python -m bert_jax.train$(printf ' %q' "${train_flags[@]}")"
install_cmd="cd bert_jax && python3 -m venv .venv && .venv/bin/pip install -q -e '.[tpu,gcs]'"

if [ "$queued" -eq 1 ]; then
  create=(gcloud compute tpus queued-resources create "$name" "${common[@]}" --accelerator-type="$accel"
          --runtime-version="$runtime")
  if [ "$slices" -gt 1 ]; then create+=(--node-count="$slices" --node-prefix="$name"); else create+=(--node-id="$name"); fi
  [ "$spot" -eq 1 ] && create+=(--spot)
  run "${create[@]}"
  run gcloud compute tpus queued-resources describe "$name" "${common[@]}" --format='value(state.state)'
else
  create=(gcloud compute tpus tpu-vm create "$name" "${common[@]}" --accelerator-type="$accel" --version="$runtime")
  [ "$spot" -eq 1 ] && create+=(--spot)
  run "${create[@]}"
fi

if [ -z "$tarball" ]; then
  tarball=$(mktemp -u --suffix=.tar.gz)
  run git archive --format=tar.gz -o "$tarball" "${git_ref:-HEAD}"
fi
nodes=("$name")
if [ "$slices" -gt 1 ]; then nodes=(); for ((s = 0; s < slices; s++)); do nodes+=("$name-$s"); done; fi
for node in "${nodes[@]}"; do
  run gcloud compute tpus tpu-vm scp "$tarball" "$node:~/bert_jax.tar.gz" "${common[@]}" --worker=all
  run gcloud compute tpus tpu-vm ssh "$node" "${common[@]}" --worker=all \
      --command="mkdir -p bert_jax && tar -xzf bert_jax.tar.gz -C bert_jax"
  run gcloud compute tpus tpu-vm ssh "$node" "${common[@]}" --worker=all --command="$install_cmd"
done
# The same command on every worker of every slice; ssh streams each worker's output.
status=0
pids=()
for node in "${nodes[@]}"; do
  run gcloud compute tpus tpu-vm ssh "$node" "${common[@]}" --worker=all --command="$train_cmd" &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || status=1; done
if [ "$keep" -eq 0 ]; then
  if [ "$queued" -eq 1 ]; then
    run gcloud compute tpus queued-resources delete "$name" "${common[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "$name" "${common[@]}" --quiet
  fi
fi
exit $status
