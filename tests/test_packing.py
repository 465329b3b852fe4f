"""Sequence packing: nothing lost, same logits as unpacked, read by the pipeline, trained end to end."""
import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from bert_jax import inputs
from bert_jax.data import packing, pipeline, schema
from bert_jax.models.bert import BertConfig
from bert_jax.models.pretraining import EncoderWithHeads
from data_helpers import write_google_style_records
from cli_helpers import cli_env

SEQ, PRED = 32, 5


def _instances(n, seed=0, vocab=100):
  """Padded google-schema instances of varied lengths: [CLS] A [SEP] B [SEP], predictions inside."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(6, SEQ + 1, n)
  lengths[: n // 4] = SEQ  # some full rows, as real data has
  mask = (np.arange(SEQ)[None] < lengths[:, None]).astype(np.int64)
  ids = rng.integers(5, vocab, (n, SEQ)) * mask
  ids[:, 0] = 2
  seg = ((np.arange(SEQ)[None] >= (lengths // 2)[:, None]) * mask).astype(np.int64)
  positions = np.zeros((n, PRED), np.int64)
  weights = np.zeros((n, PRED), np.float32)
  for i, length in enumerate(lengths):
    k = min(PRED, max(1, int(round(0.15 * length))))
    positions[i, :k] = np.sort(rng.choice(np.arange(1, length), k, replace=False))
    weights[i, :k] = 1.0
  return {"input_ids": ids, "input_mask": mask, "segment_ids": seg, "masked_lm_positions": positions,
          "masked_lm_ids": rng.integers(5, vocab, (n, PRED)) * (weights > 0),
          "masked_lm_weights": weights, "next_sentence_labels": rng.integers(0, 2, (n, 1))}


def _unpack(packed):
  """Packed rows -> {tuple(tokens): (segment ids, labels at positions, nsp label)} for every instance."""
  found = []
  for r in range(len(packed["input_ids"])):
    for k in np.flatnonzero(packed["nsp_weights"][r]):
      span = packed["attention_segments"][r] == k + 1
      start = int(np.flatnonzero(span)[0])
      assert start == packed["nsp_positions"][r, k]
      np.testing.assert_array_equal(packed["position_ids"][r][span], np.arange(span.sum()))
      in_span = (packed["masked_lm_weights"][r] > 0) & span[packed["masked_lm_positions"][r]]
      found.append((tuple(packed["input_ids"][r][span]), tuple(packed["segment_ids"][r][span]),
                    tuple(packed["masked_lm_positions"][r][in_span] - start),
                    tuple(packed["masked_lm_ids"][r][in_span]), int(packed["next_sentence_labels"][r, k])))
  return found


def test_packing_keeps_every_instance_whole_and_fills_rows():
  feats = _instances(60)
  spec = packing.PackingSpec(SEQ, PRED, max_instances=3)
  packed = packing.pack(feats, spec)
  n_real = feats["input_mask"].sum(1)
  expected = []
  for i in range(60):
    real = feats["masked_lm_weights"][i] > 0
    expected.append((tuple(feats["input_ids"][i, :n_real[i]]), tuple(feats["segment_ids"][i, :n_real[i]]),
                     tuple(feats["masked_lm_positions"][i][real]), tuple(feats["masked_lm_ids"][i][real]),
                     int(feats["next_sentence_labels"][i, 0])))
  assert sorted(_unpack(packed)) == sorted(expected)
  rows = len(packed["input_ids"])
  assert rows < 60 and packed["nsp_weights"].sum(1).max() <= 3
  assert packed["input_mask"].sum(1).max() <= SEQ
  assert (packed["masked_lm_weights"] > 0).sum(1).max() <= spec.row_predictions
  assert packed["input_mask"].sum() / (rows * SEQ) > feats["input_mask"].sum() / (60 * SEQ) + 0.2


def test_instance_too_long_for_a_row_is_refused():
  with pytest.raises(ValueError, match="instance 1 has 40 tokens"):
    packing.plan_rows([10, 40], [1, 1], packing.PackingSpec(SEQ, PRED, 2))
  with pytest.raises(ValueError, match="at least max_predictions_per_seq"):
    packing.PackingSpec(SEQ, PRED, 2, predictions_per_row=3)


def test_packed_rows_give_the_unpacked_logits():
  config = BertConfig.from_size("tiny", vocab_size=100, max_position_embeddings=SEQ, hidden_dropout=0.0,
                                attention_dropout=0.0)
  model = EncoderWithHeads(config, heads=("mlm", "nsp"))
  feats = _instances(12, seed=1)
  i32 = lambda x: np.asarray(x, np.int32)
  # jitted: run op by op, each of the model's ops compiles a program of its own (this test took 22 s instead of 5)
  params = jax.jit(model.init)(jax.random.key(0), i32(feats["input_ids"]), i32(feats["input_mask"]),
                      i32(feats["segment_ids"]), i32(feats["masked_lm_positions"]))
  plain = jax.jit(model.apply)(params, i32(feats["input_ids"]), i32(feats["input_mask"]), i32(feats["segment_ids"]),
                      i32(feats["masked_lm_positions"]))
  spec = packing.PackingSpec(SEQ, PRED, max_instances=4)
  rows = packing.plan_rows(feats["input_mask"].sum(1), (feats["masked_lm_weights"] > 0).sum(1), spec)
  assert max(len(r) for r in rows) > 1  # something was actually packed
  p = packing.pack_features(feats, rows, spec)
  out = jax.jit(model.apply)(params, i32(p["input_ids"]), i32(p["input_mask"]), i32(p["segment_ids"]),
                    i32(p["masked_lm_positions"]), position_ids_BxT=i32(p["position_ids"]),
                    attention_segments_BxT=i32(p["attention_segments"]), cls_positions_BxK=i32(p["nsp_positions"]))
  for r, members in enumerate(rows):
    pred = 0
    for k, i in enumerate(members):
      np.testing.assert_allclose(out["nsp_logits"][r, k], plain["nsp_logits"][i], atol=1e-5, rtol=1e-5)
      n = int((feats["masked_lm_weights"][i] > 0).sum())
      np.testing.assert_allclose(out["mlm_logits"][r, pred:pred + n], plain["mlm_logits"][i, :n], atol=1e-5,
                                 rtol=1e-5)
      start, length = int(p["nsp_positions"][r, k]), int(feats["input_mask"][i].sum())
      np.testing.assert_allclose(out["sequence_output"][r, start:start + length],
                                 plain["sequence_output"][i, :length], atol=1e-5, rtol=1e-5)
      pred += n


@pytest.fixture(scope="module")
def packed_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("packing")
  src = root / "prepared"
  (src / "train").mkdir(parents=True)
  (src / "eval").mkdir()
  for shard in range(2):
    write_google_style_records(str(src / "train" / f"part-{shard}.tfrecord"), 60, start=shard * 60, seed=shard,
                               seq=SEQ, pred=PRED)
  write_google_style_records(str(src / "eval" / "part-0.tfrecord"), 16, start=900, seed=7, seq=SEQ, pred=PRED)
  schema.write_manifest(str(src), {"max_seq_length": SEQ, "max_predictions_per_seq": PRED,
                                   "splits": {"train": {"instances": 120}}})
  manifest = packing.pack_prepared(str(src), str(root / "packed"), max_instances=3, log=lambda _: None)
  return root, manifest


def test_pipeline_reads_packed_rows(packed_dir):
  root, manifest = packed_dir
  assert manifest["packed"]["instances"] == 120 and manifest["packed"]["rows"] < 120
  files = pipeline.resolve_files(str(root / "packed" / "train" / "*.tfrecord"))
  it = inputs.train_iterator(_cfg(files, 3), files, None)
  batch = next(it)
  P = manifest["packed"]["predictions_per_row"]
  assert batch["input_ids"].shape == (4, SEQ) and batch["attention_segments"].shape == (4, SEQ)
  assert batch["masked_lm_positions"].shape == (4, P) and batch["nsp_positions"].shape == (4, 3)
  assert batch["nsp_weights"].dtype == np.float32 and (batch["nsp_weights"].sum(1) >= 1).all()


def _cfg(files, k):
  from bert_jax.core import configlib
  return configlib.load("tiny", {"data.train_files": ",".join(files), "data.max_seq_length": SEQ,
                                 "data.max_predictions_per_seq": PRED, "data.pack_instances": k,
                                 "train.batch_size": 4, "data.shuffle": False})


def test_packing_setting_must_match_the_data(packed_dir):
  root, manifest = packed_dir
  packed_files = [str(root / "packed" / "train" / "packed-00000-of-00002.tfrecord")]
  with pytest.raises(ValueError, match="set --config.data.pack_instances=3"):
    inputs.check_packing(0, manifest, packed_files)
  with pytest.raises(ValueError, match="python -m bert_jax.data.packing"):
    inputs.check_packing(2, schema.find_manifest([str(root / "prepared" / "train" / "part-0.tfrecord")]),
                         ["x"])


def test_train_on_packed_rows_end_to_end(packed_dir, tmp_path):
  root, _ = packed_dir
  args = [sys.executable, "-m", "bert_jax.train", "--config=tiny", f"--workdir={tmp_path}"] + [
      f"--config.{k}={v}" for k, v in {
          "data.train_files": f"{root}/packed/train/*.tfrecord", "data.eval_files": f"{root}/prepared/eval/*",
          "data.max_seq_length": SEQ, "data.max_predictions_per_seq": PRED, "data.pack_instances": 3,
          "model.vocab_size": 2048, "train.steps": 4, "train.batch_size": 8, "train.log_every": 1,
          "train.eval_every": 1000, "train.eval_batches": 1, "optim.warmup_steps": 2,
          "checkpoint.every_steps": 100}.items()]
  result = subprocess.run(args, capture_output=True, text=True, timeout=300,
                          env=cli_env())
  assert result.returncode == 0, result.stderr[-3000:]
  with open(tmp_path / "metrics.jsonl") as f:
    lines = [json.loads(l) for l in f]
  train_lines = [l for l in lines if l.get("split") != "eval"]
  assert [l["step"] for l in train_lines] == [1, 2, 3, 4]
  assert all(np.isfinite(l["loss"]) and 0.0 <= l["nsp_accuracy"] <= 1.0 for l in train_lines)
  assert any(l.get("split") == "eval" for l in lines)
