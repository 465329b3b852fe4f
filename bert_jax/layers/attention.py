"""Scaled dot-product attention behind one function.

Implementations:
  "xla":   jax.nn.dot_product_attention(implementation="xla"), any backend.
  "cudnn": jax.nn.dot_product_attention(implementation="cudnn"), fused flash attention on GPU.
  "splash": Pallas splash attention on TPU (segment ids carry padding and packing); elsewhere it runs the
           same kernel in Pallas interpret mode, which is slow and meant for tests.
  "pallas": our Pallas kernel with the attention dropout inside (layers/dropout_attention_kernel.py), forward and
           backward; Triton on GPU, interpret mode (slow, for tests) elsewhere. Opt-in until measured on a GPU.
  "auto":  cudnn on GPU when the shapes allow it, xla elsewhere.

The library kernels (xla's, cudnn, splash) have no attention-probability dropout, so while training with
attention dropout > 0 they give way to an explicit einsum/softmax/dropout path (logged once); "pallas" keeps it
in the kernel. Recipes that want a library kernel set attention_dropout=0.

Relative positions (NEZHA's functional relative positional encoding, Wei et al. 2019) add a fixed sinusoid
a_ij of the clipped distance j - i to every key and value: e_ij = q_i . (k_j + a_ij) / sqrt(D) and
z_i = sum_j p_ij (v_j + a_ij). No fused kernel takes per-pair key/value terms, so they run the explicit path.
"""

import functools
import logging
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from bert_jax.core import sharding
from bert_jax.layers import dropout as dropout_lib
from bert_jax.layers import dropout_attention_kernel

IMPLEMENTATIONS = ("auto", "xla", "cudnn", "splash", "pallas")
# absolute: a learned position table in the embeddings; relative_sinusoidal: NEZHA's fixed relative vectors.
POSITION_ENCODINGS = ("absolute", "relative_sinusoidal")
SPLASH_BLOCK = 128  # the kernel's lane width: its blocks, so the sequence length, are multiples of this


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
  segment_ids_BxS: Optional[jax.Array] = None  # 0 = padding; same id = may attend (splash's form)


def padding_mask_Bx1x1xS(input_mask_BxS: jax.Array) -> jax.Array:
  """Boolean mask that lets every query attend to real (non-pad) keys only."""
  return input_mask_BxS[:, None, None, :].astype(jnp.bool_)


def segment_mask_Bx1xTxS(segment_ids_BxS: jax.Array, input_mask_BxS: jax.Array) -> jax.Array:
  """Mask for packed rows: a token attends only inside its own packed instance."""
  same = segment_ids_BxS[:, :, None] == segment_ids_BxS[:, None, :]
  real = input_mask_BxS.astype(jnp.bool_)
  return (same & real[:, None, :] & real[:, :, None])[:, None, :, :]


def relative_sinusoid_table(max_relative_position: int, depth: int):
  """[2k+1, D] float32 sinusoids of the table index r = 0..2k (k = max_relative_position): [r, 2m] = sin(r w_m),
  [r, 2m+1] = cos(r w_m), w_m = 10000^(-2m/D). Index r stands for the distance r - k; the released NEZHA code (and
  HF's NezhaModel) take the sinusoid of the shifted index r, not of the signed distance as the paper writes, and
  pretrained weights expect that."""
  if depth % 2:
    raise ValueError(f"relative sinusoidal positions need an even head size, got {depth}")
  index = jnp.arange(2 * max_relative_position + 1, dtype=jnp.float32)
  frequencies = jnp.exp(jnp.arange(0, depth, 2, dtype=jnp.float32) * (-jnp.log(10000.0) / depth))
  angles = index[:, None] * frequencies[None, :]
  return jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1).reshape(angles.shape[0], depth)


def relative_positions_TxSxD(length: int, depth: int, max_relative_position: int, dtype):
  """a[i, j] = table[clip(j - i, -k, k) + k]: the fixed vectors added to keys and values (one set shared by all
  heads and layers; built from iotas inside the computation, so no [T, T, D] constant lands in the program)."""
  distance_TxS = jnp.arange(length)[None, :] - jnp.arange(length)[:, None]
  index_TxS = jnp.clip(distance_TxS, -max_relative_position, max_relative_position) + max_relative_position
  table = jax.lax.stop_gradient(relative_sinusoid_table(max_relative_position, depth))
  return jnp.take(table, index_TxS, axis=0).astype(dtype)


def _explicit_attention(q_BxTxNxD, k_BxSxNxD, v_BxSxNxD, mask, dropout_rate, dropout_rng, relative_TxSxD=None):
  depth = q_BxTxNxD.shape[-1]
  scores_BxNxTxS = jnp.einsum("btnd,bsnd->bnts", q_BxTxNxD, k_BxSxNxD)
  if relative_TxSxD is not None:
    scores_BxNxTxS += jnp.einsum("btnd,tsd->bnts", q_BxTxNxD, relative_TxSxD)
  scores_BxNxTxS = scores_BxNxTxS / jnp.sqrt(depth).astype(q_BxTxNxD.dtype)
  big_neg = jnp.finfo(scores_BxNxTxS.dtype).min
  scores_BxNxTxS = jnp.where(mask, scores_BxNxTxS, big_neg)
  probs = jax.nn.softmax(scores_BxNxTxS.astype(jnp.float32), axis=-1).astype(q_BxTxNxD.dtype)
  if dropout_rate > 0.0:
    probs = dropout_lib.dropout(probs, dropout_rate, dropout_rng)
  out_BxTxNxD = jnp.einsum("bnts,bsnd->btnd", probs, v_BxSxNxD)
  if relative_TxSxD is not None:
    out_BxTxNxD += jnp.einsum("bnts,tsd->btnd", probs, relative_TxSxD)
  return out_BxTxNxD


def _splash_block_sizes(seq_len: int):
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
  b = next(b for b in (512, 256, SPLASH_BLOCK) if seq_len % b == 0)  # the blocks must divide the length (640: 128)
  return splash.BlockSizes(block_q=b, block_kv=b, block_kv_compute=b, block_q_dkv=b, block_kv_dkv=b,
                           block_kv_dkv_compute=b, block_q_dq=b, block_kv_dq=b)


@functools.cache
def _splash_kernel(seq_len: int, heads: int, interpret: bool):
  """Built once per shape: the kernel precomputes its mask block tables (every layer would redo it). They are
  built as concrete arrays even when the first call is inside a jit trace: the cached kernel outlives that trace,
  and its tables held as that trace's values would leak into the next (UnexpectedTracerError)."""
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask
  mask = splash_mask.MultiHeadMask([splash_mask.FullMask((seq_len, seq_len)) for _ in range(heads)])
  with jax.ensure_compile_time_eval():
    return splash.make_splash_mha(mask, head_shards=1, q_seq_shards=1, interpret=interpret,
                                  block_sizes=_splash_block_sizes(seq_len))


def _per_shard(attend, mesh, axes, q, k, v, segment_ids, **shard_map_args):
  """attend(q, k, v, segment_ids) inside shard_map over axes = (batch mesh axes, heads mesh axes or None), the
  inputs first laid out so."""
  batch_axes, head_axes = axes
  spec = jax.sharding.PartitionSpec(batch_axes, None, head_axes, None)  # [B, T, N, D]
  seg_spec = jax.sharding.PartitionSpec(batch_axes)
  explicit = all(t == jax.sharding.AxisType.Explicit for t in mesh.axis_types)  # jax.make_mesh's default
  lay_out = jax.sharding.reshard if explicit else jax.lax.with_sharding_constraint
  place = lambda x, s: lay_out(x, jax.sharding.NamedSharding(mesh, s))
  args = (place(q, spec), place(k, spec), place(v, spec), place(segment_ids.astype(jnp.int32), seg_spec))
  return jax.shard_map(attend, mesh=mesh, in_specs=(spec, spec, spec, seg_spec), out_specs=spec,
                       **shard_map_args)(*args)


def _splash_attention(q_BxTxNxD, k_BxSxNxD, v_BxSxNxD, segment_ids_BxS):
  """Splash attention per example (vmap), full mask restricted by segment ids.

  Under a mesh (sharding.mesh_for_kernels: the trainers' kernel_mesh, or JAX's mesh context) the kernel runs
  inside shard_map over the batch and heads axes, since XLA cannot partition a Pallas call; without one it is
  called on whole arrays (one device).
  """
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
  seq_len, depth = q_BxTxNxD.shape[1], q_BxTxNxD.shape[3]
  on_tpu = jax.default_backend() == "tpu"
  if not on_tpu:
    _log_once(f"attention: splash runs in Pallas interpret mode on backend {jax.default_backend()!r} (slow)")
  to_heads_first = lambda x: jnp.swapaxes(x, 1, 2)  # [B, T, N, D] -> [B, N, T, D]
  scale = jnp.asarray(depth ** -0.5, q_BxTxNxD.dtype)

  def attend(q, k, v, seg):
    kernel = _splash_kernel(seq_len, q.shape[2], not on_tpu)  # this shard's heads
    out = jax.vmap(kernel)(to_heads_first(q * scale), to_heads_first(k), to_heads_first(v),
                           segment_ids=splash.SegmentIds(q=seg, kv=seg))
    return to_heads_first(out)

  mesh = sharding.mesh_for_kernels()
  if mesh is None:
    return attend(q_BxTxNxD, k_BxSxNxD, v_BxSxNxD, segment_ids_BxS.astype(jnp.int32))
  return _per_shard(attend, mesh, sharding.kernel_axes(), q_BxTxNxD, k_BxSxNxD, v_BxSxNxD, segment_ids_BxS)


def _pallas_dropout_attention(q_BxTxNxD, k_BxSxNxD, v_BxSxNxD, segment_ids_BxS, rate, dropout_rng):
  """The dropout kernel; under a mesh inside shard_map over the batch and heads axes (XLA cannot partition a
  Pallas call), each shard told its first global row and head so that the mask is the one a single device
  draws."""
  rng = dropout_rng if dropout_rng is not None else jax.random.key(0)  # rate 0: the key draws nothing
  mesh = sharding.mesh_for_kernels()
  if mesh is None:
    return dropout_attention_kernel.dropout_attention(q_BxTxNxD, k_BxSxNxD, v_BxSxNxD, segment_ids_BxS, rate, rng)
  batch_axes, head_axes = axes = sharding.kernel_axes()

  def attend(q, k, v, seg):
    row_offset = jax.lax.axis_index(batch_axes) * q.shape[0]
    head_offset = 0 if head_axes is None else jax.lax.axis_index(head_axes) * q.shape[2]
    return dropout_attention_kernel.dropout_attention(q, k, v, seg, rate, rng, row_offset, head_offset)
  # check_vma=False: pallas_call's outputs carry no varying-axes annotation to check
  return _per_shard(attend, mesh, axes, q_BxTxNxD, k_BxSxNxD, v_BxSxNxD, segment_ids_BxS, check_vma=False)


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
                          dropout_rate=0.0, dropout_rng=None, deterministic=True, relative_TxSxD=None):
  """Attention over [batch, length, heads, head_dim] inputs.

  mask: an AttentionMask, or a boolean array that broadcasts to [B, N, T, S].
  relative_TxSxD: relative position vectors added to keys and values (relative_positions_TxSxD), or None.
  """
  key_lengths_B = segment_ids = None
  if isinstance(mask, AttentionMask):
    mask, key_lengths_B, segment_ids = mask
  if relative_TxSxD is not None:
    if relative_TxSxD.shape[:2] != (q_BxTxNxD.shape[1], k_BxSxNxD.shape[1]):
      raise ValueError(f"relative positions {relative_TxSxD.shape[:2]} do not fit {q_BxTxNxD.shape[1]} queries and "
                       f"{k_BxSxNxD.shape[1]} keys")
    if implementation == "splash" or (implementation != "xla" and jax.default_backend() == "gpu"):
      _log_once(f"attention: relative positions add per-pair terms to keys and values, which fused kernels cannot "
                f"take; attention_impl={implementation!r} runs the explicit XLA path")
    rate = 0.0 if deterministic else dropout_rate
    return _explicit_attention(q_BxTxNxD, k_BxSxNxD, v_BxSxNxD, mask, rate, dropout_rng, relative_TxSxD)
  if implementation == "pallas":
    if segment_ids is not None and dropout_attention_kernel.supports(q_BxTxNxD, k_BxSxNxD):
      rate = 0.0 if deterministic else dropout_rate
      return _pallas_dropout_attention(q_BxTxNxD, k_BxSxNxD, v_BxSxNxD, segment_ids, rate, dropout_rng)
    _log_once(f"attention: the pallas kernel needs self-attention over a multiple of "
              f"{dropout_attention_kernel.BLOCK} tokens with segment ids; running the XLA path")
    implementation = "xla"
  if implementation == "splash" and k_BxSxNxD.shape[1] != q_BxTxNxD.shape[1]:
    _log_once("attention: splash needs as many keys as queries (prefix tuning adds keys); falling back to XLA "
              "attention")
    implementation = "xla"
  if implementation == "splash" and (deterministic or dropout_rate == 0.0):
    if segment_ids is None:
      raise ValueError("splash attention needs an AttentionMask with segment_ids_BxS")
    if q_BxTxNxD.shape[1] % SPLASH_BLOCK == 0:
      return _splash_attention(q_BxTxNxD, k_BxSxNxD, v_BxSxNxD, segment_ids)
    _log_once(f"attention: splash needs a sequence length divisible by {SPLASH_BLOCK}, got "
              f"{q_BxTxNxD.shape[1]}; falling back to XLA attention")
    implementation = "xla"
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
