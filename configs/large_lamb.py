"""BERT-large with LAMB at batch 64k/32k (You et al. 2019): seq 128, 7038 steps, then phase 2 at 512."""

from configs import large


def get_config():
  c = large.get_config()
  c.unlock()
  c.optim.name = "lamb"
  c.optim.peak_learning_rate = 6e-3     # LAMB phase 1 at batch 65536
  c.optim.warmup_steps = 2000           # ~28% of the steps, as in the paper
  c.optim.decay = "polynomial"
  c.optim.power = 0.5
  c.optim.weight_decay = 0.01
  c.optim.end_learning_rate = 0.0       # its own schedule to 0 (NVIDIA's PolyWarmUpScheduler), not phase 1 of large's
  c.train.batch_size = 65536            # global; use train.microbatches where memory is short
  c.train.steps = 7038
  c.lock()
  return c
