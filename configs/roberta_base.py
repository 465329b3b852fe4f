"""RoBERTa-style base: no NSP, full-sentence packing, dynamic masking, larger batch and LR."""

from configs import common


def get_config():
  c = common.get_config()
  c.model.size = "base"
  c.model.vocab_size = 30522
  c.data.mode = "full_sentences"        # RoBERTa FULL-SENTENCES packing
  c.data.dupe_factor = 1                # masks come from dynamic masking instead
  c.data.dynamic_masking = True         # re-mask every epoch
  c.data.max_seq_length = 512
  c.data.max_predictions_per_seq = 80
  c.train.nsp = False
  c.train.batch_size = 2048
  c.train.steps = 125000
  c.optim.peak_learning_rate = 6e-4
  c.optim.warmup_steps = 10000
  c.optim.b2 = 0.98
  c.optim.eps = 1e-6
  c.lock()
  return c
