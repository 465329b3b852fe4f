"""BERT-large phase 2: seq 512 for the last 10% of steps, from phase 1's params, on the rest of the paper's one
learning-rate line (1e-5 at step 900k, linearly to 0 at 1M). With --config.model.size=base it is BERT-base's phase 2.

  python -m bert_jax.train --config=large_phase2 --workdir=runs/large_p2 \\
      --config.checkpoint.init_checkpoint=runs/large_p1 --config.data.corpus=...

Rows are packed with up to 4 instances (data.pack_instances): at seq 512, 47% of an unpacked row is padding on
real text, 5.5% packed, so a step carries 1.78x the real tokens (bench/RESULTS.md, "Sequence packing"). A corpus
is packed once after preparing; TFRecords given as data.train_files must be packed already
(`python -m bert_jax.data.packing --input_dir=... --max_instances=4`), or set --config.data.pack_instances=0.
"""

from configs import large


def get_config():
  c = large.get_config()
  c.unlock()
  c.data.max_seq_length = 512
  c.data.max_predictions_per_seq = 80
  c.data.pack_instances = 4             # up to 4 instances per row: 1.78x the real tokens per step at seq 512
  c.train.steps = 100000                # the remaining 10%
  c.optim.peak_learning_rate = 1e-5     # the paper's rate at step 900k of 1M (1e-4 decaying linearly to 0)
  c.optim.end_learning_rate = 0.0       # ... reached at the paper's last step
  c.optim.warmup_steps = 1000           # a short re-warmup: the optimizer state starts fresh
  c.lock()
  return c
