"""Params <-> HF/PyTorch state dicts through the family's name table, and layout changes through it.

Arrays are numpy on the way out (HF layout, in the params' dtype) and keep their dtype on the way in
unless `param_dtype` is given. Which sections (encoder, pooler, heads) are converted follows what is
there: the params' subtrees on export, the state dict's keys on import.
"""

import dataclasses
from typing import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bert_jax.models import name_tables as nt
from bert_jax.models import registry
from bert_jax.models.config import EncoderConfig


def param_sections(params) -> list[str]:
  """Sections a params tree holds: encoder, pooler (if created) and each head subtree."""
  sections = ["encoder"] + (["pooler"] if "pooler" in params.get("encoder", {}) else [])
  return sections + sorted(k for k in params if k != "encoder")


def _table(config: EncoderConfig, sections) -> list:
  tables = registry.family_of(config).name_table(config)
  unknown = [s for s in sections if s not in tables]
  if unknown:
    raise ValueError(f"{type(config).family} has no HF names for {unknown}; it knows {sorted(tables)}")
  return [row for s in sections for row in tables[s]]


def table_to_hf(flat_params, table, config, dtype=None, what: str = "") -> dict[str, np.ndarray]:
  """Applies each row's to_hf to flat params (path -> array); `what` completes the missing-key error."""
  state = {}
  for ours, hf, t in table:
    if ours not in flat_params:
      raise KeyError(f"params have no {ours!r} (needed for {hf!r}); {what or 'is the config right for these params?'}")
    for name, value in nt.by_hf_name(hf, t.to_hf(np.asarray(flat_params[ours], dtype), config)):
      state[name] = np.ascontiguousarray(value)
  return state


def params_to_hf(params, config: EncoderConfig, sections=None, extra_rows=()) -> dict[str, np.ndarray]:
  """Flax params (scanned or not, any float dtype) -> HF state dict (numpy) of the given sections
  (default: all the params have), plus `extra_rows` (e.g. a fine-tuning head's)."""
  sections = param_sections(params) if sections is None else sections
  flat = nt.flatten(nt.unscan_params(params, config.num_layers))
  return table_to_hf(flat, _table(config, sections) + list(extra_rows), config)


def expected_shapes(config: EncoderConfig, sections) -> dict:
  """Our unscanned param shapes for these sections, by eval_shape."""
  unscanned = dataclasses.replace(config, scan_layers=False)
  family = registry.family_of(config)
  heads = tuple(s for s in sections if s not in ("encoder", "pooler"))
  if "pooler" in sections and family.pooler_head and family.pooler_head not in heads:
    heads += (family.pooler_head,)  # something must read the pooler for it to exist; its rows are not used
  model = family.build_model(unscanned, heads)
  ids = jnp.zeros((1, 1), jnp.int32)
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), ids, ids, ids))
  return {k: v.shape for k, v in nt.flatten(nn.unbox(abstract["params"])).items()}


def hf_sections(state: Mapping, config: EncoderConfig) -> list[str]:
  """Sections whose HF keys are all in the state dict; a section present in part fails naming the gap."""
  tables = registry.family_of(config).name_table(config)
  present = []
  for section, rows in tables.items():
    names = [n for _, hf, _ in rows for n in nt.hf_names(hf)]
    have = [n for n in names if n in state]
    if len(have) == len(names):
      present.append(section)
    elif have or section == "encoder":
      missing = sorted(set(names) - set(have))
      raise KeyError(f"state dict has part of the {section!r} weights; missing keys: {missing[:10]} "
                     f"(is num_layers={config.num_layers} right, and is it a {type(config).family} model?)")
  return present


def hf_to_params(state_dict: Mapping[str, np.ndarray], config: EncoderConfig, param_dtype=None, extra_rows=()):
  """HF state dict -> Flax params (layout as config.scan_layers asks) of every section the dict holds.

  Fails naming the key on a missing or unexpected key, a wrong shape, or untied decoder weights.
  """
  family = registry.family_of(config)
  state = {k: np.asarray(v) for k, v in state_dict.items()}
  sections = hf_sections(state, config)
  table = _table(config, sections) + list(extra_rows)
  known = {name for _, hf, _ in table for name in nt.hf_names(hf)}
  unexpected = sorted(k for k in set(state) - known - set(family.tied_hf_keys) if not family.ignores_hf_key(k))
  if unexpected:
    raise KeyError(f"unexpected keys in state dict: {unexpected[:10]} (is num_layers={config.num_layers} right, "
                   f"and is it a {family.name} model?)")
  for tied, source in family.tied_hf_keys.items():
    if tied in state and source in state and not np.array_equal(state[tied], state[source]):
      raise ValueError(f"{tied!r} differs from {source!r}: bert_jax ties the decoder to the word embeddings")
  expected = expected_shapes(config, sections)
  flat = {}
  for ours, hf, t in table:
    if ours in expected:
      _check_hf_shapes(state, hf, ours, expected[ours], t, config)
    value = t.from_hf(state[hf] if isinstance(hf, str) else tuple(state[n] for n in hf), config)
    flat[ours] = value.astype(param_dtype) if param_dtype is not None else value
  params = nt.unflatten(flat)
  return nt.scan_params(params, config.num_layers) if config.scan_layers else params


def _check_hf_shapes(state, hf, our_path, our_shape, transform, config):
  for hf_name, expected_hf in nt.by_hf_name(hf, transform.to_hf(np.zeros(our_shape, np.float32), config)):
    if tuple(state[hf_name].shape) != tuple(expected_hf.shape):
      raise ValueError(f"{hf_name!r} has shape {tuple(state[hf_name].shape)} but this config needs "
                       f"{tuple(expected_hf.shape)} (for {our_path!r} {tuple(our_shape)}); "
                       "check vocab_size/hidden_size/num_heads/embedding_size")


def saved_layout(params, config: EncoderConfig, saved_vocab_size: int | None = None) -> EncoderConfig:
  """`config` with scan_layers, fused_qkv and the vocabulary padding as the params were saved. `saved_vocab_size`
  is the saved model's own vocab_size where known: rows past the run's vocabulary are padding only when they pad
  that same vocabulary, never a larger one's real tokens (which would be cut off silently)."""
  encoder = params.get("encoder", {})
  scanned = "layers" in encoder
  rows = encoder.get("embeddings", {}).get("word_embeddings", {}).get("embedding")
  pad = config.vocab_pad_multiple
  if rows is not None and rows.shape[0] >= config.vocab_size:
    rows = rows.shape[0]
    same_vocab = (saved_vocab_size == config.vocab_size if saved_vocab_size is not None
                  else rows in (config.vocab_size, config.padded_vocab_size))
    if not same_vocab:
      saved = f"vocab_size {saved_vocab_size}" if saved_vocab_size is not None else "an unknown vocab_size"
      raise ValueError(f"its word table has {rows} rows ({saved}) but this run's model.vocab_size is "
                       f"{config.vocab_size}: another vocabulary; train with the checkpoint's vocabulary "
                       f"(data.vocab_file, model.vocab_size={saved_vocab_size or rows}) or start without it")
    pad = rows  # a padded table of `rows` rows is what vocab_pad_multiple=rows gives (rows >= vocab_size)
  return dataclasses.replace(config, scan_layers=scanned or (config.scan_layers and "shared_layer" in encoder),
                             fused_qkv=any("/attention/qkv/" in path for path in nt.flatten(encoder)),
                             vocab_pad_multiple=pad)


def to_layout(params, config: EncoderConfig, where: str = "checkpoint", saved_vocab_size: int | None = None):
  """params in whatever encoder layout they were saved (scanned or per-layer, fused or separate QKV, vocabulary
  padded or not) -> config's layout, through the family's HF name table; `saved_vocab_size` as saved_layout's.
  A second model inside the tree (a subtree with its own `encoder`, e.g. ELECTRA's generator) has its layers
  scanned or unscanned and its vocabulary rows padded to match."""
  nested = {k: v for k, v in params.items() if k != "encoder" and isinstance(v, Mapping) and "encoder" in v}
  params = {k: v for k, v in params.items() if k not in nested}
  try:
    saved_as = saved_layout(params, config, saved_vocab_size)
  except ValueError as e:
    raise ValueError(f"{where} does not fit this model: {e}") from e
  for name, model in nested.items():
    layers = nt.scan_params if config.scan_layers else nt.unscan_params
    nested[name] = _vocab_rows_as(layers(model, _layer_count(model["encoder"])), config)
  if saved_as == config:
    return {**params, **nested}
  try:
    return {**hf_to_params(params_to_hf(params, saved_as), config), **nested}
  except (KeyError, ValueError) as e:
    raise ValueError(f"{where} does not fit this model: {e}") from e


# A nested model's leaves with a row per vocabulary entry: its MLM bias, and its own word table where it has one
# (ELECTRA's generator shares the discriminator's). The main encoder's go through its name table's vocab_rows.
NESTED_VOCAB_LEAVES = ("mlm/output_bias", "encoder/embeddings/word_embeddings/embedding")


def _vocab_rows_as(model, config: EncoderConfig):
  """A nested model's vocabulary rows cut to config.vocab_size (the main table's check has shown the rest to be
  padding) and padded to config's padded size."""
  flat = nt.flatten(model)
  for path in NESTED_VOCAB_LEAVES:
    if path in flat:
      flat[path] = nt.vocab_rows.from_hf(nt.vocab_rows.to_hf(np.asarray(flat[path]), config), config)
  return nt.unflatten(flat)


def _layer_count(encoder) -> int:
  """Layers of an encoder subtree, scanned (stacked on axis 0) or per-layer."""
  if "layers" in encoder:
    return int(jax.tree_util.tree_leaves(encoder["layers"])[0].shape[0])
  return sum(1 for k in encoder if k.startswith("layer_"))
