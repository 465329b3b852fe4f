"""metrics.jsonl and TensorBoard after a resume: each step once, with the resumed run's values."""

import json
import os
import time

from tensorboard.backend.event_processing import event_accumulator

from bert_jax.core import metrics


def _run(workdir, start, steps, offset):
  writer = metrics.MetricsWriter(str(workdir))
  dropped = writer.resume_from(start)
  for step in steps:
    writer.write({"step": step, "loss": offset + step})
  writer.close()
  return dropped


def test_resume_keeps_one_line_and_one_scalar_per_step(tmp_path):
  assert _run(tmp_path, 0, range(1, 9), 0.0) == 0
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 9, "lo')  # torn by a kill
  time.sleep(1.1)  # event files are named by the second they were opened in
  # Resumed from a checkpoint at step 5: steps 6-8 and the torn line go, then 6-10 are written again.
  assert _run(tmp_path, 5, range(6, 11), 100.0) == 4
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert [(l["step"], l["loss"]) for l in lines] == [(s, float(s) if s <= 5 else 100.0 + s) for s in range(1, 11)]
  events = event_accumulator.EventAccumulator(os.path.join(tmp_path, "tensorboard"))
  events.Reload()
  assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(l["step"], l["loss"]) for l in lines]
