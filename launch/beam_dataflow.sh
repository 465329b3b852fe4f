#!/usr/bin/env bash
# Pretraining data on Google Cloud Dataflow through Beam's own pipeline options (no gcloud needed: Beam
# authenticates with Application Default Credentials and submits the job itself).
#
#   launch/beam_dataflow.sh --project=P --region=us-central1 --bucket=gs://B [--workers=N] \
#       [--machine-type=n2-standard-8] [--image=REGION-docker.pkg.dev/P/REPO/bert-jax-beam:TAG] [--dry-run] \
#       -- --corpus='gs://B/corpus/*.txt' --output_dir=gs://B/data/wiki-128 --vocab_file=gs://B/vocab/spm.model
#
# Workers need bert_jax: --image is a custom SDK container with it installed (fast start, recommended);
# without one, a wheel of this checkout ships as --extra_package and each worker pip-installs it and its
# dependencies at start-up. --workers defaults to prepare's estimate (--dry_run shows it and its reasoning).
# --dry-run prints the command and the estimate and submits nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
project=""; region=""; bucket=""; workers=""; machine="n2-standard-8"; image=""; dry=0
while [ $# -gt 0 ]; do
  case "$1" in
    --project=*) project=${1#*=} ;;
    --region=*) region=${1#*=} ;;
    --bucket=*) bucket=${1%/}; bucket=${bucket#*=} ;;
    --workers=*) workers=${1#*=} ;;
    --machine-type=*) machine=${1#*=} ;;
    --image=*) image=${1#*=} ;;
    --dry-run) dry=1 ;;
    --) shift; break ;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
  shift
done
[ $# -gt 0 ] || { echo "need prepare flags after --, e.g. -- --corpus=... --output_dir=gs://... --vocab_file=..." >&2; exit 2; }
if [ "$dry" = 0 ]; then
  for v in project region bucket; do
    [ -n "${!v}" ] || { echo "--$v is required (or --dry-run to see the command)" >&2; exit 2; }
  done
fi
PYTHON=${PYTHON:-python}
run_flags=()  # the prepare flags minus the planning ones (--dry_run's --corpus_bytes, --target_hours)
for a in "$@"; do
  case "$a" in --corpus_bytes=*|--target_hours=*|--dry_run|--nodry_run) ;; *) run_flags+=("$a") ;; esac
done
estimate=$("$PYTHON" -m bert_jax.data.prepare --dry_run "$@" 2>/dev/null) || \
  estimate=$("$PYTHON" -m bert_jax.data.prepare --dry_run "$@")  # the error, shown
if [ -z "$workers" ]; then
  workers=$(sed -n 's/^workers: \([0-9]*\) x .*/\1/p' <<<"$estimate")
fi
cmd=("$PYTHON" -m bert_jax.data.prepare --runner=DataflowRunner --project="${project:-PROJECT}"
     --region="${region:-REGION}" --temp_location="${bucket:-gs://BUCKET}/beam/tmp"
     --staging_location="${bucket:-gs://BUCKET}/beam/staging" --num_workers="$workers" --max_num_workers="$workers"
     --autoscaling_algorithm=NONE --machine_type="$machine" --experiments=use_runner_v2)
if [ -n "$image" ]; then
  cmd+=(--sdk_container_image="$image")
else
  wheel_dir=${WHEEL_DIR:-dist}
  cmd+=(--extra_package="$wheel_dir/bert_jax-0.1.0-py3-none-any.whl")
fi
cmd+=("${run_flags[@]}")
if [ "$dry" = 1 ]; then
  echo "$estimate" | sed -n '1,3p'
  [ -n "$image" ] || echo "# ships the code as: $PYTHON -m pip wheel --no-deps -w ${wheel_dir} ."
  echo "# Dataflow command:"
  printf '%q ' "${cmd[@]}"; echo
  exit 0
fi
[ -n "$image" ] || "$PYTHON" -m pip wheel --no-deps -q -w "$wheel_dir" .
exec "${cmd[@]}"
