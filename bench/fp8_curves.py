"""Does FP8 train like bf16? Loss curves of the train CLI on real text, against the seed-to-seed noise of bf16.

  python bench/fp8_curves.py --config=tiny --steps=300                         # CPU (FP8 emulated): minutes
  python bench/fp8_curves.py --config=base --steps=300 --batch=256 --extra=--config.data.backend=grain  # GPU

Three runs of `python -m bert_jax.train` on the same prepared pydocs data, one after another:
  bf16        model.dtype=bfloat16, train.seed=0
  bf16_seed1  the same with train.seed=1 (another init and dropout stream: what "noise" means here)
  fp8         bf16 with model.fp8=True, train.seed=0
and one JSON line: per logged step the three train losses, the eval losses (the same held-out batches for all
three), and
  eval_fp8_gap, eval_seed_gap  mean |eval loss - bf16's| of fp8 and of bf16_seed1 over the evals after step 0,
  within_noise                 eval_fp8_gap <= eval_seed_gap,
  train_fp8_gap, train_seed_gap  the same over the second half of the logged train losses (train.seed also orders
                               the data, so bf16_seed1 trains on other batches: its train gap includes that).
Each run prepares pydocs in its own workdir with the same seed; the bench fails unless the runs agree on the
vocabulary's pieces and the instance counts, so all three see the same data.
"""

import glob
import hashlib
import json
import os
import subprocess
import sys
import time

from absl import app, flags

flags.DEFINE_string("config", "tiny", "config name in configs/")
flags.DEFINE_integer("steps", 300, "train steps per run")
flags.DEFINE_integer("batch", 32, "global batch")
flags.DEFINE_integer("seq", 128, "sequence length")
flags.DEFINE_string("workdir", "/tmp/bert_jax_fp8_curves", "parent of the three runs' workdirs (replaced)")
flags.DEFINE_multi_string("extra", [], "more --config.* flags for every run")
FLAGS = flags.FLAGS

RUNS = {"bf16": {"train.seed": 0}, "bf16_seed1": {"train.seed": 1}, "fp8": {"train.seed": 0, "model.fp8": True}}


def _train(workdir: str, overrides: dict) -> float:
  args = [sys.executable, "-m", "bert_jax.train", f"--config={FLAGS.config}", f"--workdir={workdir}"]
  args += [f"--config.{k}={v}" for k, v in overrides.items()] + FLAGS.extra
  t0 = time.time()
  # The runs' logs go to stderr, so stdout is the one JSON line.
  subprocess.run(args, check=True, stdout=sys.stderr, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
  return time.time() - t0


def _metrics(workdir: str):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    lines = [json.loads(line) for line in f]
  train = {r["step"]: r["loss"] for r in lines if r.get("split") != "eval"}
  evals = {r["step"]: r["loss"] for r in lines if r.get("split") == "eval"}
  return train, evals


def main(argv):
  del argv
  if os.path.exists(FLAGS.workdir):
    subprocess.run(["rm", "-rf", FLAGS.workdir], check=True)
  common = {"model.dtype": "bfloat16", "train.steps": FLAGS.steps, "train.batch_size": FLAGS.batch,
            "data.max_seq_length": FLAGS.seq, "data.corpus": "pydocs", "train.log_every": max(1, FLAGS.steps // 30),
            "train.eval_every": max(1, FLAGS.steps // 3), "optim.warmup_steps": max(1, FLAGS.steps // 10)}
  seconds, curves, data = {}, {}, {}
  for name, overrides in RUNS.items():
    workdir = os.path.join(FLAGS.workdir, name)
    seconds[name] = _train(workdir, {**common, **overrides})
    curves[name] = _metrics(workdir)
    (manifest,) = glob.glob(os.path.join(workdir, "data", "*", "manifest.json"))
    with open(manifest) as f:
      m = json.load(f)
    with open(os.path.splitext(m["vocab"]["file"])[0] + ".vocab", "rb") as f:  # the pieces (the .model holds paths)
      pieces = hashlib.sha256(f.read()).hexdigest()
    data[name] = (pieces, {split: v["instances"] for split, v in m["splits"].items()})
  if len(set(map(json.dumps, data.values()))) != 1:
    raise SystemExit(f"the runs prepared different data, so their curves do not compare: {data}")
  steps = sorted(curves["bf16"][0])
  late = steps[len(steps) // 2:]
  evals = sorted(s for s in curves["bf16"][1] if s > 0)
  gap = lambda other, split, at: sum(abs(curves[other][split][s] - curves["bf16"][split][s]) for s in at) / len(at)
  result = {"bench": "fp8_curves", "config": FLAGS.config, "steps": FLAGS.steps, "batch": FLAGS.batch,
            "seq": FLAGS.seq, "date": time.strftime("%Y-%m-%d"), "seconds": seconds, "columns": list(RUNS),
            "train_loss": {s: [round(curves[n][0][s], 4) for n in RUNS] for s in steps},
            "eval_loss": {s: [round(curves[n][1][s], 4) for n in RUNS] for s in sorted(curves["bf16"][1])},
            "eval_fp8_gap": gap("fp8", 1, evals), "eval_seed_gap": gap("bf16_seed1", 1, evals),
            "train_fp8_gap": gap("fp8", 0, late), "train_seed_gap": gap("bf16_seed1", 0, late)}
  result["within_noise"] = result["eval_fp8_gap"] <= result["eval_seed_gap"]
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
