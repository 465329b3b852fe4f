"""CPU demo of ERNIE on the offline pydocs corpus: BERT tiny's trunk under ERNIE's names, knowledge masking with
the entities of Python's documentation (configs/ernie_pydocs_entities.txt) and English phrases, MLM + NSP."""

import os

from configs import common, ernie_base

ENTITY_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ernie_pydocs_entities.txt")


def get_config():
  c = common.cpu_demo(ernie_base.get_config())  # 2 layers, 128 hidden; pydocs; SentencePiece of 8000
  c.model.max_position_embeddings = 512  # as the other tiny demos
  c.data.lower_case = False             # as the BERT tiny demo, so the two compare
  c.data.entity_file = ENTITY_FILE      # standards, stdlib names, exceptions, classes and people the docs cite
  c.data.segmenter = ""                 # English: phrases from the chunker, no word segmenter
  return c
