"""CPU demo: a tiny BERT on the offline pydocs corpus; a few minutes on 2 cores."""

from configs import common


def get_config():
  c = common.get_config()
  c.model.size = "tiny"                 # 2 layers, 128 hidden, 2 heads
  c.model.vocab_size = 8000             # the SentencePiece vocabulary trained on pydocs
  c.model.dtype = "float32"             # CPUs have no fast bf16 matmul
  c.model.scan_layers = False
  c.model.attention_impl = "xla"
  c.data.corpus = "pydocs"
  c.data.vocab_size = 8000
  c.data.max_seq_length = 128
  c.data.max_predictions_per_seq = 20
  c.data.eval_fraction = 0.05
  c.train.steps = 1500
  c.train.batch_size = 32
  c.train.log_every = 100
  c.train.eval_every = 500
  c.train.eval_batches = 10
  c.optim.peak_learning_rate = 1e-3
  c.optim.warmup_steps = 200
  c.checkpoint.every_steps = 500
  c.lock()
  return c
