"""Inverted dropout that draws 16 random bits per element instead of 32.

jax.random.bernoulli turns one 32-bit threefry output into one uniform float per element (and, with
partitionable threefry, each 32-bit output costs a whole 2x32 block). Dropout needs far less: here each
32-bit draw is split into two 16-bit halves, so the generator runs half as often, and the kept mask
is an integer compare. On the 2-core CPU the dropout RNG and mask were ~20% of a `mini` train step
(bench/RESULTS.md). The drop probability is rounded to a multiple of 2**-16 (0.1 -> 0.100006) and the
kept values are scaled by the exact inverse of the keep probability, so E[output] == input.

Bits are drawn with the shape of x (last axis halved), so they shard along the same batch/length axes
as the activations and do not depend on the mesh.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

_LEVELS = 1 << 16


def drop_threshold(rate: float) -> int:
  """16-bit values below this are dropped."""
  if not 0.0 <= rate < 1.0:
    raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
  return round(rate * _LEVELS)


def uniform_uint16(rng: jax.Array, shape) -> jax.Array:
  """uint16 random values of `shape`, two per 32-bit draw."""
  *lead, last = shape
  words = jax.random.bits(rng, (*lead, (last + 1) // 2), jnp.uint32)
  halves = jax.lax.bitcast_convert_type(words, jnp.uint16)  # [..., ceil(last/2), 2]
  return halves.reshape(*lead, -1)[..., :last]


def dropout(x: jax.Array, rate: float, rng: jax.Array) -> jax.Array:
  """Zeroes each element with probability ~rate and scales the rest so the mean is unchanged."""
  threshold = drop_threshold(rate)
  if threshold == 0:
    return x
  keep = uniform_uint16(rng, x.shape) >= threshold
  scale = _LEVELS / (_LEVELS - threshold)
  # Scaled in at least fp32, then rounded per element: the scale itself rounded to bf16 (0.1 -> 1.109375 for
  # 1.111119) would bias every kept value the same way.
  wide = jnp.promote_types(x.dtype, jnp.float32)
  return jnp.where(keep, (x.astype(wide) * jnp.asarray(scale, wide)).astype(x.dtype), jnp.zeros((), x.dtype))


class Dropout(nn.Module):
  """nn.Dropout's interface (rate, deterministic; the 'dropout' RNG stream) over `dropout` above."""
  rate: float
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.deterministic or self.rate == 0.0:
      return x
    return dropout(x, self.rate, self.make_rng("dropout"))
