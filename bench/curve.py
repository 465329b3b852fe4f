"""Prints a run's eval curve and timing from WORKDIR/metrics.jsonl.

  python bench/curve.py runs/tiny
"""
import json
import os
import sys


def main(workdir):
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  evals = [l for l in lines if l.get("split") == "eval"]
  train = [l for l in lines if l.get("split") != "eval"]
  print("| step | eval MLM loss | eval MLM accuracy | eval NSP accuracy |")
  print("|---:|---:|---:|---:|")
  for e in evals:
    print(f"| {e['step']} | {e['mlm_loss']:.3f} | {e['mlm_accuracy']:.4f} | {e['nsp_accuracy']:.3f} |")
  rates = [t["seq_per_sec"] for t in train if t.get("seq_per_sec")]
  if rates:
    print(f"\ntrain seq/s: median {sorted(rates)[len(rates) // 2]:.1f} over {len(rates)} log lines")


if __name__ == "__main__":
  main(sys.argv[1])
