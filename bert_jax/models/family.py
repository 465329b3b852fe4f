"""What a model family is: its config class, its HF name table by section, and its HF classes.

Sections are the parts of a parameter tree that may or may not be present: `encoder` (always),
`pooler` (when a head reads it), and one per pretraining head (`mlm`, `nsp`, `sop`). Export writes the
sections the params have, under the HF class that holds exactly those; import reads the sections
the HF state dict has.
"""

import dataclasses
import re
from typing import Callable, Mapping

from bert_jax.layers import common
from bert_jax.models import pretraining
from bert_jax.models.config import EncoderConfig

# Our output name -> the HF output attribute holding the same values, by the HF class's name suffix.
BERT_LIKE_OUTPUTS = {"ForPreTraining": {"mlm_logits": "prediction_logits", "nsp_logits": "seq_relationship_logits",
                                        "sop_logits": "sop_logits"},
                     "ForMaskedLM": {"mlm_logits": "logits"},
                     "Model": {"sequence_output": "last_hidden_state"}}


@dataclasses.dataclass(frozen=True)
class Family:
  name: str
  config_cls: type
  hf_model_type: str
  # (config) -> {section: [(our path, HF name(s), transform), ...]}; our paths are unscanned.
  name_table: Callable[[EncoderConfig], dict]
  # Sections present (sorted tuple, without "encoder") -> HF architecture that holds exactly them.
  hf_architectures: Mapping[tuple, str]
  # Our config -> config.json fields, and back.
  hf_config: Callable[[EncoderConfig], dict]
  config_from_hf: Callable[..., EncoderConfig]
  vocab_kinds: tuple[str, ...]                          # tokenizer kinds this family's vocabulary may be
  tied_hf_keys: Mapping[str, str] = dataclasses.field(default_factory=dict)  # HF copy -> canonical HF key
  ignored_hf_keys: frozenset = frozenset()              # buffers HF may save (position_ids, ...)
  ignored_hf_key_pattern: re.Pattern | None = None      # and per-layer ones, by regex (NEZHA's relative tables)
  hf_outputs: Mapping[str, Mapping[str, str]] = dataclasses.field(default_factory=lambda: BERT_LIKE_OUTPUTS)
  hf_token_type_ids: bool = True                        # its HF classes take token_type_ids (with type_vocab_size > 0)
  # A head that reads the pooler, built to give the pooler shapes on import (None: the family has no pooler).
  pooler_head: str | None = "nsp"
  # (config, heads) -> the Flax module with the trunk under `encoder` and exactly those heads, called as
  # (ids, mask, segments[, masked_lm_positions]); None: models.pretraining.EncoderWithHeads.
  model: Callable | None = None
  # Sections no HF class has a place for, written beside the HF files: section -> file name (SpanBERT's SBO head).
  side_files: Mapping[str, str] = dataclasses.field(default_factory=dict)

  def build_model(self, config: EncoderConfig, heads: tuple[str, ...]):
    return (self.model or pretraining.EncoderWithHeads)(config, tuple(heads))

  def hf_output_names(self, architecture: str) -> Mapping[str, str]:
    """Our output name -> HF output attribute for an HF class of this family."""
    kind = next((k for k in self.hf_outputs if architecture.endswith(k)), None)
    if kind is None:
      raise ValueError(f"{self.name}: no output names for HF class {architecture} (known kinds: {sorted(self.hf_outputs)})")
    return self.hf_outputs[kind]

  def architecture(self, sections) -> str:
    heads = tuple(sorted(set(sections) - {"encoder"} - set(self.side_files)))
    for candidate in (heads, tuple(h for h in heads if h != "pooler")):
      if candidate in self.hf_architectures:
        return self.hf_architectures[candidate]
    raise ValueError(f"{self.name}: no HF class holds the heads {list(heads)}; "
                     f"known: {dict(self.hf_architectures)}")

  def ignores_hf_key(self, key: str) -> bool:
    """Whether an HF state-dict key is a buffer import leaves out (not a weight)."""
    return key in self.ignored_hf_keys or bool(self.ignored_hf_key_pattern and
                                               self.ignored_hf_key_pattern.fullmatch(key))

  def check_vocab_kind(self, kind: str, vocab_file: str) -> None:
    if kind not in self.vocab_kinds:
      raise ValueError(f"model family {self.name!r} needs a {' or '.join(self.vocab_kinds)} vocabulary, but "
                       f"{vocab_file} is {kind}; train one with data.vocab_type={self.vocab_kinds[0]!r} and an empty "
                       f"data.vocab_file, or pass a vocabulary of that kind")


def hf_common_config(config: EncoderConfig) -> dict:
  """config.json fields every BERT-like HF config shares (real, unpadded vocab)."""
  return {
      "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
      "num_hidden_layers": config.num_layers, "num_attention_heads": config.num_heads,
      "intermediate_size": config.intermediate_size, "hidden_act": config.hidden_act,
      "max_position_embeddings": config.max_position_embeddings, "type_vocab_size": config.type_vocab_size,
      "layer_norm_eps": config.layer_norm_eps, "initializer_range": config.initializer_range,
      "hidden_dropout_prob": config.hidden_dropout, "attention_probs_dropout_prob": config.attention_dropout,
      "tie_word_embeddings": True,
  }


def check_hf_encoder(hf: Mapping) -> None:
  """Refuses HF configs of models bert_jax cannot run: their weights would otherwise load into our bidirectional,
  absolute-position encoder (a decoder's causal mask dropped) or fail later as unexpected keys."""
  model_type = hf.get("model_type", "bert")
  if hf.get("is_decoder"):
    raise ValueError(f"this {model_type} config has is_decoder=true (a causal LM such as BertLMHeadModel or "
                     f"RobertaForCausalLM); bert_jax trains bidirectional encoders only: import the model's encoder "
                     f"checkpoint (e.g. its ...ForMaskedLM) instead")
  if hf.get("add_cross_attention"):
    raise ValueError(f"this {model_type} config has add_cross_attention=true (an encoder-decoder's decoder); bert_jax "
                     f"has no cross-attention: import an encoder checkpoint instead")
  position = hf.get("position_embedding_type")
  if position not in (None, "absolute"):
    raise ValueError(f"this {model_type} config has position_embedding_type={position!r}; bert_jax reads HF's "
                     f"'absolute' (learned table) positions only (NEZHA's relative positions are model_type 'nezha')")


def common_fields_from_hf(hf: Mapping, defaults: EncoderConfig) -> dict:
  """EncoderConfig fields from an HF config.json dict, falling back to the family's defaults; refuses what
  check_hf_encoder refuses."""
  check_hf_encoder(hf)
  act = hf.get("hidden_act", defaults.hidden_act)
  if act not in common.ACTIVATIONS:
    raise ValueError(f"hidden_act {act!r} is not supported; bert_jax has {common.ACTIVATIONS}")
  return dict(
      vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
      num_heads=hf["num_attention_heads"], intermediate_size=hf["intermediate_size"], hidden_act=act,
      max_position_embeddings=hf.get("max_position_embeddings", defaults.max_position_embeddings),
      type_vocab_size=hf.get("type_vocab_size", defaults.type_vocab_size),
      layer_norm_eps=hf.get("layer_norm_eps", defaults.layer_norm_eps),
      initializer_range=hf.get("initializer_range", defaults.initializer_range),
      hidden_dropout=hf.get("hidden_dropout_prob", defaults.hidden_dropout),
      attention_dropout=hf.get("attention_probs_dropout_prob", defaults.attention_dropout))
