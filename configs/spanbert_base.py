"""SpanBERT-base (Joshi et al. 2020): BERT-base's architecture trained with span masking and the span boundary
objective (train.objective='mlm_sbo'), on single contiguous segments of up to 512 tokens with no NSP.

The recipe is the paper's (and facebookresearch/SpanBERT's pretraining command): AdamW, lr 1e-4 with 10k warmup and
linear decay, batch 256 x 512 tokens, 2.4M steps, epsilon 1e-8, weight decay 0.01, clipping at 1.0, no short
sequences, a new mask every epoch. The paper uses BERT's cased WordPiece vocabulary: pass it as data.vocab_file.
"""

from configs import common


def get_config():
  c = common.get_config()
  c.model.size = "base"                 # 12 layers, 768 hidden, 12 heads, as BERT-base
  c.model.vocab_size = 28996            # BERT's cased WordPiece vocabulary (SpanBERT is cased)
  c.data.vocab_size = 28996             # when a vocabulary is trained instead
  c.data.lower_case = False             # cased
  # Single contiguous segments, no NSP: full_sentences is the mode without a sentence task. It packs sentences
  # across document boundaries (with a [SEP] between documents); the reference fills each block from one document.
  c.data.mode = "full_sentences"
  c.data.masking = "span"               # span masking: whole-word spans placed until 15% of tokens are masked
  c.data.span_geometric_p = 0.2         # span lengths in words ~ Geometric(0.2) (mean 3.8 after clipping)...
  c.data.max_span_length = 10           # ...clipped at 10 words
  c.data.dynamic_masking = True         # a new mask every epoch (the paper; BERT kept 10 fixed masks)
  c.data.dupe_factor = 1                # masks come from dynamic masking instead
  c.data.short_seq_prob = 0.0           # no shorter sequences (the paper drops BERT's 10%)
  c.data.max_seq_length = 512           # all 2.4M steps at 512 (no 128-token phase)
  c.data.max_predictions_per_seq = 80   # 15% of 510 tokens is 77
  c.train.objective = "mlm_sbo"         # MLM + span boundary objective, summed
  c.train.steps = 2400000
  c.train.batch_size = 256              # global, sequences of 512 tokens
  c.optim.name = "adamw"
  c.optim.peak_learning_rate = 1e-4
  c.optim.warmup_steps = 10000
  c.optim.decay = "linear"              # to 0 at train.steps (the reference decays to 1e-9)
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.param_rules = ".*:decay"      # SpanBERT was trained in fairseq, which decays every parameter, biases and LayerNorm too
  c.optim.eps = 1e-8                    # the reference's --adam-eps
  c.optim.weight_decay = 0.01
  c.optim.clip_norm = 1.0
  c.lock()
  return c
