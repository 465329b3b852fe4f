"""BERT-base (12 layers, 768 hidden) with the original recipe's optimizer at batch 256, seq 128."""

from configs import common


def get_config():
  c = common.get_config()
  c.model.size = "base"                 # 12 layers, 768 hidden, 12 heads
  c.model.vocab_size = 30522            # the original uncased WordPiece vocabulary size
  c.data.max_seq_length = 128
  c.data.max_predictions_per_seq = 20
  c.train.steps = 1000000               # the BERT paper's step count (90% at 128, then 512)
  c.train.batch_size = 256
  c.optim.peak_learning_rate = 1e-4
  c.optim.warmup_steps = 10000
  c.optim.decay_from = "start"          # google-research/bert's schedule: linear decay over all steps from 0
  c.lock()
  return c
