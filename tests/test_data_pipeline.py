"""tf.data pipeline: independent-writer records, per-process sharding, determinism, resume, checks."""
import json

import numpy as np
import pytest

from bert_jax.data import masking, pipeline, schema
from data_helpers import PositionCheckpoints, write_google_style_records

SEQ, PRED = 32, 5
KEYS = {"input_ids", "input_mask", "segment_ids", "masked_lm_positions", "masked_lm_ids", "masked_lm_weights",
        "next_sentence_labels"}


@pytest.fixture(scope="module")
def record_files(tmp_path_factory):
  root = tmp_path_factory.mktemp("records")
  files = []
  for shard in range(8):
    path = str(root / f"part-{shard}.tfrecord")
    write_google_style_records(path, 25, SEQ, PRED, start=shard * 25, seed=shard)
    files.append(path)
  return files


def _dynamic(vocab_size, pred=PRED):
  """Dynamic token masking over a vocabulary whose ids 0-4 are the special tokens ([CLS] 2, [SEP] 3, [MASK] 4)."""
  vocab = masking.VocabIds(cls_id=2, sep_id=3, mask_id=4, normal_ids=np.arange(5, vocab_size),
                           word_start=np.ones(vocab_size, bool))
  return masking.DynamicMasking(masking.MaskingOptions(max_predictions_per_seq=pred), vocab)


def _cfg(files, **kw):
  base = dict(files=tuple(files), batch_size=4, max_seq_length=SEQ, max_predictions_per_seq=PRED, seed=7,
              shuffle_buffer=50)
  base.update(kw)
  return pipeline.PipelineConfig(**base)


def _example_ids(cfg, index, count):
  ids = []
  for batch in pipeline.BatchIterator(cfg, index, count):
    ids.extend(batch["input_ids"][:, 1].tolist())
  return ids


def test_reads_independently_written_google_records(record_files):
  batch = next(pipeline.BatchIterator(_cfg(record_files)))
  assert set(batch) == KEYS
  assert batch["input_ids"].shape == (4, SEQ) and batch["input_ids"].dtype == np.int32
  assert batch["masked_lm_weights"].dtype == np.float32 and batch["next_sentence_labels"].shape == (4,)
  assert np.all(batch["input_ids"][:, 0] == 2)


@pytest.mark.parametrize("num_files", [8, 2])  # by file, and by example (fewer files than processes)
def test_four_processes_are_disjoint_and_cover_an_epoch(record_files, num_files):
  files = record_files[:num_files]
  cfg = _cfg(files, repeat=False, drop_remainder=False)
  streams = [_example_ids(cfg, i, 4) for i in range(4)]
  seen = [x for s in streams for x in s]
  assert len(seen) == len(set(seen)), "processes must not share examples"
  assert sorted(seen) == list(range(1000, 1000 + 25 * num_files))
  assert all(streams), "every process gets data"


def _take(it, n):
  return [next(it) for _ in range(n)]


@pytest.mark.parametrize("dynamic", [False, True])
def test_same_seed_same_batches_and_exact_resume(record_files, tmp_path, dynamic):
  masking = _dynamic(2000) if dynamic else None
  cfg = _cfg(record_files, dynamic_masking=masking)
  a, b = pipeline.BatchIterator(cfg), pipeline.BatchIterator(cfg)
  first_a, first_b = _take(a, 6), _take(b, 6)
  for x, y in zip(first_a, first_b):
    for k in KEYS:
      np.testing.assert_array_equal(x[k], y[k])
  other = next(pipeline.BatchIterator(_cfg(record_files, seed=8, dynamic_masking=masking)))
  assert not np.array_equal(other["input_ids"], first_a[0]["input_ids"])

  it = pipeline.BatchIterator(cfg)
  _take(it, 3)
  path = it.save(str(tmp_path / "pos"))
  expected = _take(it, 60)  # past the end of the 200-example epoch: the reshuffle must match too
  restored = pipeline.BatchIterator(cfg)
  restored.restore(path)
  for x, y in zip(expected, _take(restored, 60)):
    for k in KEYS:
      np.testing.assert_array_equal(x[k], y[k])


def test_dynamic_masking_remasks_each_epoch_with_the_rules(record_files):
  masking = _dynamic(2000)
  cfg = _cfg(record_files[:1], shuffle=False, dynamic_masking=masking, batch_size=25)
  it = pipeline.BatchIterator(cfg)
  epoch1, epoch2 = next(it), next(it)
  assert not np.array_equal(epoch1["masked_lm_positions"], epoch2["masked_lm_positions"])
  for batch in (epoch1, epoch2):
    original = batch["input_ids"].copy()
    for r in range(25):
      w = batch["masked_lm_weights"][r] > 0
      original[r, batch["masked_lm_positions"][r][w]] = batch["masked_lm_ids"][r][w]
    np.testing.assert_array_equal(original[:, 1], np.arange(1000, 1025))  # same examples, same order
    n = batch["input_mask"].sum(1) - 2  # [CLS] and the final [SEP] are never masked
    k = batch["masked_lm_weights"].sum(1)
    np.testing.assert_array_equal(k, np.minimum(PRED, np.maximum(1, np.round(n * 0.15))))
    labels = batch["masked_lm_ids"][batch["masked_lm_weights"] > 0]
    assert not set(labels.tolist()) & {0, 2, 3}


def test_dynamic_masking_replacement_split():
  masking = _dynamic(30000, pred=20)
  import tempfile, os
  with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "big.tfrecord")
    write_google_style_records(path, 1000, 128, 20)
    cfg = pipeline.PipelineConfig(files=(path,), batch_size=1000, max_seq_length=128, max_predictions_per_seq=20,
                                  dynamic_masking=masking, shuffle=False)
    batch = next(pipeline.BatchIterator(cfg))
  w = batch["masked_lm_weights"] > 0
  at = np.take_along_axis(batch["input_ids"], batch["masked_lm_positions"], 1)[w]
  labels = batch["masked_lm_ids"][w]
  assert w.sum() > 8000
  assert abs(np.mean(at == 4) - 0.8) < 0.02 and abs(np.mean(at == labels) - 0.1) < 0.02


def test_manifest_mismatch_names_both_values(tmp_path, record_files):
  manifest = {"max_seq_length": 128, "max_predictions_per_seq": PRED, "vocab": {"size": 8000, "sha256": "abc"}}
  (tmp_path / "part-0.tfrecord").write_bytes(open(record_files[0], "rb").read())
  schema.write_manifest(str(tmp_path), manifest)
  with pytest.raises(ValueError, match=r"max_seq_length: config has 32, data manifest has 128"):
    pipeline.check_files_match([str(tmp_path / "part-0.tfrecord")], max_seq_length=SEQ, max_predictions_per_seq=PRED)
  with pytest.raises(ValueError, match=r"vocab size: config has 30522, data manifest has 8000"):
    pipeline.check_files_match([str(tmp_path / "part-0.tfrecord")], max_seq_length=128,
                               max_predictions_per_seq=PRED, vocab_size=30522)
  assert json.load(open(tmp_path / "manifest.json"))["schema_version"] == schema.SCHEMA_VERSION


def test_without_manifest_first_record_shapes_are_checked(record_files):
  assert pipeline.check_files_match(record_files, max_seq_length=SEQ, max_predictions_per_seq=PRED) is None
  with pytest.raises(ValueError, match=r"masked_lm_ids: config needs length 20, .*part-0.tfrecord has 5") as e:
    pipeline.check_files_match(record_files, max_seq_length=SEQ, max_predictions_per_seq=20)
  # the fix names the records' own lengths, both of them, as overrides the user can paste
  assert (f"Fix: --config.data.max_seq_length={SEQ} --config.data.max_predictions_per_seq={PRED} (the records' "
          f"lengths), or prepare the data again at the config's") in str(e.value)
  with pytest.raises(ValueError, match=r"mask_unit_start: config needs length 32, .* has no such feature\n"
                                       r"Fix: prepare the data with bert_jax.data.prepare"):
    pipeline.check_files_match(record_files, max_seq_length=SEQ, max_predictions_per_seq=PRED,
                               dynamic_masking=masking.MaskingOptions(segmenter="jieba"))


def test_corrupt_record_names_the_file(tmp_path, record_files):
  good = tmp_path / "good.tfrecord"
  bad = tmp_path / "bad.tfrecord"
  good.write_bytes(open(record_files[0], "rb").read())
  data = bytearray(open(record_files[1], "rb").read())
  data[200:260] = b"\x00" * 60
  bad.write_bytes(bytes(data))
  it = pipeline.BatchIterator(_cfg([str(good), str(bad)], shuffle=False, repeat=False))
  with pytest.raises(ValueError, match=r"corrupt TFRecord file\(s\): \[.*bad\.tfrecord'\]"):
    for _ in it:
      pass


def test_text_given_as_records_is_named_with_where_text_goes(tmp_path):
  text = tmp_path / "corpus.txt"
  text.write_text("Raw sentences. Not records.\n" * 20)
  # was "corrupt TFRecord file", which says nothing of data.corpus
  with pytest.raises(ValueError, match=rf"{text} is not a TFRecord file, or a corrupt one .* raw text goes in "
                                       r"data.corpus, which prepares it, not in data.train_files"):
    pipeline.check_files_match([str(text)], max_seq_length=SEQ, max_predictions_per_seq=PRED)


def test_glob_without_matches_fails():
  with pytest.raises(FileNotFoundError, match="matched no files"):
    pipeline.resolve_files("/nowhere/*.tfrecord")


@pytest.mark.parametrize("change", [dict(shuffle=False), dict(dynamic_masking=_dynamic(2000)), dict(batch_size=8)])
def test_resume_with_other_data_settings_keeps_the_checkpoints(record_files, tmp_path, change):
  """A resume whose tf.data pipeline differs from the saved position's (data.shuffle, dynamic masking, the batch
  size) restores the model and starts the input stream afresh with a warning. It used to count as damage: every
  checkpoint was moved to damaged/ and the run started from step 0 (or, for the batch size, failed at its first
  batch saying the records do not parse)."""
  import dataclasses
  cfg = _cfg(record_files)
  checkpoints = PositionCheckpoints(tmp_path / "ckpt")
  it = pipeline.BatchIterator(cfg)
  checkpoints.save(it, 4)
  # the same settings still resume exactly
  again = pipeline.BatchIterator(cfg)
  assert checkpoints.restore(again) == 4 and not checkpoints.warnings()
  np.testing.assert_array_equal(next(again)["input_ids"], next(it)["input_ids"])

  other = dataclasses.replace(cfg, **change)
  changed = pipeline.BatchIterator(other)
  assert checkpoints.restore(changed) == 4, checkpoints.logged
  assert not (tmp_path / "ckpt" / "damaged").exists(), checkpoints.logged
  warnings = checkpoints.warnings()
  assert len(warnings) == 1 and "input stream starts afresh" in warnings[0], warnings
  fresh = next(pipeline.BatchIterator(other))
  for k, v in next(changed).items():
    np.testing.assert_array_equal(v, fresh[k], err_msg=k)


def test_train_files_that_the_process_count_does_not_divide_give_even_shares(record_files):
  """8 files of 25 over 3 processes: whole files gave shares of 3, 3 and 2 files, and each process repeats its
  own share, so the 2-file share's examples were trained on 1.5x as often. Now the 2 files left over are split by
  example (the offsets rotate, so the 25th example of each goes to another process): shares of 66 or 67
  examples, which together hold each example once. Fewer files than processes: every file split by example."""
  epoch = dict(repeat=False, drop_remainder=False, shuffle=False, batch_size=1)
  everything = sorted(_example_ids(_cfg(record_files, **epoch), 0, 1))
  for count in (3, 2, 5, 16):
    shares = [_example_ids(_cfg(record_files, **epoch), i, count) for i in range(count)]
    sizes = [len(share) for share in shares]
    left_over = 8 % count if count <= 8 else 8
    assert max(sizes) - min(sizes) <= left_over, (count, sizes)  # at most one example per file left over
    assert sorted(sum(shares, [])) == everything, count
    if count == 3:
      assert sizes == [67, 66, 67]
