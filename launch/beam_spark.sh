#!/usr/bin/env bash
# Pretraining data on a Spark cluster through Beam's portable Spark runner.
#
#   launch/beam_spark.sh --master=spark://HOST:7077 [--image=REGISTRY/bert-jax-beam:TAG] \
#       [--rest-url=http://HOST:6066] [--job-server-jar=PATH] [--dry-run] \
#       -- --corpus='hdfs-or-gs-or-shared/*.txt' --output_dir=gs://B/data/wiki-128 --vocab_file=gs://B/vocab/spm.model
#
# Beam's SparkRunner starts a Spark job server (a Java jar Beam fetches from Maven Central on first use, or
# --job-server-jar for machines without Maven access) that submits the pipeline to --master; with --rest-url
# it submits one uber jar through Spark's REST endpoint instead (Dataproc, standalone clusters). The Python
# work runs in SDK harness containers: --image is a Beam SDK image with bert_jax installed (see launch/README.md);
# without one, every executor needs bert_jax installed and Beam's SDK boot binary at $BEAM_BOOT (default
# /opt/apache/beam/boot, as in the SDK image) to start PROCESS workers.
# Paths (corpus, output, vocabulary) must be readable by every executor: GCS, HDFS via gcsfs/tf.io.gfile, or a
# shared mount. --dry-run prints the command and prepare's worker estimate and runs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
master=""; image=""; rest=""; jar=""; dry=0
while [ $# -gt 0 ]; do
  case "$1" in
    --master=*) master=${1#*=} ;;
    --image=*) image=${1#*=} ;;
    --rest-url=*) rest=${1#*=} ;;
    --job-server-jar=*) jar=${1#*=} ;;
    --dry-run) dry=1 ;;
    --) shift; break ;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
  shift
done
[ $# -gt 0 ] || { echo "need prepare flags after --, e.g. -- --corpus=... --output_dir=... --vocab_file=..." >&2; exit 2; }
[ -n "$master" ] || [ "$dry" = 1 ] || { echo "--master is required (or --dry-run to see the command)" >&2; exit 2; }
PYTHON=${PYTHON:-python}
run_flags=()  # the prepare flags minus the planning ones (--dry_run's --corpus_bytes, --target_hours)
for a in "$@"; do
  case "$a" in --corpus_bytes=*|--target_hours=*|--dry_run|--nodry_run) ;; *) run_flags+=("$a") ;; esac
done
cmd=("$PYTHON" -m bert_jax.data.prepare --runner=SparkRunner --spark_master_url="${master:-spark://MASTER:7077}"
     --spark_version=3)
if [ -n "$image" ]; then
  cmd+=(--environment_type=DOCKER --environment_config="$image")
else
  cmd+=(--environment_type=PROCESS "--environment_config={\"command\": \"${BEAM_BOOT:-/opt/apache/beam/boot}\"}")
fi
[ -z "$rest" ] || cmd+=(--spark_submit_uber_jar --spark_rest_url="$rest")
[ -z "$jar" ] || cmd+=(--spark_job_server_jar="$jar")
cmd+=("${run_flags[@]}")
if [ "$dry" = 1 ]; then
  "$PYTHON" -m bert_jax.data.prepare --dry_run "$@" | sed -n '1,3p'
  echo "# Spark command:"
  printf '%q ' "${cmd[@]}"; echo
  exit 0
fi
exec "${cmd[@]}"
