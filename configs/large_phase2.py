"""BERT-large phase 2: seq 512 for the last 10% of steps, from phase 1's params.

  python -m bert_jax.train --config=large_phase2 --workdir=runs/large_p2 \\
      --config.checkpoint.init_checkpoint=runs/large_p1 --config.data.train_files=...
"""

from configs import large


def get_config():
  c = large.get_config()
  c.unlock()
  c.data.max_seq_length = 512
  c.data.max_predictions_per_seq = 80
  c.train.steps = 100000                # the remaining 10%
  c.optim.warmup_steps = 1000           # a short re-warmup: the optimizer state starts fresh
  c.lock()
  return c
