"""ELECTRA-Large (Clark et al. 2020): 24 layers, 1024 hidden, 16 heads, embeddings 1024 (~335M params), a
generator of 1/4 its size (256 hidden, 4 heads).

The paper's Table 6: seq 512, batch 2048, Adam lr 2e-4 with 10k warmup and linear decay over 400k steps,
25% masking, loss = MLM + 50 x RTD.
"""

from configs import electra_base, electra_small


def get_config():
  c = electra_base.get_config()
  c.model.size = "large"                # 24 layers, 1024 hidden, 16 heads
  c.data.masked_lm_prob = 0.25          # ELECTRA-Large masks 25%
  c.data.max_predictions_per_seq = 130  # int((0.25 + 0.005) x 512)
  c.train.batch_size = 2048
  c.train.steps = 400000
  c.electra = electra_small.electra_section(0.25)  # paper: generator 1/4 of the discriminator for Large
  return c
