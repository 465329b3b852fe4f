"""Params <-> PyTorch/HF `BertForPreTraining` state dicts.

The mapping is data: a table of (our path, HF name, transform) rows. A transform is a
pair of small functions (ours -> HF, HF -> ours) that know only shapes from BertConfig.
A row whose HF side is a tuple of names maps one of our arrays to several HF arrays (the fused
QKV kernel to query/key/value); its transform returns, and takes, a tuple in that order.
Scanned params are unstacked to per-layer trees first, so one table serves both layouts.
Arrays are numpy on the way out (HF layout, in the params' dtype) and keep their dtype on the
way in unless `param_dtype` is given.
"""

import dataclasses
from typing import Callable, Mapping

import numpy as np

from bert_jax.model import BertConfig


@dataclasses.dataclass(frozen=True)
class Transform:
  to_hf: Callable[[np.ndarray, BertConfig], np.ndarray]
  from_hf: Callable[[np.ndarray, BertConfig], np.ndarray]


def _pad_rows(x, rows):
  pad = [(0, rows - x.shape[0])] + [(0, 0)] * (x.ndim - 1)
  return np.pad(x, pad)


identity = Transform(lambda x, c: x, lambda x, c: x)
# Linear: torch weight [out, in], Flax kernel [in, out].
dense_kernel = Transform(lambda x, c: x.T, lambda x, c: x.T)
# Query/key/value kernel [H, heads, head_dim] <-> weight [heads*head_dim, H].
qkv_kernel = Transform(lambda x, c: x.reshape(c.hidden_size, -1).T,
                       lambda x, c: x.T.reshape(c.hidden_size, c.num_heads, c.head_dim))
qkv_bias = Transform(lambda x, c: x.reshape(-1), lambda x, c: x.reshape(c.num_heads, c.head_dim))
# Attention output kernel [heads, head_dim, H] <-> weight [H, heads*head_dim].
attn_out_kernel = Transform(lambda x, c: x.reshape(-1, c.hidden_size).T,
                            lambda x, c: x.T.reshape(c.num_heads, c.head_dim, c.hidden_size))
# Fused kernel [H, 3, heads, head_dim] <-> (query, key, value) weights; bias [3, heads, head_dim] likewise.
fused_qkv_kernel = Transform(lambda x, c: tuple(qkv_kernel.to_hf(x[:, j], c) for j in range(3)),
                             lambda xs, c: np.stack([qkv_kernel.from_hf(x, c) for x in xs], axis=1))
fused_qkv_bias = Transform(lambda x, c: tuple(qkv_bias.to_hf(x[j], c) for j in range(3)),
                           lambda xs, c: np.stack([qkv_bias.from_hf(x, c) for x in xs]))
# Padded vocabulary rows are cut on export and zero-filled on import.
vocab_rows = Transform(lambda x, c: x[:c.vocab_size], lambda x, c: _pad_rows(x, c.padded_vocab_size))

# our path template                                HF name template                                         transform
EMBEDDING_AND_HEAD_MAP = [
    ("embeddings/word_embeddings/embedding",       "bert.embeddings.word_embeddings.weight",                vocab_rows),
    ("embeddings/position_embeddings/embedding",   "bert.embeddings.position_embeddings.weight",            identity),
    ("embeddings/token_type_embeddings/embedding", "bert.embeddings.token_type_embeddings.weight",          identity),
    ("embeddings/layer_norm/scale",                "bert.embeddings.LayerNorm.weight",                      identity),
    ("embeddings/layer_norm/bias",                 "bert.embeddings.LayerNorm.bias",                        identity),
    ("pooler/kernel",                              "bert.pooler.dense.weight",                              dense_kernel),
    ("pooler/bias",                                "bert.pooler.dense.bias",                                identity),
    ("mlm_transform/kernel",                       "cls.predictions.transform.dense.weight",                dense_kernel),
    ("mlm_transform/bias",                         "cls.predictions.transform.dense.bias",                  identity),
    ("mlm_layer_norm/scale",                       "cls.predictions.transform.LayerNorm.weight",            identity),
    ("mlm_layer_norm/bias",                        "cls.predictions.transform.LayerNorm.bias",              identity),
    ("mlm_output_bias",                            "cls.predictions.bias",                                  vocab_rows),
    ("nsp_classifier/kernel",                      "cls.seq_relationship.weight",                           dense_kernel),
    ("nsp_classifier/bias",                        "cls.seq_relationship.bias",                             identity),
]
_L = "bert.encoder.layer.{i}"
QKV_MAP = [
    ("encoder/layer_{i}/attention/query/kernel",   _L + ".attention.self.query.weight",                    qkv_kernel),
    ("encoder/layer_{i}/attention/query/bias",     _L + ".attention.self.query.bias",                      qkv_bias),
    ("encoder/layer_{i}/attention/key/kernel",     _L + ".attention.self.key.weight",                      qkv_kernel),
    ("encoder/layer_{i}/attention/key/bias",       _L + ".attention.self.key.bias",                        qkv_bias),
    ("encoder/layer_{i}/attention/value/kernel",   _L + ".attention.self.value.weight",                    qkv_kernel),
    ("encoder/layer_{i}/attention/value/bias",     _L + ".attention.self.value.bias",                      qkv_bias),
]
_QKV = tuple(_L + f".attention.self.{name}" for name in ("query", "key", "value"))
FUSED_QKV_MAP = [  # used instead of QKV_MAP when config.fused_qkv
    ("encoder/layer_{i}/attention/qkv/kernel",     tuple(n + ".weight" for n in _QKV),                     fused_qkv_kernel),
    ("encoder/layer_{i}/attention/qkv/bias",       tuple(n + ".bias" for n in _QKV),                       fused_qkv_bias),
]
LAYER_MAP = [
    ("encoder/layer_{i}/attention/output/kernel",  _L + ".attention.output.dense.weight",                  attn_out_kernel),
    ("encoder/layer_{i}/attention/output/bias",    _L + ".attention.output.dense.bias",                    identity),
    ("encoder/layer_{i}/attention_layer_norm/scale", _L + ".attention.output.LayerNorm.weight",            identity),
    ("encoder/layer_{i}/attention_layer_norm/bias",  _L + ".attention.output.LayerNorm.bias",              identity),
    ("encoder/layer_{i}/intermediate/kernel",      _L + ".intermediate.dense.weight",                      dense_kernel),
    ("encoder/layer_{i}/intermediate/bias",        _L + ".intermediate.dense.bias",                        identity),
    ("encoder/layer_{i}/output/kernel",            _L + ".output.dense.weight",                            dense_kernel),
    ("encoder/layer_{i}/output/bias",              _L + ".output.dense.bias",                              identity),
    ("encoder/layer_{i}/output_layer_norm/scale",  _L + ".output.LayerNorm.weight",                        identity),
    ("encoder/layer_{i}/output_layer_norm/bias",   _L + ".output.LayerNorm.bias",                          identity),
]
# HF keeps these beside the canonical ones: tied copies and a non-persistent buffer.
TIED_HF_KEYS = {"cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
                "cls.predictions.decoder.bias": "cls.predictions.bias"}
IGNORED_HF_KEYS = {"bert.embeddings.position_ids"}


def hf_names(hf) -> tuple[str, ...]:
  """A row's HF side as a tuple of names."""
  return (hf,) if isinstance(hf, str) else tuple(hf)


def _by_hf_name(hf, values):
  """(name, array) pairs of a row: `values` is one array for a single name, a tuple for several."""
  return zip(hf_names(hf), (values,) if isinstance(hf, str) else values)


def name_table(config: BertConfig):
  """All (our path, HF name or names, transform) rows for this config, layers expanded."""
  rows = list(EMBEDDING_AND_HEAD_MAP)
  layer_rows = (FUSED_QKV_MAP if config.fused_qkv else QKV_MAP) + LAYER_MAP
  for i in range(config.num_layers):
    for ours, hf, t in layer_rows:
      hf_i = hf.format(i=i) if isinstance(hf, str) else tuple(n.format(i=i) for n in hf)
      rows.append((ours.format(i=i), hf_i, t))
  return rows


def table_to_hf(flat_params, table, config: BertConfig, dtype=None, what: str = "") -> dict[str, np.ndarray]:
  """Applies each row's to_hf to flat params (path -> array); `what` completes the missing-key error."""
  state = {}
  for ours, hf, t in table:
    if ours not in flat_params:
      raise KeyError(f"params have no {ours!r} (needed for {hf!r}); {what or 'is the config right for these params?'}")
    for name, value in _by_hf_name(hf, t.to_hf(np.asarray(flat_params[ours], dtype), config)):
      state[name] = np.ascontiguousarray(value)
  return state


def _flatten(tree, prefix=""):
  out = {}
  for k, v in tree.items():
    path = f"{prefix}/{k}" if prefix else k
    out.update(_flatten(v, path) if isinstance(v, Mapping) else {path: v})
  return out


def _unflatten(flat):
  tree = {}
  for path, v in flat.items():
    node = tree
    *parents, leaf = path.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return tree


def unscan_params(params, config: BertConfig):
  """encoder/layers/layer/... stacked on axis 0 -> encoder/layer_{i}/...; no-op if unscanned."""
  encoder = params["encoder"]
  if "layers" not in encoder:
    return params
  stacked = _flatten(encoder["layers"]["layer"])
  per_layer = {f"layer_{i}": _unflatten({k: v[i] for k, v in stacked.items()}) for i in range(config.num_layers)}
  return {**params, "encoder": per_layer}


def scan_params(params, config: BertConfig):
  """Inverse of unscan_params: stack encoder/layer_{i} into encoder/layers/layer."""
  encoder = params["encoder"]
  if "layers" in encoder:
    return params
  flats = [_flatten(encoder[f"layer_{i}"]) for i in range(config.num_layers)]
  stacked = {k: np.stack([np.asarray(f[k]) for f in flats]) for k in flats[0]}
  return {**params, "encoder": {"layers": {"layer": _unflatten(stacked)}}}


def params_to_hf(params, config: BertConfig) -> dict[str, np.ndarray]:
  """Flax params (scanned or not, any float dtype) -> HF BertForPreTraining state dict (numpy)."""
  return table_to_hf(_flatten(unscan_params(params, config)), name_table(config), config)


def _expected_our_shapes(config: BertConfig):
  import jax
  import jax.numpy as jnp
  from bert_jax.model import BertForPreTraining
  unscanned = dataclasses.replace(config, scan_layers=False)
  ids = jnp.zeros((1, 1), jnp.int32)
  abstract = jax.eval_shape(lambda: BertForPreTraining(unscanned).init(jax.random.key(0), ids, ids, ids))
  import flax.linen as nn
  return {k: v.shape for k, v in _flatten(nn.unbox(abstract["params"])).items()}


def hf_to_params(state_dict: Mapping[str, np.ndarray], config: BertConfig, param_dtype=None):
  """HF BertForPreTraining state dict -> Flax params in the layout config.scan_layers asks for.

  Fails naming the key on a missing key, an unexpected key, a wrong shape, or untied decoder weights.
  """
  state = {k: np.asarray(v) for k, v in state_dict.items()}
  table = name_table(config)
  known = {name for _, hf, _ in table for name in hf_names(hf)}
  unexpected = sorted(set(state) - known - set(TIED_HF_KEYS) - IGNORED_HF_KEYS)
  if unexpected:
    raise KeyError(f"unexpected keys in state dict: {unexpected[:10]} (is num_layers={config.num_layers} right?)")
  missing = sorted(known - set(state))
  if missing:
    raise KeyError(f"missing keys in state dict: {missing[:10]}")
  for tied, source in TIED_HF_KEYS.items():
    if tied in state and not np.array_equal(state[tied], state[source]):
      raise ValueError(f"{tied!r} differs from {source!r}: bert_jax ties the decoder to the word embeddings")

  expected = _expected_our_shapes(config)
  flat = {}
  for ours, hf, t in table:
    _check_hf_shapes(state, hf, ours, expected[ours], t, config)
    value = t.from_hf(state[hf] if isinstance(hf, str) else tuple(state[n] for n in hf), config)
    flat[ours] = value.astype(param_dtype) if param_dtype is not None else value
  params = _unflatten(flat)
  return scan_params(params, config) if config.scan_layers else params


def _check_hf_shapes(state, hf, our_path, our_shape, transform, config):
  for hf_name, expected_hf in _by_hf_name(hf, transform.to_hf(np.zeros(our_shape, np.float32), config)):
    if tuple(state[hf_name].shape) != tuple(expected_hf.shape):
      raise ValueError(f"{hf_name!r} has shape {tuple(state[hf_name].shape)} but this config needs "
                       f"{tuple(expected_hf.shape)} (for {our_path!r} {tuple(our_shape)}); "
                       "check vocab_size/hidden_size/num_heads")


def hf_config_dict(config: BertConfig) -> dict:
  """config.json fields of a transformers BertConfig for BertForPreTraining (real, unpadded vocab)."""
  return {
      "architectures": ["BertForPreTraining"], "model_type": "bert",
      "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
      "num_hidden_layers": config.num_layers, "num_attention_heads": config.num_heads,
      "intermediate_size": config.intermediate_size, "hidden_act": "gelu",  # HF "gelu" is the erf form
      "max_position_embeddings": config.max_position_embeddings, "type_vocab_size": config.type_vocab_size,
      "layer_norm_eps": config.layer_norm_eps, "initializer_range": config.initializer_range,
      "hidden_dropout_prob": config.hidden_dropout, "attention_probs_dropout_prob": config.attention_dropout,
      "pad_token_id": 0, "tie_word_embeddings": True,
  }


def bert_config_from_hf(hf: Mapping, **overrides) -> BertConfig:
  """BertConfig from an HF config.json dict; overrides set our-only fields (dtype, scan, padding...)."""
  if hf.get("hidden_act", "gelu") != "gelu":
    raise ValueError(f"hidden_act {hf['hidden_act']!r} is not supported; bert_jax uses the erf GELU ('gelu')")
  fields = dict(
      vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
      num_heads=hf["num_attention_heads"], intermediate_size=hf["intermediate_size"],
      max_position_embeddings=hf.get("max_position_embeddings", 512), type_vocab_size=hf.get("type_vocab_size", 2),
      layer_norm_eps=hf.get("layer_norm_eps", 1e-12), initializer_range=hf.get("initializer_range", 0.02),
      hidden_dropout=hf.get("hidden_dropout_prob", 0.1), attention_dropout=hf.get("attention_probs_dropout_prob", 0.1))
  fields.update(overrides)
  return BertConfig(**fields)


if __name__ == "__main__":  # python -m bert_jax.convert {to_hf|from_hf|from_tf}
  from bert_jax import export
  export.cli()
