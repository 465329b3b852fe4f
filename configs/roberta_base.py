"""RoBERTa-base (Liu et al. 2019): MLM only, FULL-SENTENCES packing, dynamic masking, byte-level BPE,
batch 8k in the paper; here fairseq's own base recipe at batch 2k (examples/roberta/config/pretraining/base.yaml:
125k steps, 10k warmup, peak LR 5e-4), Adam b2 0.98."""

from configs import common


def get_config():
  c = common.get_config()
  c.model.family = "roberta"            # positions offset by 2, one token type, no pooler, LN eps 1e-5
  c.model.size = "base"                 # 12 layers, 768 hidden, 12 heads (~125M params)
  c.model.vocab_size = 50265            # GPT-2's byte-level BPE size as in RoBERTa
  c.model.max_position_embeddings = 514  # 512 tokens + padding_idx + 1
  c.data.vocab_type = "bpe"             # byte-level BPE trained with HF tokenizers when no vocab_file
  c.data.vocab_size = 50265
  c.data.mode = "full_sentences"        # RoBERTa FULL-SENTENCES packing, no NSP
  c.data.dupe_factor = 1                # masks come from dynamic masking instead
  c.data.dynamic_masking = True         # re-mask every epoch
  c.data.max_seq_length = 512
  c.data.max_predictions_per_seq = 80
  c.train.objective = "mlm"             # no NSP
  c.train.batch_size = 2048
  c.train.steps = 125000
  c.optim.peak_learning_rate = 5e-4     # fairseq's base.yaml at batch 2048 (the paper's 6e-4 is for batch 8k)
  c.optim.warmup_steps = 10000
  c.optim.b2 = 0.98
  c.optim.param_rules = ".*:decay"      # fairseq decays every parameter, biases and LayerNorm too
  c.optim.eps = 1e-6
  c.optim.clip_norm = 0.0               # no gradient clipping (the paper's Table 9; fairseq's recipe: --clip-norm 0.0)
  c.lock()
  return c
