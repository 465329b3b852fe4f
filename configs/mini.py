"""Mini BERT (4 layers, 256 hidden): a quick real run on one accelerator or a fast CPU."""

from configs import common


def get_config():
  c = common.get_config()
  c.model.size = "mini"                 # 4 layers, 256 hidden, 4 heads
  c.model.vocab_size = 16000            # SentencePiece trained on the corpus
  c.model.scan_layers = False           # 4 layers compile as fast unrolled, and run ~8% faster on CPU
  c.data.corpus = "pydocs"              # replace with text globs or tfds:NAME for real data
  c.data.vocab_size = 16000
  c.train.steps = 20000
  c.train.batch_size = 128
  c.train.eval_every = 1000
  c.optim.peak_learning_rate = 5e-4
  c.optim.warmup_steps = 1000
  c.lock()
  return c
