"""ELECTRA-Small (Clark et al. 2020): 12 layers, 256 hidden, 4 heads, FFN 1024, embeddings 128 projected to 256
(~14M params), a generator of 1/4 the hidden size sharing the embeddings, loss = MLM + 50 x RTD.

The google-research/electra recipe: seq 128, batch 128, Adam lr 5e-4 with 10k warmup and linear decay over 1M
steps, weight decay 0.01, 15% masking, BERT's uncased 30522 WordPiece vocabulary.
"""

import ml_collections

from configs import common


def electra_section(generator_hidden_fraction: float) -> ml_collections.ConfigDict:
  e = ml_collections.ConfigDict()
  e.generator_hidden_fraction = generator_hidden_fraction  # generator hidden = this x discriminator's (heads of 64, FFN 4x)
  e.rtd_weight = 50.0                   # lambda: loss = generator MLM + lambda x discriminator RTD
  return e


def electra_recipe(c: ml_collections.ConfigDict, max_seq_length: int, max_predictions_per_seq: int,
                   generator_hidden_fraction: float) -> ml_collections.ConfigDict:
  """What every ELECTRA size shares (google-research/electra): the family, BERT's vocabulary, contiguous text
  with dynamic masking, the generator + RTD objective, 10k warmup steps."""
  c.model.family = "electra"            # BERT's trunk + E -> H projection, no pooler; generator + discriminator
  c.model.vocab_size = 30522            # BERT's uncased WordPiece (pass it as data.vocab_file)
  c.data.vocab_size = 30522
  c.data.lower_case = True
  c.data.mode = "full_sentences"        # contiguous text, no sentence task (ELECTRA has no NSP)
  c.data.dupe_factor = 1                # masks come from dynamic masking instead
  c.data.dynamic_masking = True         # re-mask every epoch
  c.data.replacement = "mask:0.85,keep:0.15"  # google-research/electra's generator input: no random tokens
  c.data.max_seq_length = max_seq_length
  c.data.max_predictions_per_seq = max_predictions_per_seq  # int((mask rate + 0.005) x seq), as google-research/electra
  c.train.objective = "electra"         # generator MLM + replaced-token detection
  c.optim.warmup_steps = 10000
  c.optim.decay_from = "start"          # google-research/electra model/optimization.py: linear decay over all steps from 0
  c.electra = electra_section(generator_hidden_fraction)
  return c


def get_config():
  c = electra_recipe(common.get_config(), 128, 19, 0.25)  # paper: generator 1/4 of the discriminator for Small
  c.model.size = "electra_small"        # 12 layers, 256 hidden, 4 heads, FFN 1024
  c.model.embedding_size = 128          # E: V x 128 embeddings (shared with the generator), projected to 256
  c.train.batch_size = 128
  c.train.steps = 1000000
  c.optim.peak_learning_rate = 5e-4
  c.lock()
  return c
