"""CPU demo of ALBERT on the offline pydocs corpus: 2 shared layers, E=64, SOP and n-gram masking."""

from configs import albert_base, common


def get_config():
  c = common.cpu_demo(albert_base.get_config())  # 2 layers (one shared block), 128 hidden; pydocs
  c.model.embedding_size = 64           # factorized: 8000 x 64 embeddings projected to 128
  c.data.lower_case = False             # as the BERT tiny demo, so the two compare
  c.data.whole_word_masking = False     # token n-grams, so its MLM accuracy compares with BERT tiny's token masking
  c.optim.name = "adamw"                # LAMB pays off at large batches
  c.data.dupe_factor = 5                # as the BERT tiny demo (albert_base's 40 copies would take minutes to prepare)
  return c
