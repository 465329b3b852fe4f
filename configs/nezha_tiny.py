"""CPU demo of NEZHA on the offline pydocs corpus: BERT tiny's trunk (2 layers, 128 hidden, 2 heads of 64) with
relative sinusoidal positions, MLM + NSP. English text, so whole-word masking needs no segmenter."""

from configs import common, nezha_base


def get_config():
  c = common.cpu_demo(nezha_base.get_config())  # 2 layers, 128 hidden; pydocs; SentencePiece of 8000
  c.data.vocab_type = "sentencepiece"   # pydocs is English: the demo's SentencePiece of 8000
  c.data.segmenter = ""                 # English words come from the vocabulary's word starts, not jieba
  c.data.lower_case = False             # as the BERT tiny demo, so the two compare
  c.optim.name = "adamw"                # LAMB pays off at large batches
  c.optim.decay = "linear"
  return c
