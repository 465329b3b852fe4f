"""RoBERTa-large (Liu et al. 2019): 24 layers, 1024 hidden, 16 heads (~355M params); the paper's Table 9 recipe:
batch 8k, 500k steps, 30k warmup, peak LR 4e-4."""

from configs import roberta_base


def get_config():
  c = roberta_base.get_config()
  c.model.size = "large"                # 24 layers, 1024 hidden, 16 heads
  c.optim.peak_learning_rate = 4e-4     # the paper's large LR
  c.optim.warmup_steps = 30000
  c.train.steps = 500000
  c.train.batch_size = 8192             # the paper's Table 9 (8k); train.microbatches where memory is short
  return c
