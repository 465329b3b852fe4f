"""Attention implementations agree: splash and our dropout kernel (Pallas, interpret mode on CPU) against XLA,
padded and packed rows."""
import dataclasses
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bert_jax.layers import attention
from bert_jax.models.bert import BertConfig
from bert_jax.models.pretraining import EncoderWithHeads


def BertForPreTraining(config):
  """BERT's pretraining model: the encoder with MLM and NSP heads."""
  return EncoderWithHeads(config, heads=("mlm", "nsp"))

T = attention.SPLASH_BLOCK


def _inputs(packed):
  rng = np.random.default_rng(0)
  mask = (np.arange(T)[None] < np.array([[T], [T - 40]])).astype(np.int32)
  ids = rng.integers(5, 100, (2, T)).astype(np.int32) * mask
  seg = ((np.arange(T)[None] >= 50) * mask).astype(np.int32)
  segments = ((np.arange(T)[None] >= 60).astype(np.int32) + 1) * mask if packed else None
  return ids, mask, seg, segments


@pytest.mark.parametrize("impl", ["splash", "pallas"])
@pytest.mark.parametrize("packed", [False, True])
def test_kernels_match_xla_in_value_and_gradient(packed, impl):
  base = BertConfig.from_size("tiny", vocab_size=100, max_position_embeddings=T, hidden_dropout=0.0,
                              attention_dropout=0.0)
  ids, mask, seg, segments = _inputs(packed)
  params = BertForPreTraining(base).init(jax.random.key(0), ids, mask, seg)["params"]

  def run(impl):
    model = BertForPreTraining(dataclasses.replace(base, attention_impl=impl))
    def loss(p):
      out = model.apply({"params": p}, ids, mask, seg, attention_segments_BxT=segments)
      return jnp.sum(jnp.where(mask[..., None] > 0, out["sequence_output"], 0.0) ** 2), out["sequence_output"]
    return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)  # one compile per path, not one per op

  (_, out_x), grad_x = run("xla")
  (_, out_s), grad_s = run(impl)
  run(impl)  # traced again: the kernel cached by the first trace must hold no values of it
  real = mask.astype(bool)
  np.testing.assert_allclose(np.asarray(out_s)[real], np.asarray(out_x)[real], atol=2e-5, rtol=2e-5)
  for gx, gs in zip(jax.tree_util.tree_leaves(grad_x), jax.tree_util.tree_leaves(grad_s)):
    np.testing.assert_allclose(gs, gx, atol=2e-4, rtol=2e-3)


def test_splash_falls_back_with_a_log_line_when_the_length_does_not_fit(caplog):
  q = jnp.ones((1, 16, 2, 8))
  mask = attention.AttentionMask(jnp.ones((1, 1, 1, 16), bool), jnp.array([16]), jnp.ones((1, 16), jnp.int32))
  with caplog.at_level(logging.WARNING):
    out = attention.dot_product_attention(q, q, q, mask, implementation="splash")
  assert out.shape == (1, 16, 2, 8)
  assert any("splash needs a sequence length divisible by 128, got 16; falling back" in r.message
             for r in caplog.records)


def test_splash_takes_lengths_over_512_that_512_does_not_divide():
  """640 tokens: divisible by 128, so splash runs, with blocks that divide the length (512 does not)."""
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.standard_normal((1, 640, 1, 16)), jnp.float32) for _ in range(3))
  real = np.arange(640) < 600
  mask = attention.AttentionMask(jnp.asarray(real)[None, None, None], jnp.array([600]),
                                 jnp.asarray(real, jnp.int32)[None])
  out = attention.dot_product_attention(q, k, v, mask, implementation="splash")
  reference = attention.dot_product_attention(q, k, v, mask, implementation="xla")
  np.testing.assert_allclose(np.asarray(out)[0, real], np.asarray(reference)[0, real], atol=2e-5, rtol=2e-5)
