"""ELECTRA (Clark et al. 2020): BERT's trunk with embeddings of their own width E (projected to H when they
differ), no pooler, and two models trained together: a small MLM generator whose samples replace the masked
tokens, and a discriminator that labels every token original or replaced (objectives/electra.py).

The generator reads the discriminator's embeddings (word, position, token type and their LayerNorm, as in
google-research/electra); its hidden size, FFN and heads are a fraction of the discriminator's.
"""

import dataclasses
from typing import ClassVar

from bert_jax.models import family
from bert_jax.models.config import EncoderConfig
from bert_jax.models.electra import hf_names
from bert_jax.models.electra import model as model_lib

GENERATOR_HEAD_DIM = 64  # google-research/electra: generator heads = max(1, hidden // 64)


@dataclasses.dataclass(frozen=True)
class ElectraConfig(EncoderConfig):
  family: ClassVar[str] = "electra"
  classifier_activation: ClassVar[str] = "gelu"  # HF's ElectraClassificationHead: dense -> GELU -> out_proj
  use_pooler: bool = False

  def __post_init__(self):
    if self.embedding_size == self.hidden_size:  # HF has no embeddings_project then, and neither do we
      object.__setattr__(self, "embedding_size", 0)
    super().__post_init__()
    if self.layer_sharing != "none" or self.position_offset:
      raise ValueError("ELECTRA has no layer sharing or position offset (use model.family='albert' or 'roberta')")
    if self.hidden_act != "gelu":
      raise ValueError(f"ELECTRA uses the erf GELU (HF's generator head hard-codes it), got hidden_act "
                       f"{self.hidden_act!r}; set model.hidden_act='gelu'")


def generator_config(discriminator: ElectraConfig, hidden_fraction: float) -> ElectraConfig:
  """The generator: the discriminator's depth and embedding width, hidden size x fraction, FFN 4 x hidden,
  64-dim heads (google-research/electra's get_generator_config)."""
  if not 0 < hidden_fraction <= 1:
    raise ValueError(f"electra.generator_hidden_fraction must be in (0, 1], got {hidden_fraction}")
  hidden = int(round(discriminator.hidden_size * hidden_fraction))
  heads = max(1, hidden // GENERATOR_HEAD_DIM)
  if hidden < 1 or hidden % heads:
    raise ValueError(f"generator hidden size {hidden} (= {discriminator.hidden_size} x {hidden_fraction}) does not "
                     f"split into {heads} heads of {GENERATOR_HEAD_DIM}; pick another electra.generator_hidden_fraction")
  return dataclasses.replace(discriminator, hidden_size=hidden, num_heads=heads, intermediate_size=4 * hidden,
                             embedding_size=discriminator.embedding_width)


def hf_config(config: ElectraConfig) -> dict:
  return {"model_type": "electra", "embedding_size": config.embedding_width, "pad_token_id": 0,
          "position_embedding_type": "absolute", "summary_type": "first", "summary_use_proj": True,
          "summary_activation": "gelu", "summary_last_dropout": 0.1, **family.hf_common_config(config)}


def config_from_hf(hf, **overrides) -> ElectraConfig:
  fields = family.common_fields_from_hf(hf, ElectraConfig())
  fields["embedding_size"] = hf.get("embedding_size", 128)  # HF's default
  return ElectraConfig(**{**fields, **overrides})


FAMILY = family.Family(
    name="electra", config_cls=ElectraConfig, hf_model_type="electra", name_table=hf_names.name_table,
    hf_architectures={("rtd",): "ElectraForPreTraining", ("mlm",): "ElectraForMaskedLM", (): "ElectraModel"},
    hf_config=hf_config, config_from_hf=config_from_hf, vocab_kinds=("wordpiece", "sentencepiece"),
    tied_hf_keys=hf_names.TIED_HF_KEYS, ignored_hf_keys=hf_names.IGNORED_HF_KEYS,
    hf_outputs={"ForPreTraining": {"rtd_logits": "logits"}, "ForMaskedLM": {"mlm_logits": "logits"},
                "Model": {"sequence_output": "last_hidden_state"}},
    pooler_head=None, model=model_lib.ElectraWithHeads)
