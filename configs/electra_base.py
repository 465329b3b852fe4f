"""ELECTRA-Base (Clark et al. 2020): BERT-base's discriminator (12 layers, 768 hidden, embeddings 768: no
projection, ~110M params) with a generator of 1/3 its size (256 hidden, 4 heads, FFN 1024) sharing the embeddings.

The paper's Table 6: seq 512, batch 256, Adam lr 2e-4 with 10k warmup and linear decay over 766k steps,
15% masking, loss = MLM + 50 x RTD.
"""

from configs import common, electra_small


def get_config():
  c = common.get_config()
  c.model.family = "electra"            # BERT's trunk, no pooler; generator + discriminator
  c.model.size = "base"                 # 12 layers, 768 hidden, 12 heads
  c.model.embedding_size = 0            # E = H = 768: no embeddings_project
  c.model.vocab_size = 30522            # BERT's uncased WordPiece (pass it as data.vocab_file)
  c.data.vocab_size = 30522
  c.data.lower_case = True
  c.data.mode = "full_sentences"        # contiguous text, no sentence task (ELECTRA has no NSP)
  c.data.dupe_factor = 1                # masks come from dynamic masking instead
  c.data.dynamic_masking = True         # re-mask every epoch
  c.data.max_seq_length = 512
  c.data.max_predictions_per_seq = 79   # int((0.15 + 0.005) x 512)
  c.train.objective = "electra"
  c.train.batch_size = 256
  c.train.steps = 766000
  c.optim.peak_learning_rate = 2e-4
  c.optim.warmup_steps = 10000
  c.electra = electra_small.electra_section(1 / 3)  # paper: generator 1/3 of the discriminator for Base
  c.lock()
  return c
