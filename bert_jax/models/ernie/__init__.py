"""ERNIE 1.0 (Sun et al. 2019, "ERNIE: Enhanced Representation through Knowledge Integration"): BERT's
architecture (post-LN, learned positions, two token types, pooler, MLM + NSP heads), trained with knowledge
masking (phrase- and entity-level units, data.masking='knowledge'), and, as ERNIE 2.0/3.0 and HF's ErnieModel
have, optional task-type embeddings added to the embedding sum before its LayerNorm (task_type_vocab_size > 0,
HF `use_task_id`). Our model feeds task id 0 on every token (HF's default when no task_type_ids are given);
the other rows are carried through import and export untouched, for HF fine-tuning that passes task ids.

ERNIE 1.0's released Chinese model uses ReLU in its FFN and Paddle's LayerNorm eps 1e-5 (configs/ernie_base.py sets
both; an imported checkpoint brings its own from config.json).
"""

import dataclasses
from typing import ClassVar

from bert_jax.models import family
from bert_jax.models.config import EncoderConfig
from bert_jax.models.ernie import hf_names

HF_DEFAULT_TASK_TYPES = 3  # ErnieConfig's task_type_vocab_size default, written when the table is off


@dataclasses.dataclass(frozen=True)
class ErnieConfig(EncoderConfig):
  family: ClassVar[str] = "ernie"
  has_task_types: ClassVar[bool] = True

  def __post_init__(self):
    super().__post_init__()
    if self.embedding_size or self.layer_sharing != "none" or self.position_offset:
      raise ValueError("ERNIE has no factorized embeddings, layer sharing or position offset "
                       "(use model.family='albert' or 'roberta')")
    if self.position_encoding != "absolute":
      raise ValueError(f"ERNIE learns absolute positions (HF ErnieModel), got position_encoding "
                       f"{self.position_encoding!r}; relative positions are model.family='nezha'")
    if not self.type_vocab_size or not self.use_pooler:
      raise ValueError("ERNIE's HF classes always have token-type embeddings and a pooler: type_vocab_size must be "
                       f">= 1 (got {self.type_vocab_size}) and use_pooler True (got {self.use_pooler})")


def hf_config(config: ErnieConfig) -> dict:
  return {"model_type": "ernie", "pad_token_id": 0, "use_task_id": bool(config.task_type_vocab_size),
          "task_type_vocab_size": config.task_type_vocab_size or HF_DEFAULT_TASK_TYPES,
          **family.hf_common_config(config)}


def config_from_hf(hf, **overrides) -> ErnieConfig:
  fields = family.common_fields_from_hf(hf, ErnieConfig())
  if hf.get("use_task_id", False):
    fields["task_type_vocab_size"] = hf.get("task_type_vocab_size", HF_DEFAULT_TASK_TYPES)
  return ErnieConfig(**{**fields, **overrides})


FAMILY = family.Family(
    name="ernie", config_cls=ErnieConfig, hf_model_type="ernie", name_table=hf_names.name_table,
    hf_architectures={("mlm", "nsp", "pooler"): "ErnieForPreTraining", ("mlm",): "ErnieForMaskedLM",
                      ("pooler",): "ErnieModel", (): "ErnieModel"},
    hf_config=hf_config, config_from_hf=config_from_hf, vocab_kinds=("wordpiece", "sentencepiece"),
    tied_hf_keys=hf_names.TIED_HF_KEYS, ignored_hf_keys=hf_names.IGNORED_HF_KEYS)
