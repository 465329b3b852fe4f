"""ALBERT-xlarge (Lan et al. 2019): 24 layers, 2048 hidden, 16 heads (~60M params); ALBERT-base's recipe otherwise."""

from configs import albert_base


def get_config():
  c = albert_base.get_config()
  c.model.size = "xlarge"                # 24 layers, 2048 hidden, 16 heads (~60M params)
  return c
