"""BERT-base (12 layers, 768 hidden), the BERT paper's phase 1: seq 128, batch 256, AdamW 1e-4, 10k warmup.

The paper trains 1M steps under one linear decay, 90% at seq 128 and the last 10% at seq 512. Phase 2 is
configs/large_phase2.py at this size, started from this run's checkpoint:
  python -m bert_jax.train --config=large_phase2 --config.model.size=base --workdir=runs/base_p2 \\
      --config.checkpoint.init_checkpoint=runs/base --config.data.corpus=...
"""

from configs import common


def get_config():
  c = common.get_config()
  c.model.size = "base"                 # 12 layers, 768 hidden, 12 heads
  c.model.vocab_size = 30522            # the original uncased WordPiece vocabulary size
  c.data.lower_case = True              # uncased, as google-research/bert's uncased models (do_lower_case=True)
  c.data.max_seq_length = 128
  c.data.max_predictions_per_seq = 20
  c.train.steps = 900000                # the BERT paper's 90% of 1M steps at seq 128 (then 10% at 512: phase 2)
  c.train.batch_size = 256
  c.optim.peak_learning_rate = 1e-4
  c.optim.warmup_steps = 10000
  c.optim.decay_from = "start"          # google-research/bert's schedule: linear decay over all steps from 0
  c.optim.end_learning_rate = 1e-5      # the paper's one decay to 0 at 1M steps is at 1e-5 after 900k; phase 2 goes on
  c.lock()
  return c
