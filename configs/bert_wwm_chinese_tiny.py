"""CPU demo of Chinese whole-word masking (BERT-wwm): BERT tiny's trunk on the offline classical_zh corpus (the
Analects and the Daodejing, shipped in the package), a per-character WordPiece vocabulary trained on it, jieba's
words as the masking units, MLM + NSP. Needs the `chinese` extra (jieba)."""

from configs import bert_wwm_chinese_base, common


def get_config():
  c = common.cpu_demo(bert_wwm_chinese_base.get_config())  # 2 layers, 128 hidden, seq 128, 1500 steps
  c.data.corpus = "classical_zh"        # ~100 passages of classical Chinese (bert_jax/data/texts/)
  c.data.vocab_size = 1024              # its ~470 characters, their '##' forms and [unused] slots
  c.model.vocab_size = 1024
  c.data.dupe_factor = 40               # a small corpus: many masked copies of it
  c.data.eval_fraction = 0.15           # of its 30 documents (four passages each)
  c.train.batch_size = 16
  c.optim.name = "adamw"                # LAMB is for the base recipe's batch of 2,560
  c.optim.peak_learning_rate = 1e-3
  return c
