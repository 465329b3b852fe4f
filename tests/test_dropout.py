"""16-bit dropout: rate, unbiasedness, determinism, odd shapes, and the same mask on any mesh."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from bert_jax.layers import dropout as dropout_lib


def test_drops_the_configured_fraction_and_keeps_the_mean():
  x = jnp.ones((64, 128, 130), jnp.float32)  # 1.06M elements; binomial std of the drop fraction is 3e-4
  y = np.asarray(dropout_lib.dropout(x, 0.1, jax.random.key(0)))
  dropped = np.mean(y == 0)
  assert abs(dropped - 0.1) < 0.002, dropped
  kept_values = np.unique(y[y != 0])
  np.testing.assert_allclose(kept_values, [65536 / (65536 - 6554)], rtol=1e-6)
  assert abs(y.mean() - 1.0) < 0.005, y.mean()


@pytest.mark.parametrize("rate", [0.1, 0.3])
def test_bfloat16_kept_values_are_scaled_by_the_exact_inverse_keep_probability(rate):
  """In bf16 the kept values are x / keep rounded per element, not x times a scale rounded to bf16 once (0.1:
  1.109375 instead of 1.111119, every kept value 0.16% low)."""
  x = jax.random.normal(jax.random.key(0), (256, 1024)).astype(jnp.bfloat16)
  y = np.asarray(dropout_lib.dropout(x, rate, jax.random.key(1)), np.float32)
  x = np.asarray(x, np.float32)
  kept = y != 0
  exact = 65536 / (65536 - dropout_lib.drop_threshold(rate))
  np.testing.assert_allclose(np.mean(y[kept] / x[kept]), exact, rtol=1e-4)  # per-element rounding: ~1e-5 here


def test_same_key_same_mask_other_key_other_mask():
  x = jnp.ones((4, 7, 33), jnp.float32)  # odd last axis: one 16-bit half of the last word is unused
  a = dropout_lib.dropout(x, 0.3, jax.random.key(1))
  b = dropout_lib.dropout(x, 0.3, jax.random.key(1))
  c = dropout_lib.dropout(x, 0.3, jax.random.key(2))
  assert a.shape == x.shape
  np.testing.assert_array_equal(a, b)
  assert np.any(np.asarray(a) != np.asarray(c))


def test_module_is_identity_when_deterministic_or_rate_zero():
  x = jnp.arange(12.0).reshape(3, 4)
  assert dropout_lib.Dropout(0.5, deterministic=True).apply({}, x) is x
  out = dropout_lib.Dropout(0.0, deterministic=False).apply({}, x, rngs={"dropout": jax.random.key(0)})
  np.testing.assert_array_equal(out, x)
  trained = dropout_lib.Dropout(0.5, deterministic=False).apply({}, x, rngs={"dropout": jax.random.key(0)})
  assert np.any(np.asarray(trained) == 0) and np.any(np.asarray(trained) == 2 * np.asarray(x))


def test_gradient_is_the_mask_times_the_scale():
  x = jnp.linspace(1.0, 2.0, 4 * 64).reshape(4, 64)
  key = jax.random.key(3)
  grad = jax.grad(lambda v: jnp.sum(dropout_lib.dropout(v, 0.25, key)))(x)
  kept = np.asarray(dropout_lib.dropout(x, 0.25, key)) != 0
  np.testing.assert_allclose(np.asarray(grad), kept * (65536 / (65536 - 16384)), rtol=1e-6)


def test_mask_does_not_depend_on_the_mesh():
  x = jnp.ones((16, 32, 64), jnp.float32)
  key = jax.random.key(4)
  reference = np.asarray(jax.jit(dropout_lib.dropout, static_argnums=1)(x, 0.1, key))
  mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
  sharded_x = jax.device_put(x, NamedSharding(mesh, P("data", "model", None)))
  sharded = jax.jit(dropout_lib.dropout, static_argnums=1)(sharded_x, 0.1, key)
  np.testing.assert_array_equal(np.asarray(sharded), reference)


@pytest.mark.parametrize("rate", [-0.1, 1.0])
def test_bad_rate_is_refused(rate):
  with pytest.raises(ValueError, match="dropout rate"):
    dropout_lib.dropout(jnp.ones(4), rate, jax.random.key(0))


@pytest.mark.parametrize("impl,usable", [("explicit", True), ("pallas", True), ("fixed_key", False)])
def test_the_fused_dropout_checks_pass_our_paths_and_fail_a_replayed_mask(impl, usable):
  """bench/attention_dropout_check.py decides on a GPU whether cuDNN's fused attention may carry dropout; here it
  must pass the explicit path and our Pallas kernel (interpret mode) and fail a path that draws the same mask for
  every call, layer and key."""
  script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench",
                        "attention_dropout_check.py")
  result = subprocess.run([sys.executable, script, f"--impl={impl}", "--batch=2", "--heads=2", "--seq=64",
                           "--calls=8"], capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  checks = json.loads(result.stdout.strip().splitlines()[-1])
  assert checks["usable_for_training"] is usable and checks["grad_consistent"] and checks["scan_grad_consistent"]
  for key in ("masks_differ_between_calls", "layer_masks_independent", "masks_follow_the_rng_key"):
    assert checks[key] is usable, key
  assert abs(checks["drop_fraction"] - 0.1) < 0.05


def _dropout_sites(config):
  """Scope paths of the Dropout modules that draw a mask in one training forward of `config`'s encoder."""
  import flax.linen as nn
  from bert_jax.models.encoder import Encoder
  sites = []
  def record(next_fun, args, kwargs, context):
    module = context.module
    if isinstance(module, dropout_lib.Dropout) and context.method_name == "__call__" and not module.deterministic:
      sites.append("/".join(module.scope.path))
    return next_fun(*args, **kwargs)
  ids = jnp.ones((1, 8), jnp.int32)
  encoder = Encoder(config, deterministic=False)
  params = encoder.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, ids, ids, ids * 0)
  with nn.intercept_methods(record):
    encoder.apply(params, ids, ids, ids * 0, rngs={"dropout": jax.random.key(2)})
  return sites


def test_hidden_dropout_sits_where_hf_has_it():
  """BERT drops the embeddings and each sublayer's output before its residual sum; HF DistilBERT's TransformerBlock
  adds the attention output projection to the residual without dropout (only its FFN output is dropped)."""
  from bert_jax.models.bert import BertConfig
  from bert_jax.models.distilbert import DistilBertConfig
  shape = dict(vocab_size=50, hidden_size=16, num_heads=2, intermediate_size=32, num_layers=1,
               max_position_embeddings=8, hidden_dropout=0.1, attention_dropout=0.0)
  assert _dropout_sites(BertConfig(**shape)) == ["embeddings/dropout", "layer_0/Dropout_0", "layer_0/Dropout_1"]
  assert _dropout_sites(DistilBertConfig(**shape)) == ["embeddings/dropout", "layer_0/Dropout_0"]
