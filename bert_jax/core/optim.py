"""Optimizer: optax AdamW or LAMB, warmup + linear/polynomial decay, weight-decay mask, clipping, and
parameter rules (core/param_rules.py) that freeze parameters or change their weight decay."""

import jax.numpy as jnp
import optax

from bert_jax.core import param_rules


DECAY_FROM = ("warmup_end", "start")


def learning_rate_schedule(peak: float, warmup_steps: int, total_steps: int, decay: str = "linear",
                           power: float = 1.0, end: float = 0.0, decay_from: str = "warmup_end") -> optax.Schedule:
  """Linear warmup 0 -> peak over warmup_steps, then decay to `end` at total_steps. decay_from="warmup_end" decays
  from peak at the end of warmup (HF's get_linear_schedule_with_warmup, NVIDIA's PolyWarmUpScheduler); "start"
  follows one decay curve over all total_steps from step 0, warmup replacing its start (google-research/bert's and
  albert's optimization.py), so the rate after warmup is below peak."""
  if total_steps <= warmup_steps:
    raise ValueError(f"total steps ({total_steps}) must exceed warmup steps ({warmup_steps}): raise train.steps "
                     f"(or optim.schedule_steps) or lower optim.warmup_steps")
  if decay_from not in DECAY_FROM:
    raise ValueError(f"optim.decay_from={decay_from!r} is not one of {DECAY_FROM}")
  if decay not in ("linear", "polynomial"):
    raise ValueError(f"decay {decay!r} is not 'linear' or 'polynomial'")
  warmup = optax.linear_schedule(0.0, peak, warmup_steps)
  span = total_steps - warmup_steps if decay_from == "warmup_end" else total_steps
  curve = optax.polynomial_schedule(peak, end, power if decay == "polynomial" else 1.0, span)
  after = curve if decay_from == "warmup_end" else (lambda count: curve(count + warmup_steps))
  return optax.join_schedules([warmup, after], [warmup_steps])


def weight_decay_mask(params):
  """True where weight decay applies: everything except biases and LayerNorm params."""
  return param_rules.decay_mask(params, ())


def schedule_steps(c, train_steps: int) -> int:
  """Steps the learning-rate schedule spans: the `optim` section's schedule_steps, or the run's length when 0. A
  longer schedule lets a run train the first train_steps of a longer recipe (ELECTRA's first 6k of 1M, say)."""
  if not c.schedule_steps:
    return train_steps
  if c.schedule_steps < train_steps:
    raise ValueError(f"optim.schedule_steps ({c.schedule_steps}) is shorter than train.steps ({train_steps}): the "
                     f"learning rate would reach its end before the run does; set it to at least {train_steps}, or "
                     f"to 0 to span the run")
  return c.schedule_steps


def make_optimizer(c, total_steps: int, rules=()):
  """(optax transform, schedule) from the config's `optim` section. `rules` (param_rules.ParamRule) freeze
  parameters (no optimizer state, never updated) or set their weight decay; clipping sees trainable grads only."""
  schedule = learning_rate_schedule(c.peak_learning_rate, c.warmup_steps, total_steps, c.decay, c.power,
                                    c.end_learning_rate, c.decay_from)
  decay_mask = lambda params: param_rules.decay_mask(params, rules)
  mu_dtype = jnp.dtype(c.state_dtype) if c.state_dtype else None
  if c.name == "adamw":
    tx = optax.adamw(schedule, b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=c.weight_decay, mask=decay_mask,
                     mu_dtype=mu_dtype)
  elif c.name == "lamb":
    # optax.lamb scales every tensor's step by its trust ratio |w| / |step|. A zero-initialised bias then moves by
    # lr * |b| a step and stays near zero for thousands of steps. google-research/albert's LAMB excludes biases and
    # LayerNorm from the layer adaptation as from weight decay: they take Adam's step.
    tx = optax.chain(optax.scale_by_adam(b1=c.b1, b2=c.b2, eps=c.eps, mu_dtype=mu_dtype),
                     optax.add_decayed_weights(c.weight_decay, decay_mask),
                     optax.masked(optax.scale_by_trust_ratio(), decay_mask),
                     optax.scale_by_learning_rate(schedule))
  else:
    raise ValueError(f"optimizer {c.name!r} is not 'adamw' or 'lamb'")
  if c.clip_norm and c.clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(c.clip_norm), tx)
  if any(r.trainable is False for r in rules):
    tx = optax.multi_transform({param_rules.TRAIN: tx, param_rules.FROZEN: optax.set_to_zero()},
                               lambda params: param_rules.labels(params, rules))
  return tx, schedule
