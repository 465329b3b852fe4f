"""BERT (Devlin et al. 2018): the reference family. Post-LN, erf GELU, learned positions, two token types."""

import dataclasses
from typing import ClassVar

from bert_jax.models import family, pretraining, span_boundary_head
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


def name_table(config):
  """HF names, plus SpanBERT's SBO head under our own names in its side file (no HF class has one)."""
  return {**hf_names.name_table(config), span_boundary_head.SECTION: span_boundary_head.SIDE_ROWS}


FAMILY = family.Family(
    name="bert", config_cls=BertConfig, hf_model_type="bert", name_table=name_table,
    hf_architectures={("mlm", "nsp", "pooler"): "BertForPreTraining", ("mlm",): "BertForMaskedLM",
                      ("pooler",): "BertModel", (): "BertModel"},
    hf_config=hf_config, config_from_hf=config_from_hf, vocab_kinds=("wordpiece", "sentencepiece"),
    tied_hf_keys=hf_names.TIED_HF_KEYS, ignored_hf_keys=hf_names.IGNORED_HF_KEYS,
    model=span_boundary_head.with_span_boundary(pretraining.EncoderWithHeads),
    side_files={span_boundary_head.SECTION: span_boundary_head.SIDE_FILE})
