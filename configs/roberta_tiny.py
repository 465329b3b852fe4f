"""CPU demo of RoBERTa on the offline pydocs corpus: byte-level BPE, full sentences, dynamic masking, MLM only."""

from configs import common, roberta_base


def get_config():
  c = common.cpu_demo(roberta_base.get_config())  # 2 layers, 128 hidden; pydocs; BPE of 8000
  c.data.dupe_factor = 1                # dynamic masking re-masks every epoch
  c.optim.clip_norm = 1.0               # the CPU demos clip as BERT does (the README's tiny figures were made so)
  return c
