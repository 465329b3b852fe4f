"""Attention with its probability dropout inside one Pallas kernel, forward and backward (#16, item 2).

Neither jax.nn.dot_product_attention nor splash takes attention dropout, and cuDNN's fused dropout draws from a
static seed with a per-kernel offset (bench/attention_dropout_check.py). Here the mask is a counter-based hash of
(seed, row, head, query, key): the seed comes from the layer's JAX dropout key, so every layer and step draws its
own mask, `train.seed` reaches it, a resumed run draws the same masks, and the backward kernels recompute the
forward's mask instead of storing it.

Every key of a row fits one block (BERT's 128 and 512), so the softmax needs no online rescaling: the forward
kernel runs per (row, head, query block) and saves the log-sum-exp; one backward kernel per query block gives dq,
one per key block gives dk and dv. Off a GPU the kernels run in Pallas interpret mode (slow; for tests).
Whether it beats the explicit path on a GPU is measured in bench/gpu_suite.sh before anything selects it.

XLA cannot partition a Pallas call. Under a mesh (core/sharding.mesh_for_kernels) layers/attention.py runs the
kernel per batch shard under shard_map, each shard told its first global row, so the mask is the one a single
device draws; a mesh that splits the heads (tensor parallelism) tells it its first head too (tested). The
trainers trace their steps under sharding.kernel_mesh rather than jax.set_mesh:
under jax.set_mesh flax would apply its logical constraints, and they reject the query/key/value projections'
reshaped kernels (flax checks each param's shape with its initialiser, which unboxes the flat 2-D kernel under
its 3 axis names). The GPU stages are single-GPU.
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

BLOCK = 64            # queries (or keys) per program
_BIG_NEG = -1e30      # masked scores: finite, so fully masked (padding) rows stay NaN-free


def _mix32(x):
  """murmur3's 32-bit finaliser: every input bit flips each output bit with probability ~1/2."""
  x = x ^ jax.lax.shift_right_logical(x, jnp.uint32(16))
  x = x * jnp.uint32(0x85EBCA6B)
  x = x ^ jax.lax.shift_right_logical(x, jnp.uint32(13))
  x = x * jnp.uint32(0xC2B2AE35)
  return x ^ jax.lax.shift_right_logical(x, jnp.uint32(16))


def keep_mask(seed, row, head, query, key, queries: int, keys: int, rate: float):
  """True where an attention probability is kept; broadcasts its integer index arguments. The row goes into the
  seed rather than the counter, so no batch size makes the 32-bit counter wrap onto another row's mask."""
  row_seed = _mix32(seed ^ _mix32(row.astype(jnp.uint32) * jnp.uint32(0x9E3779B9) + jnp.uint32(0x632BE5AB)))
  counter = (head.astype(jnp.uint32) * jnp.uint32(queries) + query.astype(jnp.uint32)) * jnp.uint32(keys) + \
      key.astype(jnp.uint32)
  bits = _mix32(_mix32(counter ^ row_seed) + row_seed * jnp.uint32(0x9E3779B9))
  return bits >= jnp.uint32(min(int(rate * 2.0 ** 32), 2 ** 32 - 1))


def keep_mask_BxNxTxS(seed, batch: int, heads: int, queries: int, keys: int, rate: float, row_offset=0,
                      head_offset=0):
  """The whole mask the kernels draw, in plain JAX (tests compare against it)."""
  row = jnp.arange(batch)[:, None, None, None] + row_offset
  head = jnp.arange(heads)[None, :, None, None] + head_offset
  query = jnp.arange(queries)[None, None, :, None]
  key = jnp.arange(keys)[None, None, None, :]
  return keep_mask(jnp.uint32(seed), row, head, query, key, queries, keys, rate)


def _masked_scores(q, k, seg_q, seg_k, scale):
  """(scores with disallowed pairs at _BIG_NEG, allowed) for queries q against keys k."""
  s = jax.lax.dot_general(q, k, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32) * scale
  allowed = (seg_q[:, None] == seg_k[None, :]) & (seg_k[None, :] != 0)
  return jnp.where(allowed, s, _BIG_NEG), allowed


def _program_keep(meta_ref, query, key, queries, keys, rate):
  """keep_mask for this program's (row, head) and the given query/key indices; meta = (seed, first row, first
  head, unused)."""
  row, head = pl.program_id(0) + meta_ref[1], pl.program_id(1) + meta_ref[2]
  return keep_mask(meta_ref[0].astype(jnp.uint32), row, head, query, key, queries, keys, rate)


def _forward_kernel(meta_ref, q_ref, k_ref, v_ref, segq_ref, segk_ref, o_ref, lse_ref, *, scale, rate, shape):
  queries, keys = shape
  s, allowed = _masked_scores(q_ref[...], k_ref[...], segq_ref[...], segk_ref[...], scale)       # [bq, S]
  m = jnp.max(s, axis=1)
  p = jnp.exp(s - m[:, None])
  total = jnp.sum(p, axis=1)
  # a padding query may attend to nothing: its probabilities (so output and gradients) are 0, as the backward
  # kernels rebuild them from the log-sum-exp, which at _BIG_NEG cannot tell 1/S from 1
  p = jnp.where(allowed, p / total[:, None], 0.0)
  query = pl.program_id(2) * BLOCK + jnp.arange(BLOCK)[:, None]
  keep = _program_keep(meta_ref, query, jnp.arange(keys)[None, :], queries, keys, rate)
  dropped = jnp.where(keep, p * (1.0 / (1.0 - rate)), 0.0).astype(v_ref.dtype)
  o_ref[...] = jnp.dot(dropped, v_ref[...], preferred_element_type=jnp.float32).astype(o_ref.dtype)
  lse_ref[...] = m + jnp.log(total)


def _dq_kernel(meta_ref, q_ref, k_ref, v_ref, segq_ref, segk_ref, do_ref, lse_ref, delta_ref, dq_ref, *, scale,
               rate, shape):
  queries, keys = shape
  k = k_ref[...]
  s, allowed = _masked_scores(q_ref[...], k, segq_ref[...], segk_ref[...], scale)
  p = jnp.where(allowed, jnp.exp(s - lse_ref[...][:, None]), 0.0)
  query = pl.program_id(2) * BLOCK + jnp.arange(BLOCK)[:, None]
  keep = _program_keep(meta_ref, query, jnp.arange(keys)[None, :], queries, keys, rate)
  d_dropped = jax.lax.dot_general(do_ref[...], v_ref[...], (((1,), (1,)), ((), ())),
                                  preferred_element_type=jnp.float32)                     # [bq, S]
  dp = jnp.where(keep, d_dropped * (1.0 / (1.0 - rate)), 0.0)
  ds = p * (dp - delta_ref[...][:, None])
  dq_ref[...] = (jnp.dot(ds.astype(k.dtype), k, preferred_element_type=jnp.float32) * scale).astype(dq_ref.dtype)


def _dkdv_kernel(meta_ref, q_ref, k_ref, v_ref, segq_ref, segk_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref, *,
                 scale, rate, shape):
  queries, keys = shape
  q, do = q_ref[...], do_ref[...]
  # keys against queries: the transposed scores and mask (equal segments are both padding or both not)
  s_t, allowed_t = _masked_scores(k_ref[...], q, segk_ref[...], segq_ref[...], scale)            # [bk, T]
  p_t = jnp.where(allowed_t, jnp.exp(s_t - lse_ref[...][None, :]), 0.0)
  key = pl.program_id(2) * BLOCK + jnp.arange(BLOCK)[:, None]
  keep_t = _program_keep(meta_ref, jnp.arange(queries)[None, :], key, queries, keys, rate)
  dropped_t = jnp.where(keep_t, p_t * (1.0 / (1.0 - rate)), 0.0)
  dv_ref[...] = jnp.dot(dropped_t.astype(do.dtype), do, preferred_element_type=jnp.float32).astype(dv_ref.dtype)
  d_dropped_t = jax.lax.dot_general(v_ref[...], do, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
  dp_t = jnp.where(keep_t, d_dropped_t * (1.0 / (1.0 - rate)), 0.0)
  ds_t = p_t * (dp_t - delta_ref[...][None, :])
  dk_ref[...] = (jnp.dot(ds_t.astype(q.dtype), q, preferred_element_type=jnp.float32) * scale).astype(dk_ref.dtype)


def _call(kernel, grid, in_specs, out_specs, out_shape, interpret, **params):
  return pl.pallas_call(functools.partial(kernel, **params), grid=grid, in_specs=in_specs, out_specs=out_specs,
                        out_shape=out_shape, interpret=interpret)


def _forward(q, k, v, segment_ids, meta, rate, interpret):
  batch, queries, heads, depth = q.shape
  keys = k.shape[1]
  scale = depth ** -0.5
  blocked = pl.BlockSpec((None, BLOCK, None, depth), lambda b, n, i: (b, i, n, 0))
  whole = pl.BlockSpec((None, keys, None, depth), lambda b, n, i: (b, 0, n, 0))
  meta_spec = pl.BlockSpec((4,), lambda b, n, i: (0,))
  in_specs = [meta_spec, blocked, whole, whole, pl.BlockSpec((None, BLOCK), lambda b, n, i: (b, i)),
              pl.BlockSpec((None, keys), lambda b, n, i: (b, 0))]
  out_specs = [blocked, pl.BlockSpec((None, None, BLOCK), lambda b, n, i: (b, n, i))]
  out_shape = [jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((batch, heads, queries), jnp.float32)]
  return _call(_forward_kernel, (batch, heads, queries // BLOCK), in_specs, out_specs, out_shape, interpret,
               scale=scale, rate=rate, shape=(queries, keys))(meta, q, k, v, segment_ids, segment_ids)


def _backward(q, k, v, segment_ids, meta, out, lse, d_out, rate, interpret):
  batch, queries, heads, depth = q.shape
  keys = k.shape[1]
  scale = depth ** -0.5
  delta = jnp.transpose(jnp.sum(out.astype(jnp.float32) * d_out.astype(jnp.float32), axis=-1), (0, 2, 1))
  meta_spec = pl.BlockSpec((4,), lambda b, n, i: (0,))
  blocked = pl.BlockSpec((None, BLOCK, None, depth), lambda b, n, i: (b, i, n, 0))
  stats_blocked = pl.BlockSpec((None, None, BLOCK), lambda b, n, i: (b, n, i))
  params = dict(scale=scale, rate=rate, shape=(queries, keys))

  whole_keys = pl.BlockSpec((None, keys, None, depth), lambda b, n, i: (b, 0, n, 0))
  dq = _call(_dq_kernel, (batch, heads, queries // BLOCK),
             [meta_spec, blocked, whole_keys, whole_keys, pl.BlockSpec((None, BLOCK), lambda b, n, i: (b, i)),
              pl.BlockSpec((None, keys), lambda b, n, i: (b, 0)), blocked, stats_blocked, stats_blocked],
             blocked, jax.ShapeDtypeStruct(q.shape, q.dtype), interpret, **params)(
                 meta, q, k, v, segment_ids, segment_ids, d_out, lse, delta)

  whole_queries = pl.BlockSpec((None, queries, None, depth), lambda b, n, j: (b, 0, n, 0))
  stats_whole = pl.BlockSpec((None, None, queries), lambda b, n, j: (b, n, 0))
  dk, dv = _call(_dkdv_kernel, (batch, heads, keys // BLOCK),
                 [meta_spec, whole_queries, blocked, blocked, pl.BlockSpec((None, queries), lambda b, n, j: (b, 0)),
                  pl.BlockSpec((None, BLOCK), lambda b, n, j: (b, j)), whole_queries, stats_whole, stats_whole],
                 [blocked, blocked], [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
                 interpret, **params)(meta, q, k, v, segment_ids, segment_ids, d_out, lse, delta)
  return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _attention(q, k, v, segment_ids, meta, rate, interpret):
  return _forward(q, k, v, segment_ids, meta, rate, interpret)[0]


def _attention_fwd(q, k, v, segment_ids, meta, rate, interpret):
  out, lse = _forward(q, k, v, segment_ids, meta, rate, interpret)
  return out, (q, k, v, segment_ids, meta, out, lse)


def _attention_bwd(rate, interpret, residuals, d_out):
  q, k, v, segment_ids, meta, out, lse = residuals
  dq, dk, dv = _backward(q, k, v, segment_ids, meta, out, lse, d_out, rate, interpret)
  return dq, dk, dv, None, None


_attention.defvjp(_attention_fwd, _attention_bwd)


def supports(q_BxTxNxD, k_BxSxNxD) -> bool:
  """Self-attention whose length is a multiple of BLOCK (every key in one block); on a GPU, Triton also needs
  every block dimension a power of 2 and dots at least 16 deep."""
  length, depth = q_BxTxNxD.shape[1], q_BxTxNxD.shape[-1]
  if k_BxSxNxD.shape[1] != length or length % BLOCK:
    return False
  if jax.default_backend() == "gpu":
    power_of_2 = lambda n: n & (n - 1) == 0
    return power_of_2(length) and power_of_2(depth) and depth >= 16
  return True


def dropout_attention(q_BxTxNxD, k_BxSxNxD, v_BxSxNxD, segment_ids_BxS, rate: float, dropout_rng,
                      row_offset=0, head_offset=0, interpret=None):
  """softmax(q k^T / sqrt(D)) with inverted dropout at `rate`, times v; a query attends to keys of its own
  segment (0 = padding). row_offset, head_offset: the global indices of this shard's first row and head (the
  mask is the same on any mesh)."""
  if not 0.0 <= rate < 1.0:
    raise ValueError(f"attention dropout rate must be in [0, 1), got {rate}")
  if interpret is None:
    interpret = jax.default_backend() != "gpu"
  seed = jax.lax.bitcast_convert_type(jax.random.bits(dropout_rng, (), jnp.uint32), jnp.int32)
  # 4 entries, the last unused: Triton blocks have power-of-2 sizes
  meta = jnp.stack([seed, jnp.asarray(row_offset, jnp.int32), jnp.asarray(head_offset, jnp.int32), jnp.int32(0)])
  return _attention(q_BxTxNxD, k_BxSxNxD, v_BxSxNxD, segment_ids_BxS.astype(jnp.int32), meta, float(rate),
                    bool(interpret))
