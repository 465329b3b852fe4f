"""Scaled dot-product attention behind one function.

Implementations:
  "xla":   jax.nn.dot_product_attention(implementation="xla"), any backend.
  "cudnn": jax.nn.dot_product_attention(implementation="cudnn"), fused flash attention on GPU.
  "auto":  cudnn on GPU when the shapes allow it, xla elsewhere.

The fused kernels have no attention-probability dropout, so while training with
attention dropout > 0 an explicit einsum/softmax/dropout path is used instead
(and logged once). Recipes that want the fused kernel set attention_dropout=0.
"""

import functools
import logging
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("auto", "xla", "cudnn")


@functools.cache
def _log_once(message: str) -> None:
  logging.warning(message)


class AttentionMask(NamedTuple):
  """What a query may attend to.

  mask: boolean, broadcasts to [B, N, T, S].
  key_lengths_B: real keys per row when padding is a right suffix (the google schema), else None
    (packed rows). The fused cuDNN kernel takes lengths instead of a dense mask, which is its fast path.
  """
  mask: jax.Array
  key_lengths_B: Optional[jax.Array]


def padding_mask_Bx1x1xS(input_mask_BxS: jax.Array) -> jax.Array:
  """Boolean mask that lets every query attend to real (non-pad) keys only."""
  return input_mask_BxS[:, None, None, :].astype(jnp.bool_)


def segment_mask_Bx1xTxS(segment_ids_BxS: jax.Array, input_mask_BxS: jax.Array) -> jax.Array:
  """Mask for packed rows: a token attends only inside its own packed instance."""
  same = segment_ids_BxS[:, :, None] == segment_ids_BxS[:, None, :]
  real = input_mask_BxS.astype(jnp.bool_)
  return (same & real[:, None, :] & real[:, :, None])[:, None, :, :]


def _explicit_attention(q_BxTxNxD, k_BxSxNxD, v_BxSxNxD, mask, dropout_rate, dropout_rng):
  depth = q_BxTxNxD.shape[-1]
  scores_BxNxTxS = jnp.einsum("btnd,bsnd->bnts", q_BxTxNxD, k_BxSxNxD) / jnp.sqrt(depth).astype(q_BxTxNxD.dtype)
  big_neg = jnp.finfo(scores_BxNxTxS.dtype).min
  scores_BxNxTxS = jnp.where(mask, scores_BxNxTxS, big_neg)
  probs = jax.nn.softmax(scores_BxNxTxS.astype(jnp.float32), axis=-1).astype(q_BxTxNxD.dtype)
  if dropout_rate > 0.0:
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs.shape)
    probs = jnp.where(keep, probs / (1.0 - dropout_rate), jnp.zeros_like(probs))
  return jnp.einsum("bnts,bsnd->btnd", probs, v_BxSxNxD)


def _resolve(implementation: str, q_BxTxNxD) -> str:
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"attention implementation {implementation!r} is not one of {IMPLEMENTATIONS}")
  if implementation == "auto":
    on_gpu = jax.default_backend() == "gpu"
    fits_cudnn = q_BxTxNxD.dtype in (jnp.bfloat16, jnp.float16) and q_BxTxNxD.shape[-1] % 8 == 0
    if on_gpu and fits_cudnn:
      return "cudnn"
    if on_gpu:
      _log_once("attention: cuDNN needs bf16/fp16 and head_dim % 8 == 0; falling back to XLA attention")
    return "xla"
  if implementation == "cudnn" and jax.default_backend() != "gpu":
    _log_once(f"attention: cudnn requested on backend {jax.default_backend()!r}; falling back to XLA attention")
    return "xla"
  return implementation


def dot_product_attention(q_BxTxNxD, k_BxSxNxD, v_BxSxNxD, mask, *, implementation="xla",
                          dropout_rate=0.0, dropout_rng=None, deterministic=True):
  """Attention over [batch, length, heads, head_dim] inputs.

  mask: an AttentionMask, or a boolean array that broadcasts to [B, N, T, S].
  """
  key_lengths_B = None
  if isinstance(mask, AttentionMask):
    mask, key_lengths_B = mask
  if not deterministic and dropout_rate > 0.0:
    if implementation not in ("xla", "auto") or jax.default_backend() == "gpu":
      _log_once("attention: attention dropout > 0 while training; using the explicit XLA path "
                "(set model.attention_dropout=0 to use fused kernels)")
    return _explicit_attention(q_BxTxNxD, k_BxSxNxD, v_BxSxNxD, mask, dropout_rate, dropout_rng)
  impl = _resolve(implementation, q_BxTxNxD)
  if impl == "cudnn" and key_lengths_B is not None:
    return jax.nn.dot_product_attention(q_BxTxNxD, k_BxSxNxD, v_BxSxNxD, key_value_seq_lengths=key_lengths_B,
                                        implementation=impl)
  return jax.nn.dot_product_attention(q_BxTxNxD, k_BxSxNxD, v_BxSxNxD, mask=mask, implementation=impl)
