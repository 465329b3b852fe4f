"""model.fp8: FP8 projections with delayed scaling, their statistics carried through the step, microbatches,
checkpoints and export. On CPU XLA emulates the FP8 arithmetic, so these check numbers, not speed."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bert_jax.convert import workdir as workdir_lib
from bert_jax.core import param_rules, sharding
from bert_jax.models import name_tables, pretraining
from bert_jax.models.bert import BertConfig
from tests import train_helpers as th

FP8 = dataclasses.replace(th.SMALL, fp8=True, fp8_amax_history=4)
PROJECTIONS = ("attention/query", "attention/key", "attention/value", "attention/output", "intermediate", "output")


def _meta(params):
  """path -> value of every FP8 statistic."""
  return {param_rules.path_of(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(params)
          if param_rules.is_overwritten(param_rules.path_of(k))}


def _one_device_mesh():
  return sharding.create_mesh({"data": 1, "fsdp": 1, "tensor": 1, "sequence": 1}, devices=jax.devices()[:1])


def test_statistics_sit_on_the_layer_projections_only():
  model = pretraining.EncoderWithHeads(FP8, ("mlm", "nsp"))
  ids = jnp.ones((2, th.SEQ), jnp.int32)
  params = nn.unbox(jax.jit(model.init)(jax.random.key(0), ids, ids, ids, jnp.zeros((2, th.PRED), jnp.int32))["params"])
  scopes = sorted({p.rsplit("/fp8_meta/", 1)[0] for p in _meta(params)})
  assert scopes == sorted(f"encoder/layer_{i}/{proj}" for i in range(2) for proj in PROJECTIONS)
  plain = nn.unbox(jax.jit(pretraining.EncoderWithHeads(th.SMALL, ("mlm", "nsp")).init)(
      jax.random.key(0), ids, ids, ids, jnp.zeros((2, th.PRED), jnp.int32))["params"])
  # Statistics are all the model adds: the trained parameters and their count are those of the bf16 model.
  assert jax.tree_util.tree_structure(param_rules.without_overwritten(params)) == jax.tree_util.tree_structure(plain)
  assert param_rules.count(params, ()) == param_rules.count(plain, ())


def test_fp8_outputs_track_the_full_precision_model():
  model_fp8 = pretraining.EncoderWithHeads(FP8, ("mlm",))
  model = pretraining.EncoderWithHeads(th.SMALL, ("mlm",))
  b = th.random_batch(4)
  args = (b["input_ids"], b["input_mask"], b["segment_ids"], b["masked_lm_positions"])
  params = nn.unbox(jax.jit(model_fp8.init)(jax.random.key(0), *args)["params"])
  fp8_out = jax.jit(model_fp8.apply)({"params": params}, *args)["mlm_logits"]
  ref = jax.jit(model.apply)({"params": param_rules.without_overwritten(params)}, *args)["mlm_logits"]
  rel = float(jnp.linalg.norm(fp8_out - ref) / jnp.linalg.norm(ref))
  # e4m3 keeps 3 mantissa bits (relative rounding error up to 1/16), so the logits differ, but only by that much.
  assert 1e-4 < rel < 0.1, rel


def test_a_step_writes_the_new_statistics_and_the_optimizer_never_sees_them():
  cfg = th.config()
  mesh = _one_device_mesh()
  state, step_fn, _, rules = th.build(cfg, mesh, FP8)
  before = _meta(state.params)
  assert all(np.all(v == (1.0 if k.endswith("_scale") else 0.0)) for k, v in before.items())
  batch = th.random_batch(8)
  with nn.logical_axis_rules(rules):
    state, metrics = step_fn(state, sharding.global_batch(batch, mesh))
  after = _meta(state.params)
  # The newest amax goes to slot 0 of each history: every projection saw a nonzero input, kernel and gradient.
  histories = {k: v for k, v in after.items() if k.endswith("amax_history")}
  assert len(histories) == 2 * len(PROJECTIONS) * 3
  assert all(v[0] > 0 and np.all(v[1:] == 0) for v in histories.values())
  # The kernel's amax is max |kernel| of the weights the step started from.
  query = "encoder/layer_0/attention/query"
  kernel = np.asarray(nn.unbox(th.objective_for(cfg, FP8).init_params(jax.random.key(0)))["encoder"]["layer_0"]
                      ["attention"]["query"]["kernel"])
  np.testing.assert_allclose(after[f"{query}/fp8_meta/kernel_amax_history"][0], np.abs(kernel).max(), rtol=1e-6)
  # Scales come from the history before the step (all zero): they stay 1 this step, and the optimizer (AdamW with
  # weight decay) left them exactly there.
  assert all(np.all(v == 1.0) for k, v in after.items() if k.endswith("_scale"))
  # The optimizer got zeros for them: AdamW's moments for every statistic are still zero (and so they stayed out
  # of clipping and grad_norm).
  moments = [v for k, v in jax.tree_util.tree_leaves_with_path(state.opt_state)
             if "fp8_meta" in param_rules.path_of(k) and getattr(v, "ndim", 0) > 0]
  assert moments and all(np.all(np.asarray(v) == 0) for v in moments)
  assert np.isfinite(float(metrics["loss"]))
  assert np.isfinite(float(metrics["grad_norm"]))
  with nn.logical_axis_rules(rules):
    state, _ = step_fn(state, sharding.global_batch(th.random_batch(8, seed=1), mesh))
  second = _meta(state.params)
  # Step 2 scales by the recorded amax: scale = amax / fp8 max (448 for e4m3).
  np.testing.assert_allclose(second[f"{query}/fp8_meta/kernel_scale"],
                             after[f"{query}/fp8_meta/kernel_amax_history"].max() / 448.0, rtol=1e-6)
  # The history is a ring: the step's amax overwrites slot 0 after the others moved one slot down (0 -> last).
  np.testing.assert_array_equal(second[f"{query}/fp8_meta/kernel_amax_history"][-1],
                                after[f"{query}/fp8_meta/kernel_amax_history"][0])


def test_microbatches_record_what_the_whole_batch_would():
  mesh = _one_device_mesh()
  batch = th.random_batch(8)
  states = {}
  for n in (1, 2):
    cfg = th.config(**{"train.microbatches": n})
    state, step_fn, _, rules = th.build(cfg, mesh, FP8)
    with nn.logical_axis_rules(rules):
      states[n], _ = step_fn(state, sharding.global_batch(batch, mesh))
  one, two = _meta(states[1].params), _meta(states[2].params)
  # The loss divides by whole-batch denominators, so each microbatch's gradients are its share of the batch's:
  # the max over microbatches is the whole batch's amax, for inputs, kernels and output gradients alike.
  for path in one:
    np.testing.assert_allclose(two[path], one[path], rtol=1e-5, err_msg=path)


def test_fp8_loss_follows_the_bf16_loss():
  mesh = _one_device_mesh()
  batches = [th.random_batch(16, seed=0)] * 6
  cfg = th.config(**{"optim.peak_learning_rate": 1e-3})
  bf16 = dataclasses.replace(th.SMALL, dtype="bfloat16")
  _, ref = th.run_steps(cfg, mesh, batches, bf16)
  _, fp8 = th.run_steps(cfg, mesh, batches, dataclasses.replace(FP8, dtype="bfloat16"))
  assert fp8[-1] < fp8[0] - 0.05, fp8  # it learns the repeated batch
  np.testing.assert_allclose(fp8, ref, rtol=0.03)


def test_fp8_params_fit_a_model_without_fp8_and_back():
  ids = jnp.ones((1, th.SEQ), jnp.int32)
  pos = jnp.zeros((1, th.PRED), jnp.int32)
  init = lambda c: nn.unbox(pretraining.EncoderWithHeads(c, ("mlm",)).init(jax.random.key(1), ids, ids, ids, pos)
                            ["params"])
  trained = jax.tree_util.tree_map(lambda x: x + 1.0, init(FP8))  # statistics and weights both differ from fresh
  shard = lambda tree: jax.tree_util.tree_map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), tree)
  plain_like = init(th.SMALL)
  plain = workdir_lib.fit_params(trained, plain_like, shard(plain_like), th.SMALL, "test")
  assert not _meta(plain)
  np.testing.assert_array_equal(plain["encoder"]["layer_0"]["output"]["kernel"],
                                trained["encoder"]["layer_0"]["output"]["kernel"])
  fp8_like = init(FP8)
  back = workdir_lib.fit_params(plain, fp8_like, shard(fp8_like), FP8, "test")
  # Weights come from the saved params, statistics start fresh (a new run records its own history).
  np.testing.assert_array_equal(back["encoder"]["layer_1"]["intermediate"]["kernel"],
                                trained["encoder"]["layer_1"]["intermediate"]["kernel"])
  assert set(_meta(back)) == set(_meta(fp8_like))
  assert all(np.array_equal(v, _meta(fp8_like)[k]) for k, v in _meta(back).items())


def test_fp8_with_shared_layers_is_refused_naming_both_fixes():
  with pytest.raises(ValueError, match="model.fp8=False or model.layer_sharing=none"):
    BertConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, fp8=True,
               layer_sharing="all")


def test_sharded_fp8_steps_equal_one_device():
  """Statistics are replicated; an amax over a sharded tensor is a max across its shards, so a 2 x 2 x 2 mesh
  records what one device records and the losses agree."""
  batches = [th.random_batch(16, seed=s) for s in range(3)]
  runs = {}
  for shape in ((1, 1, 1), (2, 2, 2)):
    mesh = sharding.create_mesh(dict(zip(sharding.MESH_AXES, shape)), devices=jax.devices()[:int(np.prod(shape))])
    state, losses = th.run_steps(th.config(), mesh, batches, FP8)
    runs[shape] = losses, _meta(state.params)
    statistics = [v for k, v in jax.tree_util.tree_leaves_with_path(state.params)
                  if param_rules.is_overwritten(param_rules.path_of(k))]
    assert statistics and all(v.sharding.is_fully_replicated for v in statistics)
  (ref_losses, ref_meta), (losses, meta) = runs[(1, 1, 1)], runs[(2, 2, 2)]
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  for path, value in ref_meta.items():
    np.testing.assert_allclose(meta[path], value, rtol=1e-5, err_msg=path)


def test_scanned_layers_keep_each_layers_statistics_as_unrolled_layers_do():
  """Under model.scan_layers the statistics are stacked like the weights, one history per layer: from the same
  weights, a scanned run's losses and statistics are those of the unrolled run."""
  mesh, cfg = _one_device_mesh(), th.config()
  batches = [th.random_batch(8, seed=s) for s in range(3)]
  runs, start = {}, None
  for scan in (False, True):
    state, step_fn, _, rules = th.build(cfg, mesh, dataclasses.replace(FP8, scan_layers=scan))
    if scan:
      stacked = name_tables.scan_params(start, FP8.num_layers)
      state = state.replace(params=jax.tree_util.tree_map(
          lambda like, value: jax.device_put(np.asarray(value), like.sharding), state.params, stacked))
    else:
      start = jax.device_get(state.params)  # the unrolled weights, kept before the step donates them
    losses = []
    with nn.logical_axis_rules(rules):
      for batch in batches:
        state, metrics = step_fn(state, sharding.global_batch(batch, mesh))
        losses.append(float(metrics["loss"]))
    runs[scan] = losses, _meta(name_tables.unscan_params(jax.device_get(state.params), FP8.num_layers))
  (ref_losses, ref_meta), (losses, meta) = runs[False], runs[True]
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-6)
  assert sorted(meta) == sorted(ref_meta)
  for path, value in ref_meta.items():
    np.testing.assert_allclose(meta[path], value, rtol=1e-6, err_msg=path)
  query = "encoder/layer_{}/attention/query/fp8_meta/kernel_amax_history"
  assert not np.array_equal(meta[query.format(0)], meta[query.format(1)])  # not one history shared by the stack
