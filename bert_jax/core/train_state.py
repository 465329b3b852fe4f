"""The train state and its creation under derived shardings (eval_shape -> logical specs -> shardings).

Shared by pretraining and fine-tuning; knows no model: it takes an init_params(rng) function.
"""

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from bert_jax.core import sharding


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: dict
  opt_state: optax.OptState
  rng: jax.Array  # raw uint32 key data; dropout uses fold_in(rng, step)


def state_functions(init_params, tx, mesh, rules, seed: int):
  """For any init_params(rng) -> logically boxed params: (init_state(rng, params=None), abstract state,
  state shardings). init_state builds fresh params unless given some (e.g. pretrained, already sharded)."""
  def init_state(rng, params=None):
    params = nn.unbox(init_params(rng)) if params is None else params
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      rng=jax.random.key_data(jax.random.fold_in(rng, 1)))

  rng = jax.random.key(seed)
  param_specs = nn.get_partition_spec(jax.eval_shape(init_params, rng))
  param_shardings = sharding.logical_to_sharding(param_specs, mesh, rules)
  abstract = jax.eval_shape(init_state, rng)
  replicated = sharding.replicated(mesh)
  state_shardings = TrainState(
      step=replicated, params=param_shardings,
      opt_state=sharding.shardings_by_path(abstract.opt_state, jax.tree_util.tree_leaves_with_path(param_shardings),
                                           replicated),
      rng=replicated)
  return init_state, abstract, state_shardings


def create_train_state(init_params, tx, mesh, rules, seed: int):
  """(state, state shardings) by jit(init, out_shardings): parameters are created directly in their
  shards; no host ever holds the full set."""
  init_state, _, state_shardings = state_functions(init_params, tx, mesh, rules, seed)
  state = jax.jit(init_state, out_shardings=state_shardings)(jax.random.key(seed))
  return state, state_shardings
