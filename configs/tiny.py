"""CPU demo: a tiny BERT on the offline pydocs corpus; a few minutes on 2 cores."""

from configs import common


def get_config():
  c = common.cpu_demo(common.get_config())  # 2 layers, 128 hidden; pydocs; 1,500 steps at batch 32
  c.lock()
  return c
