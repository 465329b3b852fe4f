"""Where a train step's op time goes, by model component, from a profile plus the optimized HLO.

  XLA_FLAGS="--xla_dump_to=/tmp/hlo --xla_dump_hlo_as_text" python bench/train_bench.py --config=mini \
      --steps=5 --profile_dir=/tmp/prof
  python bench/op_breakdown.py /tmp/prof /tmp/hlo --steps=3

Op names in a trace are fusion names (`ynn_fusion.148`); the HLO dump says which model code each
fusion came from (its op_name metadata and that of the ops fused into it). Each op's time is given
to the first component whose marker appears there, and split into matmul kernels (`ynn_fusion`,
`dot`, cuBLAS/`gemm`) and everything else. Times are summed over all threads that ran ops, then
divided by --steps (bench/train_bench.py traces 3 steps).
"""

import collections
import glob
import os
import re
import sys

import trace_summary  # bench/, beside this script

# (marker in op_name metadata, component), first match wins: dropout before the layer it sits in.
COMPONENTS = [
    ("threefry", "dropout"), ("Dropout", "dropout"), ("_bernoulli", "dropout"), ("random_bits", "dropout"),
    ("bnts", "attention scores/softmax/context"), ("softmax", "attention scores/softmax/context"),
    ("layer_norm", "layer norm"), ("gelu", "gelu"), ("erf", "gelu"),
    ("attend", "MLM decoder (tied embedding)"), ("log_softmax", "loss"),
    ("adam", "optimizer"), ("scale_by", "optimizer"), ("clip", "optimizer"),
    ("embeddings", "embeddings"), ("dot_general", "dense layers"), ("add_any", "gradient sums"),
]
MATMUL_PREFIXES = ("ynn_fusion", "dot", "gemm", "cublas", "nvjet", "custom-call")
SKIP_PREFIXES = ("ThunkExecutor", "SlinkyThreadPool", "end:")


def _hlo_text(hlo_dir: str) -> str:
  paths = sorted(glob.glob(os.path.join(hlo_dir, "*jit_train_step*after_optimizations.txt")))
  paths = [p for p in paths if "buffer-assignment" not in p]
  if not paths:
    sys.exit(f"no *jit_train_step*after_optimizations.txt under {hlo_dir}: run with XLA_FLAGS=--xla_dump_to=...")
  with open(paths[-1]) as f:
    return f.read()


def component_of_op(hlo: str):
  """A function: op (instruction) name -> component, from op_name metadata in the HLO text."""
  own = {}
  for m in re.finditer(r'^\s+%([\w.\-]+) = [^\n]*?(?:op_name="([^"]*)")?[^\n]*$', hlo, re.M):
    own.setdefault(m.group(1), m.group(2) or "")
  called = dict(re.findall(r'^\s+%([\w.\-]+) = [^\n]*?calls=%([\w.\-]+)', hlo, re.M))
  bodies = {m.group(1): m.group(2) for m in re.finditer(r'^%([\w.\-]+) [^\n]*\{\n(.*?)\n\}', hlo, re.M | re.S)}

  def component(op: str) -> str:
    text = own.get(op, "") + " " + " ".join(re.findall(r'op_name="([^"]*)"', bodies.get(called.get(op, ""), "")))
    return next((name for marker, name in COMPONENTS if marker in text), "other")
  return component


def breakdown(profile_dir: str, hlo_dir: str, steps: int) -> list[tuple[str, str, float]]:
  """[(matmul|other, component, ms per step)], largest first."""
  events, _, thread_names = trace_summary.load_trace(trace_summary.find_trace(profile_dir))
  component = component_of_op(_hlo_text(hlo_dir))
  totals = collections.Counter()
  for e in events:
    name = e.get("name", "")
    if e.get("ph") != "X" or name.startswith(SKIP_PREFIXES) or name.startswith("$"):
      continue
    if ".py" in thread_names.get((e["pid"], e.get("tid")), ""):  # the Python thread: dispatch, not ops
      continue
    kind = "matmul" if name.lower().startswith(MATMUL_PREFIXES) else "other"
    totals[(kind, component(name))] += float(e.get("dur", 0.0)) / 1e3 / steps
  return [(kind, comp, ms) for (kind, comp), ms in totals.most_common()]


def main(argv):
  args = [a for a in argv[1:] if not a.startswith("--")]
  steps = next((int(a.split("=")[1]) for a in argv[1:] if a.startswith("--steps=")), 3)
  if len(args) != 2:
    sys.exit("usage: python bench/op_breakdown.py PROFILE_DIR HLO_DUMP_DIR [--steps=3]")
  rows = breakdown(args[0], args[1], steps)
  total = sum(ms for *_, ms in rows)
  print(f"op time summed over threads: {total:.1f} ms per step")
  for kind, comp, ms in rows:
    print(f"{ms:9.1f} ms {100 * ms / total:5.1f}%  {kind:6s}  {comp}")


if __name__ == "__main__":
  main(sys.argv)
