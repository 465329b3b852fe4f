"""NEZHA: relative sinusoidal positions in attention (against a direct numpy reading of the paper's formula), the
model without a position table, its FLOPs, the transformers-4.x-layout export and import, and bad input."""

import dataclasses
import functools
import json
import logging
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from bert_jax.convert import hf_dir, hf_params
from bert_jax.core import configlib, sharding
from bert_jax.layers import attention as attention_lib
from bert_jax.layers import dropout as dropout_lib
from bert_jax.models import bert, config as config_lib, encoder as encoder_lib, nezha, registry
from bert_jax.models import name_tables as nt
from bert_jax.models.pretraining import EncoderWithHeads

SMALL = nezha.NezhaConfig(vocab_size=101, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=48,
                          max_relative_position=3, max_position_embeddings=64, hidden_dropout=0.0,
                          attention_dropout=0.0)
HEADS = ("mlm", "nsp")


def _numpy_table(length, depth, k):
  """a[i, j, 2m] = sin(r / 10000^(2m/D)), a[i, j, 2m+1] = cos(...), r = clip(j - i, -k, k) + k (the released code's
  index; see attention.relative_sinusoid_table), written out element by element."""
  a = np.zeros((length, length, depth))
  for i in range(length):
    for j in range(length):
      r = min(max(j - i, -k), k) + k
      for m in range(depth // 2):
        a[i, j, 2 * m] = np.sin(r / 10000 ** (2 * m / depth))
        a[i, j, 2 * m + 1] = np.cos(r / 10000 ** (2 * m / depth))
  return a


def _numpy_attention(q, k, v, allowed_BxTxS, a, keep_BxNxTxS=None, rate=0.0):
  """The paper's formula, one query at a time: e_ij = q_i.(k_j + a_ij)/sqrt(D), z_i = sum_j p_ij (v_j + a_ij);
  keep: the attention-dropout mask applied to p (kept values scaled by 1/(1 - rate))."""
  batch, length, heads, depth = q.shape
  z = np.zeros_like(q, dtype=np.float64)
  for b in range(batch):
    for n in range(heads):
      for i in range(length):
        if not allowed_BxTxS[b, i].any():  # a padded query of a packed row: nothing reads it
          continue
        e = np.array([q[b, i, n] @ (k[b, j, n] + a[i, j]) for j in range(length)]) / np.sqrt(depth)
        e = np.where(allowed_BxTxS[b, i], e, -np.inf)
        p = np.exp(e - e.max())
        p /= p.sum()
        if keep_BxNxTxS is not None:
          p = np.where(keep_BxNxTxS[b, n, i], p / (1 - rate), 0.0)
        z[b, i, n] = sum(p[j] * (v[b, j, n] + a[i, j]) for j in range(length))
  return z


def test_relative_vectors_are_the_clipped_sinusoid():
  got = attention_lib.relative_positions_TxSxD(9, 8, 3, jnp.float32)
  np.testing.assert_allclose(np.asarray(got), _numpy_table(9, 8, 3), atol=2e-6)
  assert got.shape == (9, 9, 8)
  # Distances beyond k share the edge vector; the diagonal (distance 0) is index k.
  np.testing.assert_array_equal(got[0, 3], got[0, 8])
  np.testing.assert_array_equal(got[8, 0], got[5, 0])
  np.testing.assert_array_equal(got[4, 4], got[0, 0])


# Row 0 is padded after 5 tokens; row 1 packs two instances (4 + 3 tokens).
INPUT_MASK = np.array([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1]])
PACKED = np.array([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 2, 2, 2]])


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("implementation", ["xla", "splash"])
def test_attention_matches_the_papers_formula(packed, implementation, caplog):
  """T=7, 2 heads, D=8, k=3 (so distances clip), with a padding mask or packed-segment mask; a fused kernel that
  was asked for resolves to the explicit path and says so."""
  rng = np.random.default_rng(0)
  q, k, v = (rng.standard_normal((2, 7, 2, 8)).astype(np.float32) for _ in range(3))
  segments = PACKED * INPUT_MASK if packed else None
  mask = encoder_lib.attention_mask(jnp.asarray(INPUT_MASK), None if segments is None else jnp.asarray(segments))
  relative = attention_lib.relative_positions_TxSxD(7, 8, 3, jnp.float32)
  attention_lib._log_once.cache_clear()  # each case may log again
  with caplog.at_level(logging.WARNING):
    got = jax.jit(functools.partial(attention_lib.dot_product_attention, implementation=implementation))(
        q, k, v, mask, relative_TxSxD=relative)
  assert (implementation == "splash") == ("relative positions add per-pair terms" in caplog.text)
  if packed:
    allowed = (segments[:, :, None] == segments[:, None, :]) & (segments[:, None, :] > 0)
  else:
    allowed = np.broadcast_to(INPUT_MASK[:, None, :] > 0, (2, 7, 7))
  expected = _numpy_attention(q, k, v, allowed, _numpy_table(7, 8, 3))
  real = INPUT_MASK.astype(bool)  # padded queries attend too, but nothing reads them
  np.testing.assert_allclose(np.asarray(got)[real], expected[real], atol=1e-5)
  plain = jax.jit(attention_lib.dot_product_attention)(q, k, v, mask)
  assert np.abs(np.asarray(plain) - np.asarray(got))[real].max() > 0.1  # the relative terms matter


def test_attention_dropout_drops_the_relative_value_terms_with_the_probabilities():
  """Training with attention dropout: the same kept probabilities weigh v_j and a_ij (the formula with the mask
  that dropout drew from the same key)."""
  rng = np.random.default_rng(1)
  q, k, v = (rng.standard_normal((2, 7, 2, 8)).astype(np.float32) for _ in range(3))
  mask = encoder_lib.attention_mask(jnp.asarray(INPUT_MASK))
  relative = attention_lib.relative_positions_TxSxD(7, 8, 3, jnp.float32)
  key = jax.random.key(7)
  attend = jax.jit(attention_lib.dot_product_attention, static_argnames=("dropout_rate", "deterministic"))
  got = attend(q, k, v, mask, dropout_rate=0.3, dropout_rng=key, deterministic=False, relative_TxSxD=relative)
  rate = dropout_lib.drop_threshold(0.3) / 2 ** 16
  keep = np.asarray(dropout_lib.dropout(jnp.ones((2, 2, 7, 7)), 0.3, key)) > 0
  assert 0.5 < keep.mean() < 0.9
  allowed = np.broadcast_to(INPUT_MASK[:, None, :] > 0, (2, 7, 7))
  expected = _numpy_attention(q, k, v, allowed, _numpy_table(7, 8, 3), keep, rate)
  real = INPUT_MASK.astype(bool)
  np.testing.assert_allclose(np.asarray(got)[real], expected[real], atol=1e-5)
  eval_mode = attend(q, k, v, mask, dropout_rate=0.3, dropout_rng=key, relative_TxSxD=relative)
  assert np.abs(np.asarray(eval_mode) - np.asarray(got)).max() > 1e-2


def _ids(batch=2, length=9, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(5, SMALL.vocab_size, (batch, length))
  mask = np.ones_like(ids)
  mask[1, length - 3:] = 0
  return ids * mask, mask, (np.arange(length)[None] >= 4).astype(np.int64) * mask


@pytest.fixture(scope="module")
def params():
  ids, mask, segments = _ids()
  tree = nn.unbox(jax.jit(EncoderWithHeads(SMALL, HEADS).init)(jax.random.key(0), ids, mask, segments)["params"])
  rng = np.random.default_rng(3)  # away from init, so every weight shows in the outputs
  return jax.tree_util.tree_map(lambda x: np.asarray(x) + 0.2 * rng.standard_normal(x.shape).astype(np.float32), tree)


def test_no_position_table_and_otherwise_berts_params(params):
  paths = set(nt.flatten(params))
  assert not any("position" in p for p in paths)
  bert_config = bert.BertConfig(**{f.name: getattr(SMALL, f.name) for f in dataclasses.fields(bert.BertConfig)
                                   if f.name not in ("vocab_size", "position_encoding", "max_relative_position")},
                                vocab_size=SMALL.vocab_size)
  ids, mask, segments = _ids()
  bert_paths = set(nt.flatten(jax.eval_shape(
      lambda: nn.unbox(EncoderWithHeads(bert_config, HEADS).init(jax.random.key(0), ids, mask, segments)["params"]))))
  assert bert_paths - paths == {"encoder/embeddings/position_embeddings/embedding"} and paths < bert_paths


def test_scanned_fused_bf16_and_packed_rows_agree(params):
  ids, mask, segments = _ids()
  run = lambda config, tree: jax.jit(EncoderWithHeads(config, HEADS).apply)({"params": tree}, ids, mask, segments)
  unrolled = run(SMALL, params)
  scanned_config = dataclasses.replace(SMALL, scan_layers=True, fused_qkv=True)
  scanned_params = hf_params.to_layout(params, scanned_config)
  assert "layers" in scanned_params["encoder"]
  scanned = run(scanned_config, scanned_params)
  for key in ("mlm_logits", "nsp_logits"):
    np.testing.assert_allclose(scanned[key], unrolled[key], atol=1e-5, err_msg=key)
  bf16 = run(dataclasses.replace(SMALL, dtype="bfloat16"), params)
  np.testing.assert_allclose(np.asarray(bf16["mlm_logits"], np.float32), unrolled["mlm_logits"], atol=0.15)
  # Distances inside each packed instance are those of the instance alone: packing changes nothing, with no
  # position ids at all (the encoder's defaults, 0..T-1 over the whole row, are not read).
  # Row 0 packs instances a (5 tokens) and b (4); rows 1 and 2 hold each alone, right-padded.
  a, b = ids[0, :5], ids[1, :4]
  rows = np.stack([np.concatenate([a, b]), np.pad(a, (0, 4)), np.pad(b, (0, 5))])
  segments_in_row = np.array([[1] * 5 + [2] * 4, [1] * 5 + [0] * 4, [1] * 4 + [0] * 5])
  out = jax.jit(encoder_lib.Encoder(SMALL).apply)({"params": params["encoder"]}, rows, segments_in_row > 0,
                                                  np.zeros_like(rows), attention_segments_BxT=segments_in_row)
  np.testing.assert_allclose(out[0, :5], out[1, :5], atol=1e-5)
  np.testing.assert_allclose(out[0, 5:], out[2, :4], atol=1e-5)


def test_sharded_equals_one_device(params):
  """Loss and gradients with params placed by their logical axes on a (2, 2, 2) data x fsdp x tensor mesh (scanned,
  fused QKV, padded vocabulary) equal one device's."""
  config = dataclasses.replace(SMALL, scan_layers=True, fused_qkv=True, vocab_pad_multiple=128)
  model = EncoderWithHeads(config, HEADS)
  tree = hf_params.to_layout(params, config)
  ids, mask, segments = _ids(batch=8)

  def loss(tree, ids, mask, segments):
    out = model.apply({"params": tree}, ids, mask, segments)
    return jnp.sum(out["mlm_logits"] ** 2 * mask[..., None]) + jnp.sum(out["nsp_logits"] ** 2)

  single_loss, single_grads = jax.jit(jax.value_and_grad(loss))(tree, ids, mask, segments)
  mesh = sharding.create_mesh(dict(zip(sharding.MESH_AXES, (2, 2, 2))), devices=jax.devices()[:8])
  rules = sharding.rules_from_config(sharding.DEFAULT_RULES)
  with nn.logical_axis_rules(rules):
    specs = nn.get_partition_spec(jax.eval_shape(model.init, jax.random.key(0), ids, mask, segments))["params"]
    placed = sharding.logical_to_sharding(specs, mesh, rules)
    assert placed["encoder"]["layers"]["layer"]["attention"]["qkv"]["kernel"].spec == P(None, "fsdp", None,
                                                                                         "tensor", None)
    batch = sharding.batch_sharding(mesh)
    sharded_loss, sharded_grads = jax.jit(jax.value_and_grad(loss), in_shardings=(placed, batch, batch, batch))(
        tree, ids, mask, segments)
  np.testing.assert_allclose(sharded_loss, single_loss, rtol=1e-5)
  for path, grad in nt.flatten(single_grads).items():  # equal up to float summation order, relative to its scale
    assert np.abs(nt.flatten(sharded_grads)[path] - grad).max() <= 1e-5 * np.abs(grad).max(), path


def test_flops_add_the_relative_terms_and_xla_counts_the_same():
  T, L, H = 128, SMALL.num_layers, SMALL.hidden_size
  absolute = dataclasses.replace(bert.BertConfig(), **{f: getattr(SMALL, f) for f in (
      "vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size")})
  extra = config_lib.trunk_flops_per_sequence(SMALL, T) - config_lib.trunk_flops_per_sequence(absolute, T)
  assert extra == 8 * L * T * T * H
  # XLA's own count of one layer's attention, value and gradient (q, k, v), with and without the relative terms.
  batch, heads, depth = 2, SMALL.num_heads, SMALL.head_dim
  q = jnp.ones((batch, T, heads, depth))
  mask = jnp.ones((batch, 1, 1, T), bool)

  def train_flops(relative):
    def loss(q, k, v):
      rel = attention_lib.relative_positions_TxSxD(T, depth, 3, q.dtype) if relative else None
      return jnp.sum(attention_lib.dot_product_attention(q, k, v, mask, relative_TxSxD=rel) ** 2)
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, q, q).compile().cost_analysis()["flops"]

  measured = (train_flops(True) - train_flops(False)) / batch
  assert measured == pytest.approx(8 * T * T * H, rel=0.1)  # per layer; the rest is the adds and the gather


@pytest.fixture(scope="module")
def vocab_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
  words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(SMALL.vocab_size - 5)]
  path.write_text("\n".join(words) + "\n")
  return str(path)


def test_export_writes_the_4x_layout_and_reads_back_bit_exact(params, vocab_file, tmp_path):
  padded = dataclasses.replace(SMALL, vocab_pad_multiple=128, scan_layers=True)
  saved = hf_params.to_layout(params, padded)
  out = str(tmp_path)
  assert hf_dir.write_hf_dir(saved, padded, out, vocab_file=vocab_file) == "NezhaForPreTraining"
  with open(os.path.join(out, "config.json")) as f:
    config_json = json.load(f)
  assert config_json["architectures"] == ["NezhaForPreTraining"] and config_json["model_type"] == "nezha"
  assert config_json["max_relative_position"] == 3 and config_json["vocab_size"] == SMALL.vocab_size
  assert {"tokenizer.json", "tokenizer_config.json"} <= set(os.listdir(out))
  state = hf_dir.load_state_dict(out)
  assert "nezha.encoder.layer.1.attention.self.query.weight" in state and not any("position" in k for k in state)
  back, back_config = hf_dir.read_hf_dir(out)
  assert back_config == SMALL
  flat, flat_back = nt.flatten(params), nt.flatten(back)
  assert sorted(flat) == sorted(flat_back)
  for path, value in flat.items():
    assert value.tobytes() == np.asarray(flat_back[path]).tobytes(), path
  assert hf_dir.check_read_back(params, SMALL, out) == 0.0  # the same computation on the same numbers


def test_import_skips_4x_relative_buffers_and_names_unknown_keys(params):
  state = hf_params.params_to_hf(params, SMALL)
  buffer = "nezha.encoder.layer.1.attention.self.relative_positions_encoding.positions_encoding"
  back = hf_params.hf_to_params({**state, buffer: np.zeros((64, 64, 16), np.float32)}, SMALL)
  assert sorted(nt.flatten(back)) == sorted(nt.flatten(params))
  with pytest.raises(KeyError, match="nezha.embeddings.position_embeddings.weight"):
    hf_params.hf_to_params({**state, "nezha.embeddings.position_embeddings.weight": np.zeros((64, 32))}, SMALL)


# transformers 4.40.2's NezhaForPreTraining (the last release with NEZHA) on _golden_state(): its pooled NSP logits,
# its MLM logits at positions [[1, 5], [2, 3]] (first 3 vocabulary entries) and its last hidden state (rows 0 and 1
# at positions [1, 4, 6] and [1, 4], first 4 dims). Produced once by loading the same arrays (strict=False: only the
# tied decoder was left to tie) into that class in a separate environment.
GOLDEN_NSP = [[-0.23320, 0.01548], [-0.03552, 0.33534]]
GOLDEN_MLM = [[[0.28698, 1.35441, 1.90341], [0.39618, -0.24407, 1.36127]],
              [[-1.14495, -1.01661, -2.43514], [-0.00855, 1.36822, -1.09579]]]
GOLDEN_HIDDEN_ROW0 = [[-0.63682, 0.23038, 0.19323, 0.16536], [-0.35160, 0.52039, 0.03798, 0.01303],
                      [-0.58054, 1.06732, -0.92474, -0.24628]]
GOLDEN_HIDDEN_ROW1 = [[1.39843, -0.05161, 1.48978, -0.45174], [1.22025, 1.08921, 0.32365, -0.76755]]
GOLDEN_CONFIG = nezha.NezhaConfig(vocab_size=24, hidden_size=8, num_layers=2, num_heads=2, intermediate_size=16,
                                  max_relative_position=2, max_position_embeddings=16, hidden_dropout=0.0,
                                  attention_dropout=0.0)
GOLDEN_IDS = np.array([[2, 5, 9, 13, 7, 3, 11], [2, 17, 4, 20, 3, 0, 0]])
GOLDEN_SEGMENTS = np.array([[0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 1, 0, 0]])
GOLDEN_POSITIONS = np.array([[1, 5], [2, 3]])


def _golden_state(model):
  """HF-layout arrays drawn in sorted-name order: LayerNorm weights near 1, biases small, the rest N(0, 0.5^2)."""
  mask = (GOLDEN_IDS > 0).astype(np.int64)
  abstract = nn.unbox(jax.eval_shape(
      lambda: model.init(jax.random.key(0), GOLDEN_IDS, mask, GOLDEN_SEGMENTS, GOLDEN_POSITIONS))["params"])
  zeros = jax.tree_util.tree_map(lambda x: np.zeros(x.shape, x.dtype), abstract)
  shapes = {k: v.shape for k, v in hf_params.params_to_hf(zeros, GOLDEN_CONFIG).items()}
  rng = np.random.default_rng(20)
  scale = lambda k: (1.0, 0.1) if k.endswith("LayerNorm.weight") else (0.0, 0.1) if k.endswith("bias") else (0.0, 0.5)
  return {k: (scale(k)[0] + scale(k)[1] * rng.standard_normal(shapes[k])).astype(np.float32) for k in sorted(shapes)}


def test_outputs_match_transformers_4x_nezha():
  model = EncoderWithHeads(GOLDEN_CONFIG, HEADS)
  mask = (GOLDEN_IDS > 0).astype(np.int64)
  params = hf_params.hf_to_params(_golden_state(model), GOLDEN_CONFIG)
  out = jax.jit(model.apply)({"params": params}, GOLDEN_IDS, mask, GOLDEN_SEGMENTS, GOLDEN_POSITIONS)
  np.testing.assert_allclose(out["nsp_logits"], GOLDEN_NSP, atol=1e-4)
  np.testing.assert_allclose(np.asarray(out["mlm_logits"])[:, :, :3], GOLDEN_MLM, atol=1e-4)
  hidden = np.asarray(out["sequence_output"])
  np.testing.assert_allclose(hidden[0, [1, 4, 6], :4], GOLDEN_HIDDEN_ROW0, atol=1e-4)
  np.testing.assert_allclose(hidden[1, [1, 4], :4], GOLDEN_HIDDEN_ROW1, atol=1e-4)


def test_configs_and_bad_input():
  base = configlib.load("nezha_base", {})
  encoder = registry.encoder_config(base.model.to_dict())
  assert (type(encoder).family, encoder.position_encoding, encoder.max_relative_position, encoder.vocab_size,
          encoder.num_layers, encoder.hidden_size) == ("nezha", "relative_sinusoidal", 64, 21128, 12, 768)
  assert base.optim.name == "lamb" and base.data.whole_word_masking and base.train.objective == "mlm_nsp"
  assert base.data.segmenter == "jieba" and configlib.load("nezha_tiny", {}).data.segmenter == ""
  assert registry.encoder_config(configlib.load("bert_tiny", {}).model.to_dict()).position_encoding == "absolute"
  with pytest.raises(ValueError, match="position_encoding must be 'relative_sinusoidal'"):
    nezha.NezhaConfig(position_encoding="absolute")
  with pytest.raises(ValueError, match=r"position_encoding 'rope' is not one of \('absolute', 'relative_sinusoidal'\)"):
    bert.BertConfig(position_encoding="rope")
  with pytest.raises(ValueError, match="prefix tuning .* use prompt_kind='prompt'"):
    dataclasses.replace(SMALL, prompt_kind="prefix")
  with pytest.raises(ValueError, match="head size, which must be even"):
    nezha.NezhaConfig(hidden_size=30, num_heads=2)
  with pytest.raises(ValueError, match="max_relative_position must be >= 1"):
    dataclasses.replace(SMALL, max_relative_position=0)
  # A soft prompt takes the first positions of the row, so relative distances cover it: it runs.
  prompted = dataclasses.replace(SMALL, prompt_kind="prompt", prompt_length=3, num_layers=1)
  ids, mask, segments = _ids()
  model = EncoderWithHeads(prompted, ("mlm",))
  out = jax.jit(lambda: model.apply(model.init(jax.random.key(0), ids, mask, segments), ids, mask, segments))()
  assert out["sequence_output"].shape == (2, 9, SMALL.hidden_size) and np.isfinite(out["mlm_logits"]).all()
