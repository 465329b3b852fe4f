"""BERT's <family>_tiny: the Quick start's CPU demo (configs/tiny.py), under the family naming."""

from configs import tiny


def get_config():
  return tiny.get_config()
