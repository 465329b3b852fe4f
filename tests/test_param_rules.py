"""Parameter rules: which params train and which decay, through the optimizer."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from bert_jax.core import optim, param_rules


def _params():
  return {"encoder": {"layer_0": {"query": {"kernel": jnp.ones((4, 4)), "bias": jnp.ones((4,))},
                                  "layer_norm": {"scale": jnp.ones((4,))}}},
          "classifier": {"kernel": jnp.ones((4, 2)), "bias": jnp.zeros((2,))}}


def _optim_config():
  c = ml_collections.ConfigDict(dict(name="adamw", peak_learning_rate=1e-2, warmup_steps=1, decay="linear", power=1.0,
                                     decay_from="warmup_end", end_learning_rate=0.0, b1=0.9, b2=0.999, eps=1e-6,
                                     weight_decay=0.1, state_dtype="", clip_norm=1.0))
  return c


def test_parse_rules_and_errors():
  rules = param_rules.parse_rules("^encoder/:freeze; classifier/bias:train,decay")
  assert rules == (param_rules.ParamRule("^encoder/", False, None), param_rules.ParamRule("classifier/bias", True, True))
  assert param_rules.parse_rules("bias:no_decay") == (param_rules.ParamRule("bias", None, False),)
  with pytest.raises(ValueError, match="unknown action 'frozen'"):
    param_rules.parse_rules("encoder:frozen")
  with pytest.raises(ValueError, match="bad regex"):
    param_rules.parse_rules("encoder(:freeze")
  with pytest.raises(ValueError, match="is not REGEX:ACTION"):
    param_rules.parse_rules("encoder")


def test_rule_matching_nothing_fails_naming_it():
  with pytest.raises(ValueError, match="'lora_' matches no parameter"):
    param_rules.check_rules(_params(), param_rules.parse_rules("lora_:train"))


def test_frozen_params_unchanged_and_without_optimizer_state():
  params = _params()
  rules = param_rules.parse_rules("^encoder/:freeze")
  tx, _ = optim.make_optimizer(_optim_config(), 10, rules)
  opt_state = tx.init(params)
  # Adam moments exist for the classifier's 2 leaves only.
  moments = [x for x in jax.tree_util.tree_leaves(opt_state) if x.ndim > 0]
  assert sorted(x.shape for x in moments) == sorted([(4, 2), (2,)] * 2)
  assert param_rules.count(params, rules) == (10, 34)
  grads = jax.tree_util.tree_map(jnp.ones_like, params)
  for _ in range(3):
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
  np.testing.assert_array_equal(params["encoder"]["layer_0"]["query"]["kernel"], np.ones((4, 4)))
  assert not np.allclose(params["classifier"]["kernel"], 1.0)


def test_decay_rules_override_the_default():
  params = _params()
  default = param_rules.decay_mask(params, ())
  assert default["classifier"]["kernel"] and not default["classifier"]["bias"]
  assert not default["encoder"]["layer_0"]["layer_norm"]["scale"]
  mask = param_rules.decay_mask(params, param_rules.parse_rules("classifier/kernel:no_decay"))
  assert not mask["classifier"]["kernel"] and mask["encoder"]["layer_0"]["query"]["kernel"]


def test_no_rule_decays_the_statistics_the_step_overwrites():
  """FP8 scales and amax histories are replaced by their next value each step; decaying them would shrink the
  scales by lr * wd on top. `.*:decay` (every weight, as fairseq) must leave them alone."""
  params = {"dense": {"kernel": np.ones((2, 2)), "bias": np.ones(2)},
            param_rules.OVERWRITE_SCOPE: {"input_scale": np.ones(())}}
  mask = param_rules.decay_mask(params, param_rules.parse_rules(".*:decay"))
  assert mask["dense"]["kernel"] and mask["dense"]["bias"] and not mask[param_rules.OVERWRITE_SCOPE]["input_scale"]


def test_a_decay_rule_does_not_unfreeze_what_a_later_rule_freezes():
  """`layer_norm:no_decay` in front of a method's `^encoder/:freeze` sets the decay only: the encoder's LayerNorm
  stays frozen (the first rule that says train/freeze decides that), and a later decay rule does not override it."""
  params = _params()
  rules = param_rules.parse_rules("layer_norm:no_decay;classifier/bias:decay;^encoder/:freeze;.*:no_decay")
  kinds = param_rules.labels(params, rules)
  assert kinds["encoder"]["layer_0"]["layer_norm"]["scale"] == param_rules.FROZEN
  assert kinds["classifier"]["kernel"] == param_rules.TRAIN
  assert param_rules.count(params, rules) == (10, 34)
  mask = param_rules.decay_mask(params, rules)
  assert mask["classifier"]["bias"] and not mask["classifier"]["kernel"]
  assert not mask["encoder"]["layer_0"]["layer_norm"]["scale"]


def test_a_pretraining_rule_cannot_unfreeze_what_the_objective_freezes():
  """Distillation freezes its teacher by a rule of its own; optim.param_rules come after it, so `.*:train` (or a
  careless `^teacher/:train`) leaves the teacher frozen while it still sets what else trains and decays."""
  import types
  from bert_jax.trainers import pretrain
  objective = types.SimpleNamespace(param_rules=lambda: (param_rules.ParamRule("^teacher/", trainable=False),))
  config = ml_collections.ConfigDict({"optim": {"param_rules": ".*:train,decay"}})
  rules = pretrain.param_rules_of(config, objective)
  params = {"teacher": {"dense": {"kernel": np.ones((2, 2))}}, "student": {"dense": {"bias": np.ones(2)}}}
  assert param_rules.labels(params, rules) == {"teacher": {"dense": {"kernel": param_rules.FROZEN}},
                                               "student": {"dense": {"bias": param_rules.TRAIN}}}
  assert param_rules.decay_mask(params, rules)["student"]["dense"]["bias"]
