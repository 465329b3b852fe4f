"""ALBERT-base (Lan et al. 2019): 12 layers sharing one block, 768 hidden, E=128 (~12M params).

The paper's recipe: SOP, n-gram masking (n <= 3 whole words), LAMB at batch 4096 with lr 0.00176 for 125k steps,
seq 512, 20 predictions, a 30k lower-cased SentencePiece vocabulary, no dropout.
"""

from configs import common


def get_config():
  c = common.get_config()
  c.model.family = "albert"             # factorized embeddings, shared layers, SOP head
  c.model.size = "base"                 # 12 layers, 768 hidden, 12 heads
  c.model.embedding_size = 128          # E: embeddings are V x 128, projected to 768
  c.model.layer_sharing = "all"         # one transformer block shared by all 12 layers
  c.model.hidden_act = "gelu_new"       # ALBERT's tanh GELU
  c.model.hidden_dropout = 0.0          # ALBERT trains without dropout
  c.model.attention_dropout = 0.0
  c.model.vocab_size = 30000            # SentencePiece
  c.data.vocab_size = 30000
  c.data.lower_case = True
  c.data.mode = "sop"                   # sentence-order pairs
  c.data.max_ngram = 3                  # n-gram masking, p(n) ~ 1/n
  c.data.whole_word_masking = True      # n-grams of whole words: google-research/albert's do_whole_word_mask=True
  c.data.max_seq_length = 512
  c.data.max_predictions_per_seq = 20
  c.data.dupe_factor = 40               # masked copies of the corpus: google-research/albert's create_pretraining_data default
  c.train.objective = "mlm_sop"
  c.train.batch_size = 4096
  c.train.steps = 125000
  c.optim.name = "lamb"
  c.optim.peak_learning_rate = 0.00176
  c.optim.warmup_steps = 3125
  c.optim.decay_from = "start"          # google-research/albert's schedule: linear decay over all steps from 0
  c.lock()
  return c
