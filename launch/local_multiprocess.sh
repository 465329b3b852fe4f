#!/usr/bin/env bash
# Real multi-controller training on one machine: N processes joined by jax.distributed on 127.0.0.1,
# CPU collectives (gloo), M simulated CPU devices each (added to any XLA_FLAGS you set). The same code path
# as a TPU pod or GPU cluster.
#
#   launch/local_multiprocess.sh NUM_PROCESSES DEVICES_PER_PROCESS -- [train flags...]
#   launch/local_multiprocess.sh 2 4 -- --config=tiny --workdir=runs/tiny-mp
#
# Process 0's output goes to the terminal; every process's also to $LOG_DIR/process_i.log (default
# /tmp/bert_jax_mp.<pid>). A SIGTERM to this script reaches every process, which save at one step and exit 0, as
# a scheduler's SIGTERM does on a cluster. Exits non-zero if any process fails.
set -euo pipefail -o pipefail
if [ $# -lt 3 ] || [ "$3" != "--" ]; then
  echo "usage: $0 NUM_PROCESSES DEVICES_PER_PROCESS -- [train flags...]" >&2
  exit 2
fi
num=$1; devices=$2; shift 3
python=${PYTHON:-python}
port=${PORT:-$("$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
log_dir=${LOG_DIR:-/tmp/bert_jax_mp.$$}
mkdir -p "$log_dir"
pids=()
for ((i = 0; i < num; i++)); do
  run=(env JAX_COORDINATOR_ADDRESS="127.0.0.1:$port" JAX_NUM_PROCESSES="$num" JAX_PROCESS_ID="$i"
       JAX_PLATFORMS=cpu XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$devices"
       "$python" -m bert_jax.train "$@")
  if [ "$i" -eq 0 ]; then  # $! must be the trainer's pid, not tee's, for the signal to reach it
    # tee ignores SIGTERM/SIGINT: a signal to the whole process group must not cut process 0's output
    "${run[@]}" > >(trap '' TERM INT; exec tee "$log_dir/process_0.log") 2>&1 &
  else
    "${run[@]}" > "$log_dir/process_$i.log" 2>&1 &
  fi
  pids+=($!)
done
trap 'kill -TERM "${pids[@]}" 2>/dev/null || true' TERM INT
status=0
for i in "${!pids[@]}"; do
  while :; do  # a trapped signal interrupts wait (status > 128) while the process is still saving
    rc=0
    wait "${pids[$i]}" || rc=$?
    if [ "$rc" -gt 128 ] && kill -0 "${pids[$i]}" 2>/dev/null; then continue; fi
    break
  done
  if [ "$rc" -ne 0 ]; then
    echo "process $i failed (log: $log_dir/process_$i.log)" >&2
    status=1
  fi
done
exit $status
