"""Prints a run's eval curve and timing from WORKDIR/metrics.jsonl, with whatever loss/accuracy fields its
objective logs (mlm_*, nsp_*, sop_*, ...).

  python bench/curve.py runs/tiny
"""
import json
import os
import sys


def main(workdir):
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  evals = [l for l in lines if l.get("split") == "eval"]
  train = [l for l in lines if l.get("split") != "eval"]
  fields = [k for k in evals[0] if k.endswith(("_loss", "_accuracy"))] if evals else []
  print("| step | " + " | ".join(f"eval {f}" for f in fields) + " |")
  print("|---:|" + "---:|" * len(fields))
  for e in evals:
    print(f"| {e['step']} | " + " | ".join(f"{e[f]:.4f}" for f in fields) + " |")
  rates = [t["seq_per_sec"] for t in train if t.get("seq_per_sec")]
  if rates:
    print(f"\ntrain seq/s: median {sorted(rates)[len(rates) // 2]:.1f} over {len(rates)} log lines")


if __name__ == "__main__":
  main(sys.argv[1])
