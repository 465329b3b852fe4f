"""Training: sharding invariance, accumulation, optimizer details, large on CPU, config typos."""
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from bert_jax.core import configlib, optim, sharding
from bert_jax.core.train_state import state_functions
from bert_jax.objectives import registry as objectives
from bert_jax.trainers import pretrain
from train_helpers import SMALL, build, config, objective_for, random_batch, run_steps
from cli_helpers import cli_env


def _mesh(shape):
  devices = jax.devices()[:int(np.prod(shape))]
  return sharding.create_mesh(dict(zip(sharding.MESH_AXES, shape)), devices=devices)


def test_meshes_give_the_same_losses_as_one_device():
  batches = [random_batch(16, seed=s) for s in range(3)]
  _, reference = run_steps(config(), _mesh((1, 1, 1)), batches)
  assert reference[0] > reference[-1] or reference[0] != reference[-1]
  # every axis at once, and each parameter-sharding axis alone across all 8 devices (data parallelism alone against
  # one device: test_dropout_attention_kernel's 8-device step)
  for shape in [(2, 2, 2), (1, 8, 1), (1, 1, 8)]:
    _, got = run_steps(config(), _mesh(shape), batches)
    np.testing.assert_allclose(got, reference, rtol=1e-5, err_msg=str(shape))


def test_params_and_optimizer_state_are_sharded_as_the_rules_say():
  mesh = _mesh((1, 2, 4))
  state, *_ = build(config(), mesh)
  layer = state.params["encoder"]["layer_0"]
  assert layer["attention"]["query"]["kernel"].sharding.spec == P("fsdp", "tensor", None)
  assert layer["attention"]["output"]["kernel"].sharding.spec == P("tensor", None, "fsdp")
  assert layer["intermediate"]["kernel"].sharding.spec == P("fsdp", "tensor")
  assert state.params["encoder"]["embeddings"]["word_embeddings"]["embedding"].sharding.spec == P("tensor", "fsdp")
  assert state.params["encoder"]["embeddings"]["position_embeddings"]["embedding"].sharding.spec == P(None, "fsdp")
  shard = layer["intermediate"]["kernel"].addressable_shards[0]
  assert shard.data.shape == (128 // 2, 512 // 4)
  adam = state.opt_state[1][0]  # chain(clip, adamw) -> adamw's ScaleByAdamState
  assert adam.mu["encoder"]["layer_0"]["intermediate"]["kernel"].sharding.spec == P("fsdp", "tensor")
  assert state.step.sharding.spec == P()


def test_four_microbatches_of_8_equal_one_batch_of_32():
  batch = random_batch(32, seed=5)
  mesh = _mesh((2, 2, 2))
  whole, losses_whole = run_steps(config(), mesh, [batch])
  micro, losses_micro = run_steps(config(**{"train.microbatches": 4}), mesh, [batch])
  np.testing.assert_allclose(losses_micro, losses_whole, rtol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(whole.params), jax.tree_util.tree_leaves(micro.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-6, rtol=1e-4)


def test_dropout_rng_folds_in_the_step():
  cfg = config(**{"train.deterministic": False})
  batch = random_batch(8)
  mesh = _mesh((1, 1, 1))
  dropout_model = dataclass_replace(SMALL, hidden_dropout=0.1)
  _, a = run_steps(cfg, mesh, [batch, batch], dropout_model)
  _, b = run_steps(cfg, mesh, [batch, batch], dropout_model)
  assert a == b, "same seed and step -> same dropout masks"


def dataclass_replace(c, **kw):
  import dataclasses
  return dataclasses.replace(c, **kw)


def test_schedule_values():
  sched = optim.learning_rate_schedule(1e-4, 100, 1000, "linear")
  assert float(sched(0)) == 0.0
  assert float(sched(50)) == pytest.approx(5e-5)
  assert float(sched(100)) == pytest.approx(1e-4)
  assert float(sched(550)) == pytest.approx(5e-5)
  assert float(sched(1000)) == pytest.approx(0.0, abs=1e-12)
  poly = optim.learning_rate_schedule(1e-3, 10, 110, "polynomial", power=0.5)
  assert float(poly(10)) == pytest.approx(1e-3) and float(poly(110)) == pytest.approx(0.0, abs=1e-9)
  assert float(poly(60)) == pytest.approx(1e-3 * 0.5 ** 0.5, rel=1e-4)
  # google-research/bert and albert: one decay curve over all steps from 0, warmup replacing its start
  start = optim.learning_rate_schedule(1e-4, 100, 1000, "linear", decay_from="start")
  assert float(start(50)) == pytest.approx(5e-5)
  assert float(start(100)) == pytest.approx(1e-4 * 0.9) and float(start(550)) == pytest.approx(1e-4 * 0.45)
  assert float(start(1000)) == pytest.approx(0.0, abs=1e-12)
  start_poly = optim.learning_rate_schedule(1e-3, 10, 110, "polynomial", power=0.5, decay_from="start")
  assert float(start_poly(60)) == pytest.approx(1e-3 * (1 - 60 / 110) ** 0.5, rel=1e-4)
  with pytest.raises(ValueError, match=r"optim.decay_from='end' is not one of"):
    optim.learning_rate_schedule(1e-4, 100, 1000, decay_from="end")


def test_schedule_steps_span_the_run_unless_set_and_never_end_before_it():
  assert optim.schedule_steps(configlib.load("tiny").optim, 1500) == 1500
  cfg = configlib.load("tiny", {"optim.schedule_steps": 10000}).optim
  assert optim.schedule_steps(cfg, 1500) == 10000
  with pytest.raises(ValueError, match=r"optim.schedule_steps \(10000\) is shorter than train.steps \(20000\)"):
    optim.schedule_steps(cfg, 20000)


def test_weight_decay_mask_excludes_exactly_layer_norm_and_biases():
  params = nn.unbox(objective_for(config(), SMALL).init_params(jax.random.key(0)))
  mask = optim.weight_decay_mask(params)
  excluded, included = set(), set()
  for path, decays in jax.tree_util.tree_leaves_with_path(mask):
    (included if decays else excluded).add("/".join(k.key for k in path))
  for name in excluded:
    assert name.endswith("bias") or "layer_norm" in name, name
  for name in included:
    assert not name.endswith("bias") and "layer_norm" not in name, name
  assert "encoder/embeddings/layer_norm/scale" in excluded and "mlm/output_bias" in excluded
  assert "encoder/layer_1/attention/query/bias" in excluded
  assert "encoder/layer_1/attention/query/kernel" in included
  assert "encoder/embeddings/word_embeddings/embedding" in included


@pytest.mark.parametrize("key", ["train.log_every", "train.eval_every", "train.microbatches", "train.eval_batches",
                                 "checkpoint.every_steps", "checkpoint.keep"])
def test_zero_intervals_and_keep_fail_at_start_naming_the_field(key):
  with pytest.raises(ValueError, match=rf"{key}=0 must be at least 1"):
    pretrain.check_intervals(config(**{key: 0}))


def test_an_eval_set_smaller_than_an_eval_is_named():
  lines = []
  cfg = config(**{"train.eval_batches": 10, "train.batch_size": 16})
  pretrain.warn_if_eval_repeats(cfg, {"splits": {"eval": {"instances": 100}}}, lines.append)
  assert lines == ["WARNING: the eval data has 100 instances but an eval reads 160 (train.eval_batches x its batch "
                   "size): some count 2 times; lower train.eval_batches to 6 to read each at most once"]
  pretrain.warn_if_eval_repeats(cfg, {"splits": {"eval": {"instances": 160}}}, lines.append)
  pretrain.warn_if_eval_repeats(cfg, None, lines.append)  # records without a manifest: nothing known
  assert len(lines) == 1


def test_lamb_gives_biases_and_layer_norms_adams_step_and_weights_the_trust_ratio():
  """As google-research/albert's LAMB: the trust ratio |w| / |u| scales the decayed weights' steps only. With it on
  a zero-initialised bias, the bias would move by lr * |b| a step and stay near zero."""
  cfg = configlib.load("tiny", {"optim.name": "lamb", "optim.warmup_steps": 1, "optim.weight_decay": 0.0,
                                "optim.clip_norm": 0.0, "optim.peak_learning_rate": 1e-2}).optim
  tx, schedule = optim.make_optimizer(cfg, 100)
  params = {"dense": {"kernel": jnp.full((4, 4), 2.0), "bias": jnp.zeros(4)}}
  grads = {"dense": {"kernel": jnp.ones((4, 4)), "bias": jnp.ones(4)}}
  state = tx.init(params)
  for _ in range(3):
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  # constant gradients: Adam's step is 1 per entry, so the bias falls by the learning rate of steps 1 and 2
  lr = [float(schedule(k)) for k in range(3)]
  np.testing.assert_allclose(params["dense"]["bias"], -(lr[1] + lr[2]), rtol=1e-4)
  # the kernel's step is scaled to its own norm: each update is lr * |w| / |u| * u, with |u| = 4 (16 ones)
  kernel = 2.0
  for k in range(3):
    kernel -= lr[k] * (4 * kernel) / 4
  np.testing.assert_allclose(params["dense"]["kernel"], kernel, rtol=1e-4)


def test_fused_qkv_kernel_is_sharded_and_decayed_like_the_separate_ones():
  import dataclasses
  state, *_ = build(config(), _mesh((1, 2, 4)), model_config=dataclasses.replace(SMALL, fused_qkv=True))
  attention = state.params["encoder"]["layer_0"]["attention"]
  assert set(attention) == {"qkv", "output"}
  assert attention["qkv"]["kernel"].shape == (128, 3, 8, 16)
  assert attention["qkv"]["kernel"].sharding.spec == P("fsdp", None, "tensor", None)
  assert attention["qkv"]["bias"].sharding.spec == P(None, "tensor", None)
  decays = optim.weight_decay_mask(state.params)["encoder"]["layer_0"]["attention"]["qkv"]
  assert decays == {"kernel": True, "bias": False}


def test_large_builds_on_cpu_without_allocating():
  cfg = configlib.load("large", {"mesh.data": 1, "mesh.fsdp": 8})
  mesh = _mesh((1, 8, 1))
  cfg = pretrain.with_platform_defaults(cfg, mesh, lambda _: None)  # CPU: scanned layers
  rules = sharding.rules_from_config(cfg.mesh.logical_axis_rules)
  model_config, _ = pretrain.build(cfg)
  objective = objectives.make_objective(cfg.train.objective, model_config, 128, 20)
  tx, _ = optim.make_optimizer(cfg.optim, cfg.train.steps)
  with nn.logical_axis_rules(rules):
    _, abstract, shardings = state_functions(objective.init_params, tx, mesh, rules, 0)
  leaves = jax.tree_util.tree_leaves(abstract.params)
  assert all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
  n = sum(int(np.prod(x.shape)) for x in leaves)
  padded_rows = model_config.padded_vocab_size - model_config.vocab_size
  real = n - padded_rows * (1024 + 1)  # padded embedding rows and their output-bias entries
  assert abs(real - 335e6) <= 2e6, real
  stacked = shardings.params["encoder"]["layers"]["layer"]
  assert stacked["attention"]["query"]["kernel"].spec == P(None, "fsdp", "tensor", None)
  assert stacked["intermediate"]["kernel"].spec == P(None, "fsdp", "tensor")
  assert abstract.params["encoder"]["layers"]["layer"]["intermediate"]["kernel"].shape == (24, 1024, 4096)
  mu = shardings.opt_state[1][0].mu["encoder"]["layers"]["layer"]["intermediate"]["kernel"]
  assert mu.spec == P(None, "fsdp", "tensor")


def test_bad_batch_size_fails_with_the_reason():
  with pytest.raises(ValueError, match=r"batch_size=12 must divide.*data x fsdp = 8"):
    pretrain.check_batch(config(**{"train.batch_size": 12}), _mesh((8, 1, 1)))
  # 0 divides by every device count: it reached tf.data's batch() (or, negative, a TensorShape) before
  for size in (0, -8):
    with pytest.raises(ValueError, match=rf"train.batch_size={size} must be at least 1"):
      pretrain.check_batch(config(**{"train.batch_size": size}), _mesh((8, 1, 1)))
  with pytest.raises(ValueError, match=r"train.eval_batch_size=-8 must be at least 1, or 0 for train.batch_size"):
    pretrain.check_batch(config(**{"train.eval_batch_size": -8}), _mesh((8, 1, 1)))
  pretrain.check_batch(config(**{"train.batch_size": 16, "train.eval_batch_size": 0}), _mesh((8, 1, 1)))


def test_typo_in_override_lists_close_keys():
  with pytest.raises(KeyError, match=r"unknown config key 'train.bach_size'; closest: train.batch_size"):
    configlib.load("tiny", {"train.bach_size": 3})
  env = cli_env()
  result = subprocess.run([sys.executable, "-m", "bert_jax.train", "--config=tiny", "--workdir=/tmp/unused",
                           "--config.optim.peak_learnig_rate=1e-3"], capture_output=True, text=True, env=env,
                          timeout=120)
  assert result.returncode == 2
  assert "unknown config key 'optim.peak_learnig_rate'; closest: optim.peak_learning_rate" in result.stderr


def test_unknown_config_name_lists_available():
  with pytest.raises(FileNotFoundError, match=r"not one of \[.*'large'.*'tiny'"):
    configlib.resolve_path("larg")


def test_every_config_loads_locked_and_documented():
  from bert_jax.trainers import finetune
  for name in configlib.available():
    cfg = configlib.load(name)
    assert cfg.is_locked, name
    if "task" in cfg:  # a fine-tuning config
      finetune._model_config(cfg, None, 8000, cfg.data.max_seq_length)
    else:
      pretrain.build(cfg)  # valid model settings and objective
  for base, example in (("common.py", "tiny"), ("finetune.py", "finetune")):
    source = open(os.path.join(configlib.CONFIGS_DIR, base)).read()
    for key in configlib.flat_keys(configlib.load(example)):
      leaf = key.rsplit(".", 1)[-1]
      lines = [l for l in source.splitlines() if f".{leaf} = " in l and "ConfigDict()" not in l]
      assert any("#" in l for l in lines), f"config field {key} has no comment in configs/{base}"


def test_unknown_prng_impl_is_named():
  with pytest.raises(ValueError, match="train.prng_impl='philox' is not one of"):
    pretrain.use_prng_impl("philox")
