"""ALBERT (Lan et al. 2019): factorized embeddings (E projected to H), cross-layer parameter sharing,
the tanh GELU, sentence-order prediction, and a SentencePiece vocabulary."""

import dataclasses
from typing import ClassVar

from bert_jax.models import family
from bert_jax.models.albert import hf_names
from bert_jax.models.config import EncoderConfig


@dataclasses.dataclass(frozen=True)
class AlbertConfig(EncoderConfig):
  family: ClassVar[str] = "albert"
  embedding_size: int = 128
  layer_sharing: str = "all"
  hidden_act: str = "gelu_new"
  hidden_dropout: float = 0.0     # the ALBERT paper drops dropout
  attention_dropout: float = 0.0

  def __post_init__(self):
    super().__post_init__()
    if not self.embedding_size:
      raise ValueError("ALBERT needs embedding_size > 0 (the factorized embedding width, 128 in the paper)")


def hf_config(config: AlbertConfig) -> dict:
  return {"model_type": "albert", "embedding_size": config.embedding_size,
          "num_hidden_groups": hf_names.num_hidden_groups(config), "inner_group_num": 1,
          "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3, "classifier_dropout_prob": 0.1,
          **family.hf_common_config(config)}


def config_from_hf(hf, **overrides) -> AlbertConfig:
  layers, groups = hf["num_hidden_layers"], hf.get("num_hidden_groups", 1)
  if hf.get("inner_group_num", 1) != 1 or groups not in (1, layers):
    raise ValueError(f"ALBERT with num_hidden_groups={groups}, inner_group_num={hf.get('inner_group_num')} is not "
                     f"supported: bert_jax shares all layers (1 group) or none ({layers} groups of one layer)")
  fields = family.common_fields_from_hf(hf, AlbertConfig())
  fields.update(embedding_size=hf.get("embedding_size", 128), layer_sharing="all" if groups == 1 else "none")
  return AlbertConfig(**{**fields, **overrides})


FAMILY = family.Family(
    name="albert", config_cls=AlbertConfig, hf_model_type="albert", name_table=hf_names.name_table,
    hf_architectures={("mlm", "pooler", "sop"): "AlbertForPreTraining", ("mlm",): "AlbertForMaskedLM",
                      ("pooler",): "AlbertModel", (): "AlbertModel"},
    hf_config=hf_config, config_from_hf=config_from_hf, vocab_kinds=("sentencepiece",),
    tied_hf_keys=hf_names.TIED_HF_KEYS, ignored_hf_keys=hf_names.IGNORED_HF_KEYS)
