"""RoBERTa (Liu et al. 2019): BERT's encoder with positions offset by padding_idx + 1, one token type,
layer-norm eps 1e-5, no pooler and no NSP, and a byte-level BPE vocabulary (<s>=0 <pad>=1 </s>=2)."""

import dataclasses
from typing import ClassVar

from bert_jax.models import family
from bert_jax.models.config import EncoderConfig
from bert_jax.models.roberta import hf_names

PAD_ID = 1  # HF's padding_idx: positions start at PAD_ID + 1


@dataclasses.dataclass(frozen=True)
class RobertaConfig(EncoderConfig):
  family: ClassVar[str] = "roberta"
  position_padding_idx: ClassVar[int | None] = PAD_ID
  max_position_embeddings: int = 514
  type_vocab_size: int = 1
  layer_norm_eps: float = 1e-5
  position_offset: int = PAD_ID + 1
  use_pooler: bool = False

  def __post_init__(self):
    super().__post_init__()
    if self.embedding_size or self.layer_sharing != "none":
      raise ValueError("RoBERTa has no factorized embeddings or layer sharing; use model.family='albert'")
    if self.position_offset != PAD_ID + 1:
      raise ValueError(f"RoBERTa positions start at padding_idx + 1 = {PAD_ID + 1}, got {self.position_offset}")


def hf_config(config: RobertaConfig) -> dict:
  return {"model_type": "roberta", "pad_token_id": PAD_ID, "bos_token_id": 0, "eos_token_id": 2,
          **family.hf_common_config(config)}


def config_from_hf(hf, **overrides) -> RobertaConfig:
  if hf.get("pad_token_id", PAD_ID) != PAD_ID:
    raise ValueError(f"RoBERTa config has pad_token_id {hf['pad_token_id']}; bert_jax expects {PAD_ID}")
  return RobertaConfig(**{**family.common_fields_from_hf(hf, RobertaConfig()), **overrides})


FAMILY = family.Family(
    name="roberta", config_cls=RobertaConfig, hf_model_type="roberta", name_table=hf_names.name_table,
    hf_architectures={("mlm",): "RobertaForMaskedLM", ("pooler",): "RobertaModel", (): "RobertaModel"},
    hf_config=hf_config, config_from_hf=config_from_hf, vocab_kinds=("bpe",),
    tied_hf_keys=hf_names.TIED_HF_KEYS, ignored_hf_keys=hf_names.IGNORED_HF_KEYS)
