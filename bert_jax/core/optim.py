"""Optimizer: optax AdamW or LAMB, warmup + linear/polynomial decay, weight-decay mask, clipping."""

import jax
import jax.numpy as jnp
import optax


def learning_rate_schedule(peak: float, warmup_steps: int, total_steps: int, decay: str = "linear",
                           power: float = 1.0, end: float = 0.0) -> optax.Schedule:
  """Linear warmup 0 -> peak over warmup_steps, then decay to `end` at total_steps."""
  if total_steps <= warmup_steps:
    raise ValueError(f"total steps ({total_steps}) must exceed warmup steps ({warmup_steps})")
  warmup = optax.linear_schedule(0.0, peak, warmup_steps)
  decay_steps = total_steps - warmup_steps
  if decay == "linear":
    after = optax.linear_schedule(peak, end, decay_steps)
  elif decay == "polynomial":
    after = optax.polynomial_schedule(peak, end, power, decay_steps)
  else:
    raise ValueError(f"decay {decay!r} is not 'linear' or 'polynomial'")
  return optax.join_schedules([warmup, after], [warmup_steps])


def weight_decay_mask(params):
  """True where weight decay applies: everything except biases and LayerNorm params."""
  def decays(path, _):
    names = [getattr(k, "key", str(k)) for k in path]
    leaf = names[-1]
    in_layer_norm = any("layer_norm" in n for n in names)
    return not (leaf == "bias" or leaf.endswith("_bias") or in_layer_norm)
  return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(c, total_steps: int):
  """(optax transform, schedule) from the config's `optim` section."""
  schedule = learning_rate_schedule(c.peak_learning_rate, c.warmup_steps, total_steps, c.decay, c.power,
                                    c.end_learning_rate)
  mu_dtype = jnp.dtype(c.state_dtype) if c.state_dtype else None
  if c.name == "adamw":
    tx = optax.adamw(schedule, b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=c.weight_decay, mask=weight_decay_mask,
                     mu_dtype=mu_dtype)
  elif c.name == "lamb":
    tx = optax.lamb(schedule, b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=c.weight_decay, mask=weight_decay_mask)
  else:
    raise ValueError(f"optimizer {c.name!r} is not 'adamw' or 'lamb'")
  if c.clip_norm and c.clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(c.clip_norm), tx)
  return tx, schedule
