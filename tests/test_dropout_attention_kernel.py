"""The Pallas attention kernel with dropout inside (interpret mode on CPU): the explicit formula with the same
mask in value and gradient, padded and packed rows; the mask's statistics; one mask on any mesh, also inside
the trainer's step."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from bert_jax.core import optim, sharding
from bert_jax.core.train_state import create_train_state
from bert_jax.layers import attention
from bert_jax.layers import dropout_attention_kernel as kernel
from bert_jax.objectives import registry as objectives
from bert_jax.trainers import pretrain
from tests import train_helpers as th

B, T, N, D = 2, 128, 2, 16


def _inputs(packed, seed=0):
  rng = np.random.default_rng(seed)
  q, k, v = (jnp.asarray(rng.normal(size=(B, T, N, D)), jnp.float32) for _ in range(3))
  segments = (np.arange(T)[None] < np.array([[T], [90]])).astype(np.int32)  # row 1 padded after 90 tokens
  if packed:
    segments[0, 64:] = 2  # row 0 holds two instances
  return q, k, v, jnp.asarray(segments)


def _seed_of(key):
  return np.uint32(int(jax.random.bits(key, (), jnp.uint32)))


def _explicit(q, k, v, segments, keep, rate):
  scores = jnp.einsum("btnd,bsnd->bnts", q, k) / np.sqrt(D)
  allowed = (segments[:, None, :, None] == segments[:, None, None, :]) & (segments[:, None, None, :] != 0)
  probs = jnp.where(allowed, jax.nn.softmax(jnp.where(allowed, scores, -1e30), axis=-1), 0.0)  # padding: 0
  return jnp.einsum("bnts,bsnd->btnd", jnp.where(keep, probs / (1 - rate), 0.0), v)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("rate", [0.0, 0.1])
def test_value_and_gradient_equal_the_explicit_formula_with_the_same_mask(packed, rate):
  q, k, v, segments = _inputs(packed)
  key = jax.random.key(3)
  keep = kernel.keep_mask_BxNxTxS(_seed_of(key), B, N, T, T, rate)
  # the cotangent is nonzero on padding rows too: the backward must differentiate what the forward computed there
  cotangent = jnp.asarray(np.random.default_rng(1).normal(size=(B, T, N, D)), jnp.float32)
  ours = lambda q, k, v: kernel.dropout_attention(q, k, v, segments, rate, key)
  theirs = lambda q, k, v: _explicit(q, k, v, segments, keep, rate)
  np.testing.assert_allclose(ours(q, k, v), theirs(q, k, v), atol=1e-5)
  grads = jax.grad(lambda *a: jnp.sum(ours(*a) * cotangent), (0, 1, 2))(q, k, v)
  expected = jax.grad(lambda *a: jnp.sum(theirs(*a) * cotangent), (0, 1, 2))(q, k, v)
  for name, got, want in zip("qkv", grads, expected):
    np.testing.assert_allclose(got, want, atol=2e-5, err_msg=name)
  if rate:
    assert abs(1 - float(np.mean(keep)) - rate) < 0.005


def test_the_mask_drops_the_rate_and_changes_with_seed_row_head_and_position():
  keep = np.asarray(kernel.keep_mask_BxNxTxS(np.uint32(12345), 8, 4, 128, 128, 0.1))
  assert abs(1 - keep.mean() - 0.1) < 0.002, keep.mean()  # 524k draws: std 4e-4
  for axis in range(4):  # neighbours along every index are independent draws: P(both dropped) = rate^2
    a, b = np.moveaxis(keep, axis, 0)[:-1], np.moveaxis(keep, axis, 0)[1:]
    assert abs(np.mean(~a & ~b) - 0.01) < 0.002, axis
  other_seed = np.asarray(kernel.keep_mask_BxNxTxS(np.uint32(12346), 8, 4, 128, 128, 0.1))
  assert abs(np.mean(~keep & ~other_seed) - 0.01) < 0.002
  shifted = np.asarray(kernel.keep_mask_BxNxTxS(np.uint32(12345), 4, 4, 128, 128, 0.1, row_offset=4))
  np.testing.assert_array_equal(shifted, keep[4:])  # a shard told its first row draws the single device's rows
  heads_2_3 = np.asarray(kernel.keep_mask_BxNxTxS(np.uint32(12345), 8, 2, 128, 128, 0.1, head_offset=2))
  np.testing.assert_array_equal(heads_2_3, keep[:, 2:])  # and its first head, where the heads are split
  assert np.all(np.asarray(kernel.keep_mask_BxNxTxS(np.uint32(1), 1, 1, 64, 64, 0.0)))
  # 2^32 / (16 heads x 128 x 128) = 16384 rows: a counter over (row, head, query, key) would wrap onto row 3 there
  far = np.asarray(kernel.keep_mask_BxNxTxS(np.uint32(7), 1, 16, 128, 128, 0.1, row_offset=16384 + 3))
  near = np.asarray(kernel.keep_mask_BxNxTxS(np.uint32(7), 1, 16, 128, 128, 0.1, row_offset=3))
  assert abs(np.mean(~far & ~near) - 0.01) < 0.002


def test_bad_rate_is_refused():
  q, k, v, segments = _inputs(False)
  with pytest.raises(ValueError, match=r"attention dropout rate must be in \[0, 1\), got 1.0"):
    kernel.dropout_attention(q, k, v, segments, 1.0, jax.random.key(0))


@pytest.mark.parametrize("mesh_shape", [(4, 2, 1), (2, 2, 2)], ids=["data_fsdp", "heads_split"])
def test_a_mesh_gives_the_single_device_output_and_gradients(mesh_shape):
  """Under a data x fsdp (x tensor) mesh the kernel runs per batch (and, with the logical rules, per heads)
  shard; each shard's rows and heads draw the mask a single device would, so the outputs and gradients equal
  the unsharded call."""
  q, k, v, segments = _inputs(True)
  q, k, v, segments = (jnp.concatenate([x] * 4) for x in (q, k, v, segments))  # 8 rows
  mask = attention.AttentionMask(None, None, segments)
  cotangent = jnp.asarray(np.random.default_rng(2).normal(size=q.shape), jnp.float32)

  def loss(q, k, v, segs):
    out = attention.dot_product_attention(q, k, v, attention.AttentionMask(None, None, segs),
                                          implementation="pallas", dropout_rate=0.1, dropout_rng=jax.random.key(5),
                                          deterministic=False)
    return jnp.sum(out * cotangent), out

  step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))
  (_, single), single_grads = step(q, k, v, mask.segment_ids_BxS)
  mesh = jax.make_mesh(mesh_shape, ("data", "fsdp", "tensor"))
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.DEFAULT_RULES):  # heads -> tensor
    assert sharding.kernel_axes() == (sharding.BATCH_AXES, "tensor")
    shard = lambda x: jax.device_put(x, NamedSharding(mesh, P(sharding.BATCH_AXES)))
    (_, sharded), sharded_grads = step(shard(q), shard(k), shard(v), shard(segments))
  np.testing.assert_allclose(sharded, single, atol=1e-6)
  for got, want in zip(sharded_grads, single_grads):
    np.testing.assert_allclose(got, want, atol=1e-5)
  assert not np.array_equal(np.asarray(single)[:2], np.asarray(single)[2:4])  # equal rows, other masks


def test_the_trainers_step_runs_the_kernel_per_batch_shard():
  """The pretraining step (no JAX mesh context: sharding.kernel_mesh) on 8 data-parallel devices runs the kernel
  per batch shard, so XLA gathers nothing to feed it, and two steps with attention dropout give one device's
  losses; so do 4 x 2 devices with the heads split over the second axis (the default rules: heads -> tensor)."""
  model_config = dataclasses.replace(th.SMALL, attention_impl="pallas", attention_dropout=0.1,
                                     max_position_embeddings=64)
  cfg = th.config(**{"train.deterministic": False})
  rules = sharding.rules_from_config(cfg.mesh.logical_axis_rules)
  batches = []
  for seed in (0, 1):  # 64 tokens: two 32-token random rows side by side
    b = th.random_batch(16, seed)
    batches.append({**b, **{k: np.concatenate([b[k], b[k]], 1) for k in ("input_ids", "input_mask", "segment_ids")}})
  runs = {}
  for data, tensor in ((1, 1), (8, 1), (4, 2)):
    mesh = sharding.create_mesh({"data": data, "fsdp": 1, "tensor": tensor}, devices=jax.devices()[:data * tensor])
    objective = objectives.make_objective(cfg.train.objective, model_config, 64, th.PRED)
    tx, schedule = optim.make_optimizer(cfg.optim, cfg.train.steps)
    with nn.logical_axis_rules(rules):
      state, shardings = create_train_state(objective.init_params, tx, mesh, rules, 0)
      step_fn, _ = pretrain.make_step_functions(cfg, objective, tx, schedule, mesh, shardings)
      compiled = step_fn.lower(state, sharding.global_batch(batches[0], mesh)).compile()  # run, not traced again
      losses = []
      for b in batches:
        state, metrics = compiled(state, sharding.global_batch(b, mesh))
        losses.append(float(metrics["loss"]))
    runs[data, tensor] = losses, compiled.as_text().count("all-gather")
  assert runs[8, 1][1] == 0, "the kernel's inputs were gathered to every device"
  np.testing.assert_allclose(runs[8, 1][0], runs[1, 1][0], rtol=1e-5)
  np.testing.assert_allclose(runs[4, 2][0], runs[1, 1][0], rtol=1e-5)
