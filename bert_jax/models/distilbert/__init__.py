"""DistilBERT (Sanh et al. 2019): BERT's post-LN encoder with half the layers, no token-type embeddings and no
pooler, pretrained by distillation from a BERT teacher (objectives/distill.py). HF hard-codes every LayerNorm's
eps to 1e-12 and learns the positions (sinusoidal_pos_embds=False)."""

import dataclasses
from typing import Any, ClassVar

from bert_jax.layers import common
from bert_jax.models import family
from bert_jax.models.config import SIZES, EncoderConfig
from bert_jax.models.distilbert import hf_names

LAYER_NORM_EPS = 1e-12  # modeling_distilbert.py's constant, not a config field there


@dataclasses.dataclass(frozen=True)
class DistilBertConfig(EncoderConfig):
  family: ClassVar[str] = "distilbert"
  classifier_activation: ClassVar[str] = "relu"  # HF's pre_classifier -> ReLU -> classifier
  has_token_types: ClassVar[bool] = False
  attention_output_dropout: ClassVar[bool] = False  # HF: sa_layer_norm(out_lin(context) + x), no dropout between
  classifier_input_dropout: ClassVar[bool] = False  # HF: pre_classifier(hidden[:, 0]), undropped
  classifier_dropout: ClassVar[float | None] = 0.2  # HF's seq_classif_dropout
  qa_dropout: ClassVar[float] = 0.1  # HF's qa_dropout, on the hidden states before qa_outputs
  num_layers: int = 6
  type_vocab_size: int = 0
  use_pooler: bool = False

  def __post_init__(self):
    super().__post_init__()
    if self.embedding_size or self.layer_sharing != "none" or self.position_offset:
      raise ValueError("DistilBERT has no factorized embeddings, layer sharing or position offset")
    if self.type_vocab_size or self.use_pooler:
      raise ValueError("DistilBERT has no token-type embeddings (type_vocab_size=0) and no pooler (use_pooler=False)")
    if self.layer_norm_eps != LAYER_NORM_EPS:
      raise ValueError(f"DistilBERT's LayerNorm eps is {LAYER_NORM_EPS} (fixed in HF), got {self.layer_norm_eps}")

  @classmethod
  def from_size(cls, size: str, **overrides: Any) -> "DistilBertConfig":
    """A size names the teacher's shape; the student keeps its width and halves its depth (base: 6 layers)
    unless num_layers is given (0 or None: half)."""
    if not overrides.get("num_layers"):
      overrides["num_layers"] = max(1, SIZES[size][0] // 2) if size in SIZES else 1
    return super().from_size(size, **overrides)


def hf_config(config: DistilBertConfig) -> dict:
  return {"model_type": "distilbert", "vocab_size": config.vocab_size, "dim": config.hidden_size,
          "n_layers": config.num_layers, "n_heads": config.num_heads, "hidden_dim": config.intermediate_size,
          "activation": config.hidden_act, "max_position_embeddings": config.max_position_embeddings,
          "dropout": config.hidden_dropout, "attention_dropout": config.attention_dropout,
          "initializer_range": config.initializer_range, "sinusoidal_pos_embds": False, "pad_token_id": 0,
          "tie_weights_": True, "tie_word_embeddings": True}


def config_from_hf(hf, **overrides) -> DistilBertConfig:
  family.check_hf_encoder(hf)  # DistilBERT has its own field names, not common_fields_from_hf
  defaults = DistilBertConfig()
  act = hf.get("activation", defaults.hidden_act)
  if act not in common.ACTIVATIONS:
    raise ValueError(f"activation {act!r} is not supported; bert_jax has {common.ACTIVATIONS}")
  return DistilBertConfig(**{**dict(
      vocab_size=hf["vocab_size"], hidden_size=hf["dim"], num_layers=hf["n_layers"], num_heads=hf["n_heads"],
      intermediate_size=hf["hidden_dim"], hidden_act=act,
      max_position_embeddings=hf.get("max_position_embeddings", defaults.max_position_embeddings),
      hidden_dropout=hf.get("dropout", defaults.hidden_dropout),
      attention_dropout=hf.get("attention_dropout", defaults.attention_dropout),
      initializer_range=hf.get("initializer_range", defaults.initializer_range)), **overrides})


FAMILY = family.Family(
    name="distilbert", config_cls=DistilBertConfig, hf_model_type="distilbert", name_table=hf_names.name_table,
    hf_architectures={("mlm",): "DistilBertForMaskedLM", (): "DistilBertModel"},
    hf_config=hf_config, config_from_hf=config_from_hf, vocab_kinds=("wordpiece", "sentencepiece"),
    tied_hf_keys=hf_names.TIED_HF_KEYS, ignored_hf_keys=hf_names.IGNORED_HF_KEYS)
