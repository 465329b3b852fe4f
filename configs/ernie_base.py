"""ERNIE 1.0 base (Sun et al. 2019): BERT-base's architecture trained with knowledge masking, i.e. phrases and named
entities masked as whole units, mixed with BERT's token-level masking.

What we keep: the 12-layer/768 trunk, the 18000-piece vocabulary size and 513-position table of the Chinese release,
MLM with phrase- and entity-level masking (data.masking='knowledge', levels mixed per instance by data.knowledge_mix's
default), and NSP (ERNIE 1.0's pretraining code trains a next-sentence head beside MLM).
What we leave out: the dialogue language model (DLM) on multi-turn Baidu Tieba threads, which needs query-response
data we do not prepare; Baidu's in-house phrase chunker and entity linker (bring an entity list as data.entity_file;
phrases come from data/knowledge.py's chunker over data.segmenter's words for Chinese). The FFN activation (ReLU)
and LayerNorm eps (1e-5, Paddle's default) are the released model's. The paper gives no optimizer settings, so the
optimizer and schedule are BERT-base's (configs/base.py).
"""

from configs import common


def get_config():
  c = common.get_config()
  c.model.family = "ernie"              # BERT's trunk and heads under HF ErnieForPreTraining names
  c.model.size = "base"                 # 12 layers, 768 hidden, 12 heads
  c.model.vocab_size = 18000            # ERNIE 1.0's Chinese WordPiece vocabulary
  c.model.max_position_embeddings = 513  # as the released ERNIE 1.0 (positions 0..512)
  c.model.task_type_vocab_size = 0      # ERNIE 1.0 has no task types (ERNIE 2.0/3.0: 3, with task id 0 here)
  c.model.hidden_act = "relu"           # the released ERNIE 1.0's FFN activation
  c.model.layer_norm_eps = 1e-5         # Paddle's LayerNorm default, which ERNIE 1.0 was trained with
  c.data.vocab_size = 18000             # when no data.vocab_file is given: a SentencePiece of this size is trained
  c.data.masking = "knowledge"          # phrase- and entity-level units mixed with token-level masking
  c.data.entity_file = ""               # entity list, one per line (ERNIE used Baidu's entity linker; bring your own)
  c.data.segmenter = "jieba"            # Chinese word boundaries for phrase units (pip install 'bert-jax[chinese]')
  c.data.mode = "nsp"                   # sentence pairs for the NSP head
  c.data.max_seq_length = 128
  c.data.max_predictions_per_seq = 20
  c.train.objective = "mlm_nsp"         # MLM + NSP (no DLM)
  c.train.steps = 1000000               # BERT-base's schedule: the paper gives none
  c.train.batch_size = 256
  c.optim.peak_learning_rate = 1e-4
  c.optim.warmup_steps = 10000
  c.lock()
  return c
