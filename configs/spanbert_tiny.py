"""CPU demo of SpanBERT on the offline pydocs corpus: BERT tiny's trunk, span masking and the span boundary
objective (MLM + SBO), full sentences, no NSP."""

from configs import common, spanbert_base


def get_config():
  c = common.cpu_demo(spanbert_base.get_config())  # 2 layers, 128 hidden; pydocs; SentencePiece of 8000; seq 128
  c.data.lower_case = False             # as the BERT tiny demo, so the two compare
  return c
