"""Model structure: config validation, shapes, logical axes, parameter counts, MLM gather."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bert_jax.layers import common, embeddings
from bert_jax.layers.common import count_params
from bert_jax.models.bert import BertConfig
from bert_jax.models.pretraining import EncoderWithHeads


def BertForPreTraining(config):
  """BERT's pretraining model: the encoder with MLM and NSP heads."""
  return EncoderWithHeads(config, heads=("mlm", "nsp"))


def _batch(batch=2, seq=16, vocab=100, predictions=4, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(5, vocab, (batch, seq)).astype(np.int32)
  mask = np.ones((batch, seq), np.int32)
  mask[1, seq // 2:] = 0
  ids[mask == 0] = 0
  segments = np.zeros((batch, seq), np.int32)
  segments[:, seq // 3:] = 1
  segments[mask == 0] = 0
  positions = np.stack([np.sort(rng.choice(np.arange(1, seq // 2), predictions, replace=False)) for _ in range(batch)])
  return ids, mask, segments, positions.astype(np.int32)


def _abstract_params(config):
  ids = jnp.zeros((1, 8), jnp.int32)
  return jax.eval_shape(lambda: BertForPreTraining(config).init(jax.random.key(0), ids, ids, ids))["params"]


def test_hidden_not_divisible_by_heads_fails_at_creation():
  with pytest.raises(ValueError, match="divisible by num_heads"):
    BertConfig(hidden_size=100, num_heads=12)


def test_sequence_longer_than_positions_fails_clearly():
  config = BertConfig.from_size("tiny", vocab_size=50, max_position_embeddings=16)
  ids = jnp.zeros((1, 17), jnp.int32)
  with pytest.raises(ValueError, match=r"sequence length 17 exceeds the position table \(16 positions"):
    BertForPreTraining(config).init(jax.random.key(0), ids, ids, ids)


@pytest.mark.parametrize("size,expected,tolerance", [("base", 110e6, 1e6), ("large", 335e6, 2e6)])
def test_parameter_counts_with_heads(size, expected, tolerance):
  n = count_params(nn.unbox(_abstract_params(BertConfig.from_size(size))))
  assert abs(n - expected) <= tolerance, f"{size}: {n:,} params"


def test_vocab_padding_rounds_up_and_logits_keep_real_size():
  config = BertConfig.from_size("tiny", vocab_size=1000, vocab_pad_multiple=128)
  assert config.padded_vocab_size == 1024
  params = _abstract_params(config)
  assert nn.unbox(params)["encoder"]["embeddings"]["word_embeddings"]["embedding"].shape == (1024, 128)
  ids, mask, seg, pos = _batch(vocab=1000)
  variables = BertForPreTraining(config).init(jax.random.key(0), ids, mask, seg, pos)
  out = BertForPreTraining(config).apply(variables, ids, mask, seg, pos)
  assert out["mlm_logits"].shape == (2, 4, 1000)


@pytest.mark.parametrize("scan", [False, True])
def test_every_param_has_logical_axis_names(scan):
  config = BertConfig.from_size("tiny", vocab_size=100, scan_layers=scan)
  params = _abstract_params(config)
  leaves = jax.tree_util.tree_leaves_with_path(params, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert len(leaves) > 20
  for path, leaf in leaves:
    name = jax.tree_util.keystr(path)
    assert isinstance(leaf, nn.Partitioned), f"{name} has no logical axis names"
    assert len(leaf.names) == leaf.value.ndim, f"{name}: names {leaf.names} vs shape {leaf.value.shape}"
    if scan and name.startswith("['encoder']") and not any(s in name for s in ("['embeddings']", "['pooler']")):
      assert "['encoder']['layers']" in name and leaf.names[0] == "layers", name
  named = {n for _, leaf in leaves for n in leaf.names if n}
  assert {"vocab", "embed", "mlp", "heads", "kv"} <= named


@pytest.mark.parametrize("scan", [False, True])
def test_masked_position_gather_matches_all_positions(scan):
  config = BertConfig.from_size("tiny", vocab_size=100, scan_layers=scan)
  model = BertForPreTraining(config)
  ids, mask, seg, pos = _batch()
  variables = model.init(jax.random.key(1), ids, mask, seg, pos)
  gathered = model.apply(variables, ids, mask, seg, pos)["mlm_logits"]
  everywhere = model.apply(variables, ids, mask, seg, None)["mlm_logits"]
  assert everywhere.shape == (2, 16, 100)
  expected = np.take_along_axis(np.asarray(everywhere), pos[..., None], axis=1)
  np.testing.assert_allclose(gathered, expected, atol=1e-5, rtol=1e-5)


def test_dropout_changes_outputs_only_when_training():
  config = BertConfig.from_size("tiny", vocab_size=100)
  model = BertForPreTraining(config)
  ids, mask, seg, pos = _batch()
  variables = model.init(jax.random.key(1), ids, mask, seg, pos)
  eval_a = model.apply(variables, ids, mask, seg, pos)["mlm_logits"]
  eval_b = model.apply(variables, ids, mask, seg, pos)["mlm_logits"]
  train = model.apply(variables, ids, mask, seg, pos, deterministic=False,
                      rngs={"dropout": jax.random.key(2)})["mlm_logits"]
  np.testing.assert_array_equal(eval_a, eval_b)
  assert not np.allclose(eval_a, train)


@pytest.mark.parametrize("policy", ["full", "dots"])
def test_remat_keeps_outputs(policy):
  base = BertConfig.from_size("tiny", vocab_size=100, scan_layers=True)
  ids, mask, seg, pos = _batch()
  variables = BertForPreTraining(base).init(jax.random.key(1), ids, mask, seg, pos)
  plain = BertForPreTraining(base).apply(variables, ids, mask, seg, pos)["mlm_logits"]
  rematted = BertForPreTraining(BertConfig(**{**base.__dict__, "remat_policy": policy})).apply(
      variables, ids, mask, seg, pos)["mlm_logits"]
  np.testing.assert_allclose(plain, rematted, atol=1e-6)


def test_mlm_all_positions_option_gives_the_gathered_logits():
  ids, mask, seg, pos = _batch()
  base = BertConfig.from_size("tiny", vocab_size=100)
  variables = BertForPreTraining(base).init(jax.random.key(1), ids, mask, seg, pos)
  gathered = BertForPreTraining(base).apply(variables, ids, mask, seg, pos)["mlm_logits"]
  everywhere = BertForPreTraining(BertConfig(**{**base.__dict__, "mlm_all_positions": True})).apply(
      variables, ids, mask, seg, pos)["mlm_logits"]
  assert everywhere.shape == gathered.shape == (2, 4, 100)
  np.testing.assert_allclose(everywhere, gathered, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_embedding_lookups_match_a_plain_take_in_value_and_gradient(dtype):
  """The fp32-gather and one-hot lookups are speed changes only (bench/RESULTS.md, H100 profile)."""
  ids, mask, seg, pos = _batch()
  config = BertConfig.from_size("tiny", vocab_size=100, dtype=dtype)
  model = BertForPreTraining(config)
  params = jax.jit(model.init)(jax.random.key(1), ids, mask, seg, pos)["params"]
  emb = nn.meta.unbox(params["encoder"]["embeddings"])

  def reference(e):
    x = (jnp.take(e["word_embeddings"]["embedding"], ids, axis=0) +
         jnp.take(e["position_embeddings"]["embedding"], jnp.broadcast_to(jnp.arange(16), ids.shape), axis=0) +
         jnp.take(e["token_type_embeddings"]["embedding"], seg, axis=0))
    return jnp.sum(jnp.sin(x.astype(jnp.float32)))

  def ours(e):
    c, positions = config, jnp.broadcast_to(jnp.arange(16), ids.shape)
    x = 0
    for cls, name, size, x_ids in ((embeddings.GatherEmbed, "word_embeddings", c.padded_vocab_size, ids),
                                   (embeddings.OneHotEmbed, "position_embeddings", c.max_position_embeddings,
                                    positions),
                                   (embeddings.OneHotEmbed, "token_type_embeddings", c.type_vocab_size, seg)):
      x = x + cls(size, c.hidden_size, dtype=c.dtype, param_dtype=c.param_dtype).apply({"params": e[name]}, x_ids)
    return jnp.sum(jnp.sin(x.astype(jnp.float32)))

  tol = 1e-5 if dtype == "float32" else 5e-2
  np.testing.assert_allclose(jax.jit(ours)(emb), jax.jit(reference)(emb), rtol=tol, atol=tol)
  g_ours, g_ref = jax.jit(jax.grad(ours))(emb), jax.jit(jax.grad(reference))(emb)
  for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
    np.testing.assert_allclose(g_ours[name]["embedding"], g_ref[name]["embedding"], rtol=tol, atol=tol)



def test_row_gather_keeps_dtype_and_matches_take_with_repeated_positions():
  """The fp32 MLM/NSP gather is a speed change only; padded positions repeat (0), so gradients must add."""
  x = jax.random.normal(jax.random.key(0), (2, 8, 4)).astype(jnp.bfloat16)
  positions = jnp.array([[3, 0, 0], [7, 7, 1]])
  got = common.gather_rows(x, positions)
  assert got.dtype == jnp.bfloat16 and got.shape == (2, 3, 4)
  np.testing.assert_array_equal(np.asarray(got, np.float32),
                                np.asarray(x, np.float32)[np.arange(2)[:, None], np.asarray(positions)])
  weights = jnp.arange(24.0).reshape(2, 3, 4)
  grad = jax.grad(lambda v: jnp.sum(common.gather_rows(v, positions).astype(jnp.float32) * weights))(x)
  assert grad.dtype == jnp.bfloat16
  expected = np.zeros((2, 8, 4), np.float32)
  np.add.at(expected, (np.arange(2)[:, None], np.asarray(positions)), np.asarray(weights))
  np.testing.assert_array_equal(np.asarray(grad, np.float32), expected)
