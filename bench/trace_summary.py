"""Top device ops of a JAX profiler trace (the perfetto JSON that jax.profiler.trace writes).

  python bench/trace_summary.py PROFILE_DIR [--top=25]

Sums the durations of each op name over every process whose name names a device (GPU/TPU streams),
and prints their share of the summed device time, so that the top costs of a step are quotable.
"""

import collections
import glob
import gzip
import json
import os
import sys


def find_trace(profile_dir: str) -> str:
  """The newest perfetto_trace.json.gz under a jax.profiler.trace directory."""
  paths = sorted(glob.glob(os.path.join(profile_dir, "**", "perfetto_trace.json.gz"), recursive=True))
  if not paths:
    sys.exit(f"no perfetto_trace.json.gz under {profile_dir}: was the trace taken with create_perfetto_trace=True?")
  return paths[-1]


def load_trace(trace_path: str):
  """(events, {pid: process name}, {(pid, tid): thread name}) of a perfetto JSON trace."""
  with gzip.open(trace_path) as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  meta = lambda kind: {(e["pid"], e.get("tid")) if kind == "thread_name" else e["pid"]: e.get("args", {}).get("name", "")
                       for e in events if e.get("ph") == "M" and e.get("name") == kind}
  return events, meta("process_name"), meta("thread_name")


def summarize(trace_path: str, top: int = 25) -> dict:
  """Per device thread (a stream, or a derived line such as 'XLA Ops'): summed time and its top ops."""
  events, process_names, thread_names = load_trace(trace_path)
  device_pids = {pid for pid, name in process_names.items() if "/device:" in name and "CPU" not in name.upper()}
  if not device_pids:  # the CPU backend: its ops run on host threads
    device_pids = set(process_names)
  per_thread = collections.defaultdict(collections.Counter)
  counts = collections.defaultdict(collections.Counter)
  for e in events:
    if e.get("ph") == "X" and e.get("pid") in device_pids:
      key = f"{process_names[e['pid']]} / {thread_names.get((e['pid'], e.get('tid')), e.get('tid'))}"
      per_thread[key][e["name"]] += float(e.get("dur", 0.0))
      counts[key][e["name"]] += 1
  threads = []
  for key, totals in sorted(per_thread.items(), key=lambda kv: -sum(kv[1].values())):
    total = sum(totals.values())
    threads.append({"thread": key, "ms": total / 1e3, "top": [
        {"op": name, "ms": us / 1e3, "share": us / total, "count": counts[key][name]}
        for name, us in totals.most_common(top)]})
  return {"trace": trace_path, "processes": sorted(process_names.values()), "threads": threads}


def main(argv):
  if len(argv) < 2:
    sys.exit("usage: python bench/trace_summary.py PROFILE_DIR [--top=N]")
  top = int(argv[2].split("=")[1]) if len(argv) > 2 else 25
  summary = summarize(find_trace(argv[1]), top)
  print(f"{summary['trace']}\nprocesses: {summary['processes']}")
  for thread in summary["threads"][:4]:
    print(f"== {thread['thread']}: {thread['ms']:.1f} ms")
    for r in thread["top"]:
      print(f"{r['ms']:10.2f} ms {100 * r['share']:5.1f}% x{r['count']:<5d} {r['op'][:110]}")


if __name__ == "__main__":
  main(sys.argv)
