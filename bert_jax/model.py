"""BERT encoder with MLM and NSP heads, as pure-functional Flax linen modules.

Every weight is created with logical axis names (vocab, embed, mlp, heads, kv; plus
`layers` for the stacked axis under scan). Physical mesh axes live in sharding.py.

Parameter tree (unscanned):
  embeddings/{word_embeddings,position_embeddings,token_type_embeddings}/embedding, embeddings/layer_norm
  encoder/layer_{i}/attention/{query,key,value,output} (fused_qkv: {qkv,output}), attention_layer_norm,
                    intermediate, output, output_layer_norm
  pooler, mlm_transform, mlm_layer_norm, mlm_output_bias, nsp_classifier
With scan_layers=True, encoder/layers/... holds the same leaves stacked on a leading axis.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bert_jax import attention as attention_lib
from bert_jax import dropout as dropout_lib

REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")

# name: (num_layers, hidden_size, num_heads); intermediate is 4 * hidden.
SIZES = {
    "tiny": (2, 128, 2),
    "mini": (4, 256, 4),
    "small": (4, 512, 8),
    "medium": (8, 512, 8),
    "base": (12, 768, 12),
    "large": (24, 1024, 16),
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """Model hyper-parameters; the model sees only this, never the ConfigDict."""
  vocab_size: int = 30522
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  intermediate_size: int = 3072
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_dropout: float = 0.1
  attention_dropout: float = 0.1
  initializer_range: float = 0.02
  dtype: str = "float32"          # compute dtype
  param_dtype: str = "float32"
  remat_policy: str = "none"      # one of REMAT_POLICIES
  scan_layers: bool = False
  vocab_pad_multiple: int = 1     # e.g. 128 pads 30522 -> 30592 for faster matmuls
  attention_impl: str = "xla"     # see attention.IMPLEMENTATIONS
  mlm_all_positions: bool = False  # MLM logits at all T positions, then gather (HF's way; a benchmark baseline)
  fused_qkv: bool = False         # one [H, 3, heads, head_dim] projection instead of query/key/value

  def __post_init__(self):
    if self.hidden_size % self.num_heads:
      raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"remat_policy {self.remat_policy!r} is not one of {REMAT_POLICIES}")
    if self.attention_impl not in attention_lib.IMPLEMENTATIONS:
      raise ValueError(f"attention_impl {self.attention_impl!r} is not one of {attention_lib.IMPLEMENTATIONS}")
    for name in ("vocab_size", "num_layers", "intermediate_size", "max_position_embeddings",
                 "type_vocab_size", "vocab_pad_multiple"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
    jnp.dtype(self.dtype), jnp.dtype(self.param_dtype)  # fail early on a bad dtype name

  @classmethod
  def from_size(cls, size: str, **overrides: Any) -> "BertConfig":
    if size not in SIZES:
      raise ValueError(f"unknown model size {size!r}; choose one of {sorted(SIZES)}")
    layers, hidden, heads = SIZES[size]
    fields = dict(num_layers=layers, hidden_size=hidden, num_heads=heads, intermediate_size=4 * hidden)
    fields.update(overrides)
    return cls(**fields)

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def padded_vocab_size(self) -> int:
    m = self.vocab_pad_multiple
    return -(-self.vocab_size // m) * m


def _init(config: BertConfig, axes):
  return nn.with_logical_partitioning(nn.initializers.normal(stddev=config.initializer_range), axes)


def _zeros(axes):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)


def _ones(axes):
  return nn.with_logical_partitioning(nn.initializers.ones_init(), axes)


def _layer_norm(config: BertConfig, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=config.layer_norm_eps, dtype=config.dtype, param_dtype=config.param_dtype,
                      scale_init=_ones(("embed",)), bias_init=_zeros(("embed",)), name=name)


def _dense(config: BertConfig, features, kernel_axes, name, axis=-1):
  """DenseGeneral whose bias carries the kernel's output axes (those after the contracted ones)."""
  num_contracted = 1 if isinstance(axis, int) else len(axis)
  return nn.DenseGeneral(features, axis=axis, dtype=config.dtype, param_dtype=config.param_dtype,
                         kernel_init=_init(config, kernel_axes), bias_init=_zeros(kernel_axes[num_contracted:]),
                         name=name)


def _constrain_BxTxH(x):
  return nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_embed"))


def gelu(x):
  """The exact (erf) GELU of the original BERT."""
  return nn.gelu(x, approximate=False)


class _GatherEmbed(nn.Embed):
  """nn.Embed that gathers rows from the param-dtype table and casts after.

  nn.Embed casts the whole table to the compute dtype first, so its gradient is a bf16 scatter-add,
  which GPUs run as compare-and-swap loops: 19% of a BERT-large step on an H100 (bench/RESULTS.md).
  Gathering in fp32 makes the backward an fp32 scatter-add with native atomics.
  """

  def __call__(self, ids):
    return jnp.take(self.embedding, ids, axis=0).astype(self.dtype)


class _OneHotEmbed(nn.Embed):
  """Lookup as a one-hot matmul, for small tables (positions, token types).

  Every token hits one of a few rows, so a scatter-add gradient serialises on those rows; the
  matmul's gradient is a dense [rows, hidden] product instead.
  """

  def __call__(self, ids):
    one_hot = jax.nn.one_hot(ids, self.num_embeddings, dtype=self.dtype)
    return jnp.einsum("...v,vh->...h", one_hot, jnp.asarray(self.embedding, self.dtype))


def _gather_rows(x_BxTxH, positions_BxP):
  """x at the given positions, [B, P, H], gathered in fp32 and cast back.

  Same reason as _GatherEmbed: the gradient of a bf16 gather is a bf16 scatter-add, which GPUs run as
  compare-and-swap loops; in fp32 it uses native atomics.
  """
  wide = x_BxTxH.astype(jnp.promote_types(x_BxTxH.dtype, jnp.float32))
  return jnp.take_along_axis(wide, positions_BxP[..., None].astype(jnp.int32), axis=1).astype(x_BxTxH.dtype)


class Embeddings(nn.Module):
  config: BertConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, input_ids_BxT, segment_ids_BxT, position_ids_BxT):
    c = self.config
    embed = lambda cls, n, size, axes: cls(size, c.hidden_size, dtype=c.dtype, param_dtype=c.param_dtype,
                                           embedding_init=_init(c, axes), name=n)
    word = embed(_GatherEmbed, "word_embeddings", c.padded_vocab_size, ("vocab", "embed"))
    x = word(input_ids_BxT)
    x += embed(_OneHotEmbed, "position_embeddings", c.max_position_embeddings, (None, "embed"))(position_ids_BxT)
    x += embed(_OneHotEmbed, "token_type_embeddings", c.type_vocab_size, (None, "embed"))(segment_ids_BxT)
    x = _layer_norm(c, "layer_norm")(x)
    x = dropout_lib.Dropout(c.hidden_dropout, deterministic=self.deterministic)(x)
    return _constrain_BxTxH(x), word


class SelfAttention(nn.Module):
  config: BertConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x_BxTxH, mask):
    c = self.config
    if c.fused_qkv:
      qkv_BxTx3xNxD = _dense(c, (3, c.num_heads, c.head_dim), ("embed", None, "heads", "kv"), "qkv")(x_BxTxH)
      q, k, v = (qkv_BxTx3xNxD[:, :, j] for j in range(3))
    else:
      project = lambda name: _dense(c, (c.num_heads, c.head_dim), ("embed", "heads", "kv"), name)(x_BxTxH)
      q, k, v = project("query"), project("key"), project("value")
    dropout_rng = None
    if not self.deterministic and c.attention_dropout > 0:
      dropout_rng = self.make_rng("dropout")
    out_BxTxNxD = attention_lib.dot_product_attention(
        q, k, v, mask, implementation=c.attention_impl, dropout_rate=c.attention_dropout,
        dropout_rng=dropout_rng, deterministic=self.deterministic)
    return _dense(c, c.hidden_size, ("heads", "kv", "embed"), "output", axis=(-2, -1))(out_BxTxNxD)


class TransformerLayer(nn.Module):
  """One post-LN BERT layer: x = LN(x + Attn(x)); x = LN(x + FFN(x))."""
  config: BertConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x_BxTxH, mask):
    c = self.config
    dropout = lambda y: dropout_lib.Dropout(c.hidden_dropout, deterministic=self.deterministic)(y)
    attn = SelfAttention(c, self.deterministic, name="attention")(x_BxTxH, mask)
    x = _layer_norm(c, "attention_layer_norm")(x_BxTxH + dropout(attn))
    x = _constrain_BxTxH(x)
    h = gelu(_dense(c, c.intermediate_size, ("embed", "mlp"), "intermediate")(x))
    h = nn.with_logical_constraint(h, ("activation_batch", "activation_length", "activation_mlp"))
    y = _dense(c, c.hidden_size, ("mlp", "embed"), "output")(h)
    x = _layer_norm(c, "output_layer_norm")(x + dropout(y))
    return _constrain_BxTxH(x)


class _ScanStep(nn.Module):
  """Adapts TransformerLayer to nn.scan's (carry, x) -> (carry, y) signature."""
  config: BertConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x_BxTxH, mask):
    return TransformerLayer(self.config, self.deterministic, name="layer")(x_BxTxH, mask), None


def _remat(module_cls, policy_name: str):
  if policy_name == "none":
    return module_cls
  policy = {
      "full": None,
      "dots": jax.checkpoint_policies.checkpoint_dots,
      "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
  }[policy_name]
  return nn.remat(module_cls, policy=policy, prevent_cse=False)


class Encoder(nn.Module):
  config: BertConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x_BxTxH, mask):
    c = self.config
    if c.scan_layers:
      step = _remat(_ScanStep, c.remat_policy)
      scanned = nn.scan(step, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                        in_axes=nn.broadcast, length=c.num_layers,
                        metadata_params={nn.PARTITION_NAME: "layers"})
      x_BxTxH, _ = scanned(c, self.deterministic, name="layers")(x_BxTxH, mask)
      return x_BxTxH
    layer_cls = _remat(TransformerLayer, c.remat_policy)
    for i in range(c.num_layers):
      x_BxTxH = layer_cls(c, self.deterministic, name=f"layer_{i}")(x_BxTxH, mask)
    return x_BxTxH


class BertForPreTraining(nn.Module):
  """Encoder + NSP head (pooler, 2-way classifier) + MLM head tied to the word embeddings."""
  config: BertConfig

  @nn.compact
  def __call__(self, input_ids_BxT, input_mask_BxT, segment_ids_BxT, masked_lm_positions_BxP=None,
               *, position_ids_BxT=None, attention_segments_BxT=None, nsp_positions_BxK=None, deterministic=True):
    """Returns dict(mlm_logits [B, P or T, vocab], nsp_logits [B, 2] or [B, K, 2], sequence_output [B, T, H]).

    masked_lm_positions_BxP=None computes the MLM logits at all T positions; otherwise the
    hidden states are gathered at those positions first. attention_segments_BxT (packed rows)
    restricts attention to tokens with the same id; position_ids_BxT defaults to 0..T-1;
    nsp_positions_BxK reads the NSP head at each packed instance's [CLS] instead of at row offset 0.
    """
    c = self.config
    seq_len = input_ids_BxT.shape[1]
    if seq_len > c.max_position_embeddings:
      raise ValueError(f"sequence length {seq_len} exceeds max_position_embeddings "
                       f"({c.max_position_embeddings}); truncate inputs or raise the limit")
    if position_ids_BxT is None:
      position_ids_BxT = jnp.broadcast_to(jnp.arange(seq_len, dtype=jnp.int32), input_ids_BxT.shape)
    if attention_segments_BxT is None:
      mask = attention_lib.AttentionMask(attention_lib.padding_mask_Bx1x1xS(input_mask_BxT),
                                         jnp.sum(input_mask_BxT, axis=-1, dtype=jnp.int32), input_mask_BxT)
    else:
      mask = attention_lib.AttentionMask(
          attention_lib.segment_mask_Bx1xTxS(attention_segments_BxT, input_mask_BxT), None,
          attention_segments_BxT * input_mask_BxT)

    x, word_embed = Embeddings(c, deterministic, name="embeddings")(input_ids_BxT, segment_ids_BxT, position_ids_BxT)
    x = Encoder(c, deterministic, name="encoder")(x, mask)

    if nsp_positions_BxK is None:
      cls = x[:, 0]
    else:
      cls = _gather_rows(x, nsp_positions_BxK)
    pooled = jnp.tanh(_dense(c, c.hidden_size, ("embed", "mlp"), "pooler")(cls))
    nsp_logits_Bx2 = _dense(c, 2, ("mlp", None), "nsp_classifier")(pooled)

    gather_first = masked_lm_positions_BxP is not None and not c.mlm_all_positions
    if gather_first:
      h = _gather_rows(x, masked_lm_positions_BxP)
    else:
      h = x
    h = gelu(_dense(c, c.hidden_size, ("embed", "mlp"), "mlm_transform")(h))
    h = _layer_norm(c, "mlm_layer_norm")(h)
    logits = word_embed.attend(h)
    bias = self.param("mlm_output_bias", _zeros(("vocab",)), (c.padded_vocab_size,), c.param_dtype)
    logits = logits + jnp.asarray(bias, logits.dtype)
    logits = logits[..., :c.vocab_size]  # padded rows never win the softmax
    if masked_lm_positions_BxP is not None and not gather_first:
      logits = jnp.take_along_axis(logits, masked_lm_positions_BxP[..., None].astype(jnp.int32), axis=1)
    return {"mlm_logits": logits, "nsp_logits": nsp_logits_Bx2, "sequence_output": x}


def count_params(params) -> int:
  return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))
