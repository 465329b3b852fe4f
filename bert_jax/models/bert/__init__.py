"""BERT (Devlin et al. 2018): the reference family. Post-LN, erf GELU, learned positions, two token types."""

import dataclasses
from typing import ClassVar

from bert_jax.models import family
from bert_jax.models.bert import hf_names
from bert_jax.models.config import EncoderConfig


@dataclasses.dataclass(frozen=True)
class BertConfig(EncoderConfig):
  family: ClassVar[str] = "bert"

  def __post_init__(self):
    super().__post_init__()
    if self.embedding_size or self.layer_sharing != "none":
      raise ValueError("BERT has no factorized embeddings or layer sharing; use model.family='albert'")


def hf_config(config: BertConfig) -> dict:
  return {"model_type": "bert", "pad_token_id": 0, **family.hf_common_config(config)}


def config_from_hf(hf, **overrides) -> BertConfig:
  return BertConfig(**{**family.common_fields_from_hf(hf, BertConfig()), **overrides})


FAMILY = family.Family(
    name="bert", config_cls=BertConfig, hf_model_type="bert", name_table=hf_names.name_table,
    hf_architectures={("mlm", "nsp", "pooler"): "BertForPreTraining", ("mlm",): "BertForMaskedLM",
                      ("pooler",): "BertModel", (): "BertModel"},
    hf_config=hf_config, config_from_hf=config_from_hf, vocab_kinds=("wordpiece", "sentencepiece"),
    tied_hf_keys=hf_names.TIED_HF_KEYS, ignored_hf_keys=hf_names.IGNORED_HF_KEYS)
