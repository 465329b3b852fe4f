"""CPU demo of ELECTRA on the offline pydocs corpus: a 2-layer, 128-hidden discriminator (BERT tiny's trunk) and
a 32-hidden generator sharing its embeddings, full sentences, dynamic masking."""

from configs import common, electra_small


def get_config():
  c = common.cpu_demo(electra_small.get_config())  # 2 layers, 128 hidden; pydocs; SentencePiece of 8000
  c.model.embedding_size = 0            # E = H = 128: no projection at this size
  c.data.lower_case = False             # as the BERT tiny demo, so the two compare
  c.data.max_predictions_per_seq = 20
  return c
