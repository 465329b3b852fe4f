"""ALBERT-large (Lan et al. 2019): 24 layers, 1024 hidden, 16 heads (~18M params); ALBERT-base's recipe otherwise."""

from configs import albert_base


def get_config():
  c = albert_base.get_config()
  c.model.size = "large"                 # 24 layers, 1024 hidden, 16 heads (~18M params)
  return c
