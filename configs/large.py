"""BERT-large phase 1 (the BERT paper recipe): seq 128, batch 256, AdamW 1e-4, 10k warmup.

Phase 2 (seq 512) is configs/large_phase2.py, started from this run's checkpoint.
Scan, remat and the dropout PRNG are left at auto: the start-up line says what this platform got
(core/platform_defaults.py: unrolled without remat on an 80 GB GPU at seq 128 x 256).
"""

from configs import common


def get_config():
  c = common.get_config()
  c.model.size = "large"                # 24 layers, 1024 hidden, 16 heads
  c.model.vocab_size = 30522
  c.data.lower_case = True              # uncased, as google-research/bert's uncased models (do_lower_case=True)
  c.data.max_seq_length = 128
  c.data.max_predictions_per_seq = 20
  c.train.steps = 900000                # 90% of 1M steps at seq 128
  c.train.batch_size = 256              # global, sequences
  c.optim.peak_learning_rate = 1e-4
  c.optim.warmup_steps = 10000
  c.optim.decay_from = "start"          # google-research/bert's schedule: linear decay over all steps from 0
  c.optim.end_learning_rate = 1e-5      # the paper's one decay to 0 at 1M steps is at 1e-5 after 900k; phase 2 goes on
  c.lock()
  return c
