"""NEZHA (Wei et al. 2019): BERT's post-LN trunk with functional relative positional encoding (fixed sinusoids of
the clipped distance j - i added to keys and values in every layer, layers/attention.py) instead of a learned
position table; pretrained with MLM + NSP, whole-word masking and LAMB on BERT's Chinese vocabulary (21128).

transformers dropped NEZHA in v5, so export writes the 4.x layout (model_type "nezha", NezhaForPreTraining names,
max_relative_position in config.json) that transformers <= 4.40 loads, and import reads it back.
"""

import dataclasses
from typing import ClassVar

from bert_jax.models import family
from bert_jax.models.config import EncoderConfig
from bert_jax.models.nezha import hf_names

RELATIVE = "relative_sinusoidal"


@dataclasses.dataclass(frozen=True)
class NezhaConfig(EncoderConfig):
  family: ClassVar[str] = "nezha"
  vocab_size: int = 21128               # BERT's Chinese vocabulary, as the released NEZHA
  position_encoding: str = RELATIVE
  max_relative_position: int = 64       # the released models' clipping distance

  def __post_init__(self):
    super().__post_init__()
    if self.position_encoding != RELATIVE:
      raise ValueError(f"NEZHA's positions are relative: position_encoding must be {RELATIVE!r}, got "
                       f"{self.position_encoding!r} (for learned absolute positions use model.family='bert')")
    if self.embedding_size or self.layer_sharing != "none" or self.position_offset:
      raise ValueError("NEZHA has no factorized embeddings, layer sharing or position offset")


def hf_config(config: NezhaConfig) -> dict:
  # pad/bos/eos ids are transformers 4.x NezhaConfig's defaults; use_relative_position is the released TF config's.
  return {"model_type": "nezha", "max_relative_position": config.max_relative_position, "use_relative_position": True,
          "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3,
          **family.hf_common_config(config)}


def config_from_hf(hf, **overrides) -> NezhaConfig:
  fields = family.common_fields_from_hf(hf, NezhaConfig())
  fields["max_relative_position"] = hf.get("max_relative_position", NezhaConfig.max_relative_position)
  return NezhaConfig(**{**fields, **overrides})


FAMILY = family.Family(
    name="nezha", config_cls=NezhaConfig, hf_model_type="nezha", name_table=hf_names.name_table,
    hf_architectures={("mlm", "nsp", "pooler"): "NezhaForPreTraining", ("mlm",): "NezhaForMaskedLM",
                      ("pooler",): "NezhaModel", (): "NezhaModel"},
    hf_config=hf_config, config_from_hf=config_from_hf, vocab_kinds=("wordpiece", "sentencepiece"),
    tied_hf_keys=hf_names.TIED_HF_KEYS, ignored_hf_keys=hf_names.IGNORED_HF_KEYS,
    ignored_hf_key_pattern=hf_names.IGNORED_HF_KEY_PATTERN)
