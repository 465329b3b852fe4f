"""NEZHA-base (Wei et al. 2019): BERT-base's trunk (12 layers, 768 hidden, 12 heads) with functional relative
positions (fixed sinusoids, distances clipped at 64) instead of a position table, BERT's Chinese vocabulary (21128),
MLM + NSP with whole-word masking, mixed precision and LAMB.

The report gives its optimizer settings only loosely; the schedule below is ALBERT's published LAMB recipe for a
BERT-base-sized run (batch 4096, lr 0.00176, 125k steps, configs/albert_base.py), this project's choice.
"""

from configs import common


def get_config():
  c = common.get_config()
  c.model.family = "nezha"              # relative positions in every attention layer; no position table
  c.model.size = "base"                 # 12 layers, 768 hidden, 12 heads
  c.model.vocab_size = 21128            # BERT-base-Chinese's WordPiece (pass it as data.vocab_file)
  c.model.max_relative_position = 64    # the released NEZHA models' clipping distance
  c.model.dtype = "bfloat16"            # mixed precision (the report used fp16 with fp32 master weights)
  c.data.vocab_type = "wordpiece"       # without data.vocab_file: a WordPiece vocab.txt, one token per Chinese character
  c.data.vocab_size = 21128             # (or pass bert-base-chinese's vocab.txt as data.vocab_file)
  c.data.lower_case = True              # bert-base-chinese lower-cases
  c.data.whole_word_masking = True      # NEZHA masks whole words ...
  c.data.segmenter = "jieba"            # ... as jieba cuts them, as the report did (pip install 'bert-jax[chinese]')
  c.data.masking = "token"              # BERT's masking over those word units (15%, 80/10/10)
  c.data.mode = "nsp"                   # with next-sentence prediction
  c.data.max_seq_length = 128           # as BERT's phase 1 (the relative table has no length limit of its own)
  c.data.max_predictions_per_seq = 20
  c.train.objective = "mlm_nsp"         # MLM + NSP heads, as BERT
  c.train.batch_size = 4096             # global; train.microbatches where memory is short
  c.train.steps = 125000                # ALBERT's LAMB schedule (see the docstring)
  c.optim.name = "lamb"                 # the report trains with LAMB
  c.optim.peak_learning_rate = 0.00176  # LAMB at batch 4096 (ALBERT's)
  c.optim.warmup_steps = 3125
  c.optim.decay = "polynomial"          # power 1: linear to 0
  c.optim.power = 1.0
  c.optim.weight_decay = 0.01
  c.lock()
  return c
