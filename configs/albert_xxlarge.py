"""ALBERT-xxlarge (Lan et al. 2019): 12 layers, 4096 hidden, 64 heads, FFN 16384 (~235M params); ALBERT-base's recipe otherwise."""

from configs import albert_base


def get_config():
  c = albert_base.get_config()
  c.model.size = "xxlarge"               # 12 layers, 4096 hidden, 64 heads, FFN 16384 (~235M params)
  return c
