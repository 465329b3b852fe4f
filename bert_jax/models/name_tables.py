"""Machinery for the per-family HF name tables: transforms, flattening, and the scanned <-> per-layer layout.

A table is data: rows of (our path, HF name or names, transform). A transform is a pair of small
functions (ours -> HF, HF -> ours) that know only shapes from the encoder config. A row whose HF side
is a tuple of names maps one of our arrays to several HF arrays (the fused QKV kernel to query/key/value);
its transform returns, and takes, a tuple in that order. Paths are those of unscanned params: scanned
params are unstacked first, so one table serves both layouts.
"""

import dataclasses
from typing import Callable, Mapping

import numpy as np


@dataclasses.dataclass(frozen=True)
class Transform:
  to_hf: Callable
  from_hf: Callable


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


def hf_names(hf) -> tuple[str, ...]:
  """A row's HF side as a tuple of names."""
  return (hf,) if isinstance(hf, str) else tuple(hf)


def by_hf_name(hf, values):
  """(name, array) pairs of a row: `values` is one array for a single name, a tuple for several."""
  return zip(hf_names(hf), (values,) if isinstance(hf, str) else values)


def expand_layers(layer_rows, num_layers: int, **fields):
  """Per-layer row templates ({i} in both paths) -> rows for layers 0..num_layers-1."""
  rows = []
  for i in range(num_layers):
    for ours, hf, t in layer_rows:
      fmt = lambda s: s.format(i=i, **fields)
      rows.append((fmt(ours), fmt(hf) if isinstance(hf, str) else tuple(fmt(n) for n in hf), t))
  return rows


def flatten(tree, prefix=""):
  out = {}
  for k, v in tree.items():
    path = f"{prefix}/{k}" if prefix else k
    out.update(flatten(v, path) if isinstance(v, Mapping) else {path: v})
  return out


def unflatten(flat):
  tree = {}
  for path, v in flat.items():
    node = tree
    *parents, leaf = path.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return tree


def unscan_params(params, num_layers: int):
  """encoder/layers/layer/... stacked on axis 0 -> encoder/layer_{i}/...; no-op if unscanned."""
  encoder = params["encoder"]
  if "layers" not in encoder:
    return params
  stacked = flatten(encoder["layers"]["layer"])
  per_layer = {f"layer_{i}": unflatten({k: v[i] for k, v in stacked.items()}) for i in range(num_layers)}
  rest = {k: v for k, v in encoder.items() if k != "layers"}
  return {**params, "encoder": {**rest, **per_layer}}


def scan_params(params, num_layers: int):
  """Inverse of unscan_params: stack encoder/layer_{i} into encoder/layers/layer."""
  encoder = params["encoder"]
  if "layers" in encoder or "layer_0" not in encoder:
    return params
  flats = [flatten(encoder[f"layer_{i}"]) for i in range(num_layers)]
  stacked = {k: np.stack([np.asarray(f[k]) for f in flats]) for k in flats[0]}
  rest = {k: v for k, v in encoder.items() if not k.startswith("layer_")}
  return {**params, "encoder": {**rest, "layers": {"layer": unflatten(stacked)}}}
