"""ELECTRA-Base (Clark et al. 2020): BERT-base's discriminator (12 layers, 768 hidden, embeddings 768: no
projection, ~110M params) with a generator of 1/3 its size (256 hidden, 4 heads, FFN 1024) sharing the embeddings.

The paper's Table 6: seq 512, batch 256, Adam lr 2e-4 with 10k warmup and linear decay over 766k steps,
15% masking, loss = MLM + 50 x RTD.
"""

from configs import common, electra_small


def get_config():
  c = electra_small.electra_recipe(common.get_config(), 512, 79, 1 / 3)  # paper: generator 1/3 for Base
  c.model.size = "base"                 # 12 layers, 768 hidden, 12 heads
  c.model.embedding_size = 0            # E = H = 768: no embeddings_project
  c.train.batch_size = 256
  c.train.steps = 766000
  c.optim.peak_learning_rate = 2e-4
  c.lock()
  return c
