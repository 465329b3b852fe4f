"""SpanBERT's span boundary objective (mlm_sbo): spans and their boundaries read off the masked positions, the SBO
head against the paper's formula in numpy, gradients, loss = MLM + SBO, FLOPs, the HF export with the SBO head
beside it (and back, into a run of another layout), sharded = one device, and a short training run."""

import dataclasses
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import torch
import transformers
from safetensors.numpy import load_file

from bert_jax.convert import hf_dir, workdir
from bert_jax.core import configlib, optim, sharding
from bert_jax.core.train_state import create_train_state
from bert_jax.models import span_boundary_head
from bert_jax.models.bert import BertConfig
from bert_jax.models.config import trunk_flops_per_sequence
from bert_jax.objectives import registry as objectives
from bert_jax.objectives.span_boundary import span_boundaries
from bert_jax.trainers import pretrain

import train_helpers

SEQ, PRED = 16, 6
# vocab 101 padded to 104: export cuts the SBO bias's padded rows as the MLM head's, import pads them back
TINY = BertConfig(vocab_size=101, vocab_pad_multiple=8, hidden_size=32, num_layers=1, num_heads=2,
                  intermediate_size=64, max_position_embeddings=32, hidden_dropout=0.0, attention_dropout=0.0,
                  dtype="float32", scan_layers=False)


def _batch():
  """Row 0: [CLS] 1..10 [SEP] pad: spans {1, 2} (beside [CLS]), {5}, {9, 10} (beside [SEP]), slots out of order,
  one padded slot. Row 1: no [SEP], the last real token masked (its right neighbour is padding), and a span
  {3, 4}."""
  ids = np.array([[2] + list(range(10, 20)) + [3, 0, 0, 0, 0], [2] + list(range(30, 37)) + [0] * 8])
  mask = (ids > 0).astype(np.int32)
  positions = np.array([[9, 1, 5, 10, 2, 0], [3, 4, 7, 0, 0, 0]], np.int32)
  weights = np.array([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]], np.float32)
  labels = np.take_along_axis(ids, positions, axis=1) * (weights > 0)
  masked_ids = ids.copy()
  np.put_along_axis(masked_ids, positions, np.where(weights > 0, 4, np.take_along_axis(ids, positions, 1)), axis=1)
  return dict(input_ids=masked_ids.astype(np.int32), input_mask=mask, segment_ids=np.zeros_like(mask),
              masked_lm_positions=positions, masked_lm_ids=labels.astype(np.int32), masked_lm_weights=weights)


def test_boundaries_are_the_unmasked_neighbours_of_each_run():
  b = _batch()
  left, right, offset, w = map(np.asarray, span_boundaries(b["masked_lm_positions"], b["masked_lm_weights"],
                                                           b["input_mask"]))
  real = b["masked_lm_weights"] > 0
  # row 0, slots (9, 1, 5, 10, 2): spans 9-10 -> (8, 11 = [SEP]), 1-2 -> (0 = [CLS], 3), 5 -> (4, 6)
  np.testing.assert_array_equal(left[0][real[0]], [8, 0, 4, 8, 0])
  np.testing.assert_array_equal(right[0][real[0]], [11, 3, 6, 11, 3])
  np.testing.assert_array_equal(offset[0][real[0]], [0, 0, 0, 1, 1])
  np.testing.assert_array_equal(w[0], [1, 1, 1, 1, 1, 0])  # the padded slot has no target
  # row 1: span 3-4 -> (2, 5); position 7's right neighbour is padding: no SBO target
  np.testing.assert_array_equal((left[1][:2], right[1][:2], offset[1][:2]), ([2, 2], [5, 5], [0, 1]))
  np.testing.assert_array_equal(w[1], [1, 1, 0, 0, 0, 0])
  assert (0 <= left).all() and (right < SEQ).all() and (offset < span_boundary_head.MAX_SPAN_TARGETS).all()


def test_boundaries_at_the_row_edges_long_spans_and_packed_instances():
  seq, span = 20, span_boundary_head.MAX_SPAN_TARGETS + 1
  mask = np.ones((3, seq), np.int32)
  # row 0: a span of 16 tokens 1..16: the 16th has no position embedding, so no target (as the reference cuts it)
  # row 1: position 0 masked (nothing to its left) and the last position (nothing to its right)
  # row 2: packed instances [0..9] [10..19]: span 8-9 ends the first one, its right neighbour 10 is the next's
  positions = np.zeros((3, span), np.int32)
  weights = np.zeros((3, span), np.float32)
  positions[0], weights[0] = np.arange(1, span + 1), 1
  positions[1, :2], weights[1, :2] = [0, seq - 1], 1
  positions[2, :3], weights[2, :3] = [8, 9, 14], 1
  segments = np.zeros((3, seq), np.int32)
  segments[2, 10:] = 1
  _, _, offset, w = map(np.asarray, span_boundaries(positions, weights, mask, segments))
  np.testing.assert_array_equal(offset[0], np.minimum(np.arange(span), span_boundary_head.MAX_SPAN_TARGETS - 1))
  np.testing.assert_array_equal(w[0], [1] * (span - 1) + [0])
  np.testing.assert_array_equal(w[1][:2], [0, 0])
  np.testing.assert_array_equal(w[2][:3], [0, 0, 1])  # 8-9 cross into the next instance; 14 -> (13, 15) does not
  np.testing.assert_array_equal(np.asarray(span_boundaries(positions, weights, mask).weights)[2][:3], [1, 1, 1])


@pytest.fixture(scope="module")
def tiny():
  """(objective, params with every weight random but the padded vocabulary rows, which stay 0 as training leaves
  them and export drops them, the hand-made batch, the model's outputs on it)."""
  objective = objectives.make_objective("mlm_sbo", TINY, SEQ, PRED)
  shapes = jax.eval_shape(lambda: nn.unbox(objective.init_params(jax.random.key(0))))
  rng = np.random.default_rng(0)
  params = jax.tree_util.tree_map(lambda x: rng.normal(0, 0.2, x.shape).astype(np.float32), shapes)
  params["encoder"]["embeddings"]["word_embeddings"]["embedding"][TINY.vocab_size:] = 0
  params["mlm"]["output_bias"][TINY.vocab_size:] = 0
  params["sbo"]["output_bias"][TINY.vocab_size:] = 0
  batch = _batch()
  out = jax.jit(objective.apply, static_argnums=3)(params, batch, jax.random.key(0), True)
  return objective, params, batch, jax.tree_util.tree_map(np.asarray, out)


def _layer_norm(x, scale, bias, eps):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * scale + bias


def _gelu(x):
  return 0.5 * x * (1.0 + scipy.special.erf(x / np.sqrt(2.0)))


def test_sbo_head_is_the_papers_formula(tiny):
  _, params, batch, out = tiny
  x = np.asarray(out["sequence_output"], np.float64)
  sbo = {k: (np.asarray(v, np.float64) if not isinstance(v, dict) else {n: np.asarray(a, np.float64)
                                                                        for n, a in v.items()})
         for k, v in params["sbo"].items()}
  word_table = np.asarray(params["encoder"]["embeddings"]["word_embeddings"]["embedding"], np.float64)
  eps = TINY.layer_norm_eps
  positions, real = batch["masked_lm_positions"], batch["masked_lm_weights"] > 0
  for row in range(2):
    masked = set(positions[row][real[row]].tolist())
    for slot in range(PRED):
      if not real[row, slot]:
        continue
      i = int(positions[row, slot])
      s, e = i, i
      while s - 1 in masked:
        s -= 1
      while e + 1 in masked:
        e += 1
      if not batch["input_mask"][row, e + 1]:
        continue  # no right boundary: no target (checked above)
      h0 = np.concatenate([x[row, s - 1], x[row, e + 1], sbo["position_embeddings"][i - s]])
      h1 = _layer_norm(_gelu(h0 @ sbo["dense_1"]["kernel"] + sbo["dense_1"]["bias"]),
                       sbo["layer_norm_1"]["scale"], sbo["layer_norm_1"]["bias"], eps)
      y = _layer_norm(_gelu(h1 @ sbo["dense_2"]["kernel"] + sbo["dense_2"]["bias"]),
                      sbo["layer_norm_2"]["scale"], sbo["layer_norm_2"]["bias"], eps)
      logits = (y @ word_table.T + sbo["output_bias"])[:TINY.vocab_size]
      np.testing.assert_allclose(np.asarray(out["sbo_logits"][row, slot]), logits, rtol=1e-4, atol=1e-4,
                                 err_msg=f"row {row} slot {slot}")


def test_loss_is_mlm_mean_plus_sbo_mean_and_flops_count_the_head(tiny):
  objective, params, batch, out = tiny
  sums = jax.jit(objective.loss_sums, static_argnums=3)(params, batch, jax.random.key(0), True)
  loss = float(objective.loss(sums, objective.denominators(batch)))

  def mean_xent(logits, weights):
    logits = np.asarray(logits, np.float64)
    logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    xent = logz - np.take_along_axis(logits, batch["masked_lm_ids"][..., None], -1)[..., 0]
    return (xent * weights).sum() / weights.sum()

  sbo_weights = np.array([[1, 1, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0]], np.float32)
  expected = mean_xent(out["mlm_logits"], batch["masked_lm_weights"]) + mean_xent(out["sbo_logits"], sbo_weights)
  assert loss == pytest.approx(expected, rel=1e-5)
  summaries = {k: float(v) for k, v in objective.summaries(sums).items()}
  assert summaries["loss"] == pytest.approx(summaries["mlm_loss"] + summaries["sbo_loss"], rel=1e-6)
  assert summaries["loss"] == pytest.approx(loss, rel=1e-5)  # one batch: the summaries are the loss
  assert 0 <= summaries["sbo_accuracy"] <= 1 and float(sums["sbo"]["weight_sum"]) == 7
  H, V, D = 32, 101, span_boundary_head.POSITION_EMBEDDING_SIZE
  assert objective.flops_per_sequence() == pytest.approx(
      trunk_flops_per_sequence(TINY, SEQ) + 6 * PRED * (H * H + H * V) + 6 * PRED * ((2 * H + D) * H + H * H + H * V))


def test_sbo_gradients_reach_its_head_and_the_encoder_not_the_mlm_head(tiny):
  objective, params, batch, _ = tiny
  grads = jax.jit(jax.grad(lambda p: objective.loss_sums(p, batch, jax.random.key(0), True)["sbo"]["loss_sum"]))(
      params)
  nonzero = lambda tree: all(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree_util.tree_leaves(tree))
  assert nonzero(grads["sbo"])
  assert nonzero(grads["encoder"]["layer_0"]) and nonzero(grads["encoder"]["embeddings"]["word_embeddings"])
  assert all(float(jnp.max(jnp.abs(g))) == 0 for g in jax.tree_util.tree_leaves(grads["mlm"]))
  # relative positions 0 and 1 are the only ones the batch uses
  rows_hit = np.flatnonzero(np.abs(np.asarray(grads["sbo"]["position_embeddings"])).max(-1))
  np.testing.assert_array_equal(rows_hit, [0, 1])


def test_export_writes_bert_for_masked_lm_and_the_sbo_head_beside_it(tiny, tmp_path):
  _, params, _, _ = tiny
  out_dir = str(tmp_path / "hf")
  logged = []
  architecture = hf_dir.write_hf_dir(params, TINY, out_dir, log=logged.append)
  assert architecture == "BertForMaskedLM"
  assert any("span_boundary_head.safetensors" in line and "BertForMaskedLM has no place" in line for line in logged)
  # transformers loads the encoder and MLM head with nothing missing or left over, and its logits are ours
  hf, info = transformers.BertForMaskedLM.from_pretrained(out_dir, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  assert hf_dir.check_hf_dir(params, TINY, out_dir) < 1e-4
  side = load_file(os.path.join(out_dir, span_boundary_head.SIDE_FILE))
  assert sorted(side) == sorted(p for p, _, _ in span_boundary_head.SIDE_ROWS)
  assert side["sbo/output_bias"].shape == (101,)  # the padded vocabulary rows are cut, as for the MLM bias
  with open(os.path.join(out_dir, span_boundary_head.SIDE_LAYOUT_FILE)) as f:
    note = json.load(f)
  assert note["tensors"]["sbo/dense_1/kernel"]["shape"] == [2 * 32 + 200, 32] and note["max_span_targets"] == 15
  # back: every weight bit for bit, the SBO head included
  back, _ = hf_dir.read_hf_dir(out_dir, vocab_pad_multiple=8)
  assert sorted(back) == ["encoder", "mlm", "sbo"]
  flat = lambda tree: {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(tree)}
  ours, theirs = flat(params), flat(back)
  assert sorted(ours) == sorted(theirs)
  for key, value in ours.items():
    np.testing.assert_array_equal(theirs[key], value, err_msg=key)


def test_sbo_head_comes_back_through_from_hf_into_a_scanned_run_or_starts_fresh(tiny, tmp_path):
  _, params, _, _ = tiny
  out_dir = str(tmp_path / "hf")
  hf_dir.write_hf_dir(params, TINY, out_dir, log=lambda _: None)
  # the checkpoint from_hf writes is per-layer with 101 vocabulary rows; the run scans its layers and pads to 104
  scanned = objectives.make_objective("mlm_sbo", dataclasses.replace(TINY, scan_layers=True), SEQ, PRED)
  like = nn.unbox(jax.jit(scanned.init_params)(jax.random.key(7)))
  shardings = jax.tree_util.tree_map(lambda x: x.sharding, like)
  ckpt = str(tmp_path / "ckpt")  # what `convert from_hf` writes, then init_checkpoint reads
  workdir.write_params_checkpoint(ckpt, *workdir.join_models(hf_dir.read_hf_models(out_dir)))
  logged = []
  restored = workdir.restore_params(ckpt, like, shardings, scanned.config, log=logged.append)
  for got, want in zip(jax.tree_util.tree_leaves(restored["sbo"]), jax.tree_util.tree_leaves(params["sbo"])):
    np.testing.assert_array_equal(np.asarray(got), want)
  np.testing.assert_array_equal(np.asarray(restored["encoder"]["layers"]["layer"]["output"]["kernel"][0]),
                                params["encoder"]["layer_0"]["output"]["kernel"])
  assert not any("starts fresh" in line for line in logged), logged
  # an HF directory without the side file (a plain BERT export over the old one drops it): the SBO head starts
  # fresh, and the run says so
  hf_dir.write_hf_dir({k: v for k, v in params.items() if k != "sbo"}, TINY, out_dir, log=lambda _: None)
  assert not {span_boundary_head.SIDE_FILE, span_boundary_head.SIDE_LAYOUT_FILE} & set(os.listdir(out_dir))
  plain, _ = hf_dir.read_hf_dir(out_dir)
  assert sorted(plain) == ["encoder", "mlm"]
  restored = workdir.fit_params(plain, like, shardings, scanned.config, "init_checkpoint X", log=logged.append)
  assert any("'sbo' starts fresh" in line for line in logged), logged
  for got, want in zip(jax.tree_util.tree_leaves(restored["sbo"]), jax.tree_util.tree_leaves(like["sbo"])):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_spanbert_configs_and_the_families_that_take_the_objective():
  for name in ("spanbert_tiny", "spanbert_base"):
    config = configlib.load(name)
    assert (config.data.masking, config.data.mode, config.data.dynamic_masking) == ("span", "full_sentences", True)
    model_config, objective = pretrain.build(config)
    assert type(model_config).family == "bert" and objective.name == "mlm_sbo" and objective.heads == ("mlm", "sbo")
  # the paper's SpanBERT-base recipe
  assert (model_config.num_layers, model_config.hidden_size, config.data.max_seq_length, config.train.batch_size,
          config.train.steps, config.optim.peak_learning_rate, config.optim.warmup_steps, config.optim.eps) == (
              12, 768, 512, 256, 2400000, 1e-4, 10000, 1e-8)
  with pytest.raises(ValueError, match=r"'mlm_sbo' trains heads \['sbo'\] that model family 'roberta' has no HF"):
    pretrain.build(configlib.load("roberta_tiny", {"train.objective": "mlm_sbo"}))


def _metrics(config, model_config, mesh_shape, steps):
  mesh = sharding.create_mesh(dict(zip(sharding.MESH_AXES, mesh_shape)),
                              devices=jax.devices()[:int(np.prod(mesh_shape))])
  rules = sharding.rules_from_config(config.mesh.logical_axis_rules)
  objective = objectives.make_objective(config.train.objective, model_config, train_helpers.SEQ, train_helpers.PRED)
  tx, schedule = optim.make_optimizer(config.optim, config.train.steps)
  out = []
  with nn.logical_axis_rules(rules):
    state, shardings = create_train_state(objective.init_params, tx, mesh, rules, 0)
    step_fn, _ = pretrain.make_step_functions(config, objective, tx, schedule, mesh, shardings)
    batch = train_helpers.random_batch(16, vocab=256)  # the same batch every step
    for _ in range(steps):
      state, m = step_fn(state, sharding.global_batch(batch, mesh))
      out.append({k: float(m[k]) for k in ("loss", "mlm_loss", "sbo_loss", "sbo_accuracy")})
  return out


@pytest.fixture(scope="module")
def single_device_run():
  """(run config, model config, 12 steps' metrics on one device): a scanned 1-layer, 32-hidden BERT whose sharded
  dims all divide by 2."""
  config = configlib.load("tiny", {"train.objective": "mlm_sbo", "train.deterministic": True, "optim.warmup_steps": 2,
                                   "optim.peak_learning_rate": 3e-3, "train.steps": 20, "mesh.data": -1})
  model_config = dataclasses.replace(TINY, vocab_size=256, vocab_pad_multiple=128, scan_layers=True)
  return config, model_config, _metrics(config, model_config, (1, 1, 1), 12)


def test_training_steps_lower_the_sbo_loss(single_device_run):
  _, _, metrics = single_device_run
  assert metrics[-1]["sbo_loss"] < 0.9 * metrics[0]["sbo_loss"], [m["sbo_loss"] for m in metrics]
  assert metrics[-1]["mlm_loss"] < metrics[0]["mlm_loss"]


def test_sharded_equals_single_device(single_device_run):
  """data x fsdp x tensor = 2 x 2 x 2: the SBO head's weights sharded as their logical axes say."""
  config, model_config, single = single_device_run
  sharded = _metrics(config, model_config, (2, 2, 2), 3)
  for a, b in zip(sharded, single):
    for k in a:
      np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)
