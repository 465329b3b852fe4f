"""Masking modes (bert_jax/data/masking.py): one statistical check, run on the numpy implementation (prepare, Grain)
and on the tf.data one (dynamic masking) over 10k instances per mode; units, Chinese whole-word masking with jieba,
knowledge units, the unit feature in records, and the errors for bad input."""

import collections
import json
import os
import sys

import numpy as np
import pytest
import tensorflow as tf

from bert_jax.data import (corpora, grain_pipeline, instances, knowledge, masking, pipeline, prepare, schema,
                           segmenters)
from bert_jax.data import tokenizer as tokenizer_lib
from bert_jax import inputs
from bert_jax.core import configlib
from cli_helpers import load_bench

SEQ, PRED, N, VOCAB = 128, 20, 10_000, 1000
CLS, SEP, MASK = 2, 3, 4
SPAN_LAW_MEAN = float(np.arange(1, 11) @ masking.geometric_span_probs(0.2, 10))  # 3.797 words


def _vocab(seed=0) -> masking.VocabIds:
  word_start = np.random.default_rng(seed).random(VOCAB) < 0.6  # ~1.7 tokens per word
  word_start[:5] = True
  return masking.VocabIds(CLS, SEP, MASK, np.arange(5, VOCAB), word_start)


@pytest.fixture(scope="module")
def rows():
  """N instances as records hold them (unmasked here): [CLS] A [SEP] (B [SEP]), with unit bits: words from the
  vocabulary, phrases and entities as random coarser partitions (a subset of the word starts)."""
  rng, vocab = np.random.default_rng(1), _vocab()
  lengths = rng.integers(24, SEQ + 1, N)
  ids = rng.integers(5, VOCAB, (N, SEQ))
  at = np.arange(SEQ)[None]
  ids[:, 0] = CLS
  ids[at == (lengths - 1)[:, None]] = SEP
  two = rng.random(N) < 0.5                      # half the rows have a second segment
  ids[(at == (lengths // 2)[:, None]) & two[:, None]] = SEP
  mask = at < lengths[:, None]
  ids[~mask] = 0
  word = vocab.word_start[ids]
  bits = (np.where(word, masking.WORD_BIT, 0) | np.where(word & (rng.random(ids.shape) < 0.4), masking.PHRASE_BIT, 0)
          | np.where(word & (rng.random(ids.shape) < 0.3), masking.ENTITY_BIT, 0))
  bits[:, 1] |= masking.PHRASE_BIT | masking.ENTITY_BIT   # a unit starts after [CLS] at every level
  bits[~mask] = 0
  return {"ids": ids, "mask": mask.astype(np.int64), "bits": bits, "vocab": vocab}


def _mask_with_numpy(rows, opts):
  ids, bits, vocab = rows["ids"], rows["bits"], rows["vocab"]
  out = {"input_ids": ids.copy(), "masked_lm_positions": np.zeros((N, PRED), np.int64),
         "masked_lm_ids": np.zeros((N, PRED), np.int64), "masked_lm_weights": np.zeros((N, PRED), np.float32)}
  rng = np.random.default_rng(2)
  for r, length in enumerate(rows["mask"].sum(1)):
    unit_bits = bits[r, :length] if opts.unit_feature else None
    masked, positions, labels = masking.mask_numpy(ids[r, :length], unit_bits, opts, vocab, rng)
    out["input_ids"][r, :length] = masked
    out["masked_lm_positions"][r, :len(positions)] = positions
    out["masked_lm_ids"][r, :len(positions)] = labels
    out["masked_lm_weights"][r, :len(positions)] = 1
  return out


def _mask_with_tf_data(rows, opts):
  """The tf.data path's re-masking (masking.tf_remask_fn, as pipeline.build_dataset maps it) over the rows."""
  features = {"input_ids": rows["ids"].astype(np.int32), "input_mask": rows["mask"].astype(np.int32),
              "masked_lm_positions": np.zeros((N, PRED), np.int32), "masked_lm_ids": np.zeros((N, PRED), np.int32),
              "masked_lm_weights": np.zeros((N, PRED), np.float32)}
  if opts.unit_feature:
    features[masking.UNIT_FEATURE] = rows["bits"].astype(np.int32)
  remask = masking.tf_remask_fn(masking.DynamicMasking(opts, rows["vocab"]), SEQ, PRED, seed=3)
  ds = tf.data.Dataset.from_tensor_slices(features).enumerate().map(remask, num_parallel_calls=2).batch(2500)
  batches = [{k: v.numpy() for k, v in b.items()} for b in ds]
  assert masking.UNIT_FEATURE not in batches[0], "the unit bits serve masking only"
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def _units(rows, level_bit):
  """Global unit id per position (row * SEQ + unit index) and the maskable positions, for a unit bit (None: tokens)."""
  ids = rows["ids"]
  maskable = (rows["mask"] > 0) & (ids != CLS) & (ids != SEP)
  bit = np.ones_like(maskable) if level_bit is None else (rows["bits"] & level_bit) > 0
  after_break = np.concatenate([np.ones((N, 1), bool), ~maskable[:, :-1]], 1)
  starts = maskable & (bit | after_break)
  return np.cumsum(starts, 1) - 1 + np.arange(N)[:, None] * SEQ, maskable


def _whole_units(rows, masked, level_bit) -> np.ndarray:
  """bool[N]: every unit of the level is masked whole or not at all."""
  unit, maskable = _units(rows, level_bit)
  size = np.bincount(unit[maskable], minlength=N * SEQ)
  count = np.bincount(unit[masked], minlength=N * SEQ)
  partial = (count > 0) & (count < size)
  return ~partial.reshape(N, SEQ).any(1)


def _runs(masked: np.ndarray, rows):
  """Maximal runs of masked positions: (row, start, end) arrays, and the words in each run."""
  padded = np.pad(masked, ((0, 0), (1, 1)))
  d = np.diff(padded.astype(np.int8), axis=1)
  r0, s = np.nonzero(d == 1)
  r1, e = np.nonzero(d == -1)
  assert np.array_equal(r0, r1)
  word_starts = np.cumsum((rows["bits"] & masking.WORD_BIT) > 0, 1)
  words = word_starts[r0, e - 1] - np.where(s > 0, word_starts[r0, s - 1], 0)
  return r0, s, e, words


def masking_statistics(rows, out, opts) -> dict:
  """The shared check: what must hold for any implementation of `opts` (asserted), and the statistics two
  implementations must agree on (returned)."""
  w = out["masked_lm_weights"] > 0
  k = w.sum(1)
  pos = out["masked_lm_positions"]
  masked = np.zeros((N, SEQ), bool)
  masked[np.nonzero(w)[0], pos[w]] = True
  maskable = (rows["mask"] > 0) & (rows["ids"] != CLS) & (rows["ids"] != SEP)
  assert not (masked & ~maskable).any(), "[CLS]/[SEP]/padding are never masked"
  n = maskable.sum(1)
  budget = np.minimum(PRED, np.maximum(1, np.round(n * 0.15)))
  assert (k <= budget).all()
  # A unit longer than a short row's budget leaves that row without predictions (rare; BERT's wwm does the same),
  # except in span mode, which then takes one whole word.
  always = opts.mode == "span" or (opts.mode in ("token", "ngram") and not opts.whole_word_masking)
  assert (k >= 1).all() if always else (k == 0).mean() < 0.01
  np.testing.assert_array_equal(out["masked_lm_ids"][w], rows["ids"][np.nonzero(w)[0], pos[w]])
  seen = np.take_along_axis(out["input_ids"], pos, 1)[w]
  stats = {"rate": k.sum() / n.sum(), "mask": np.mean(seen == MASK), "kept": np.mean(seen == out["masked_lm_ids"][w])}
  p_mask, p_random, p_keep = masking.parse_replacement(opts.replacement)
  # A random token equals the original 1 time in ~1,000 here, so it counts as kept that often.
  assert abs(stats["mask"] - p_mask) < 0.015 and abs(stats["kept"] - p_keep) < 0.015, stats
  if p_random == 0:
    assert np.all((seen == MASK) | (seen == out["masked_lm_ids"][w])), "no random tokens"
  unmasked = rows["ids"].copy()
  unmasked[np.nonzero(w)[0], pos[w]] = 0
  assert np.array_equal(np.where(masked, 0, out["input_ids"]), unmasked), "only the chosen positions change"
  if opts.mode in ("token", "ngram") and not opts.whole_word_masking:
    np.testing.assert_array_equal(k, budget)
  if opts.mode == "knowledge":
    whole = {level: _whole_units(rows, masked, bit) for level, bit in zip(masking.LEVELS[1:], masking.LEVEL_BITS[1:])}
    token_level = ~whole["phrase"] & ~whole["entity"]
    stats.update(phrase=whole["phrase"].mean(), entity=whole["entity"].mean(), token_level=token_level.mean())
    assert abs(stats["entity"] - 0.3) < 0.03 and abs(stats["phrase"] - 0.3) < 0.03, stats
  elif opts.word_units:
    assert _whole_units(rows, masked, masking.WORD_BIT).all(), "a word is masked whole or not at all"
  _, starts, ends, words = _runs(masked, rows)
  stats["run_tokens"] = np.bincount(np.minimum(ends - starts, 12), minlength=13) / len(starts)
  if opts.mode == "span":
    at_mask = np.zeros((N, SEQ), bool)
    at_mask[np.nonzero(w)[0], pos[w]] = np.take_along_axis(out["input_ids"], pos, 1)[w] == MASK
    run_of = np.cumsum(masked & ~np.pad(masked, ((0, 0), (1, 0)))[:, :-1]).reshape(N, SEQ) - 1  # flat run index
    masks_in_run = np.bincount(run_of[masked], weights=at_mask[masked], minlength=len(starts))
    assert np.all((masks_in_run == 0) | (masks_in_run == ends - starts)), "80/10/10 is decided per span"
    stats["span_words"] = words.mean()
    stats["span_word_law"] = np.bincount(np.minimum(words, 10), minlength=11)[1:] / len(words)
    assert stats["rate"] > 0.14, stats
  else:
    assert abs(stats["rate"] - 0.15) < 0.004, stats
  return stats


MODES = {
    "token": masking.MaskingOptions(max_predictions_per_seq=PRED),
    "token_wwm": masking.MaskingOptions(max_predictions_per_seq=PRED, whole_word_masking=True),
    "ngram": masking.MaskingOptions(mode="ngram", max_ngram=3, max_predictions_per_seq=PRED),
    "token_electra": masking.MaskingOptions(max_predictions_per_seq=PRED, replacement="mask:0.85,keep:0.15"),
    "span": masking.MaskingOptions(mode="span", max_predictions_per_seq=PRED),
    "knowledge": masking.MaskingOptions(mode="knowledge", max_predictions_per_seq=PRED, entity_file="entities.txt",
                                        knowledge_mix="token:0.4,phrase:0.3,entity:0.3"),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_static_and_dynamic_masking_agree_on_10k_instances(rows, mode):
  opts = MODES[mode]
  static, dynamic = (masking_statistics(rows, _mask_with_numpy(rows, opts), opts),
                     masking_statistics(rows, _mask_with_tf_data(rows, opts), opts))
  assert abs(static["rate"] - dynamic["rate"]) < 0.002, (static, dynamic)
  assert abs(static["mask"] - dynamic["mask"]) < 0.02 and abs(static["kept"] - dynamic["kept"]) < 0.02
  assert 0.5 * np.abs(static["run_tokens"] - dynamic["run_tokens"]).sum() < 0.03, (static, dynamic)
  if mode == "span":
    assert abs(static["span_words"] - dynamic["span_words"]) < 0.1, (static, dynamic)
    assert 0.5 * np.abs(static["span_word_law"] - dynamic["span_word_law"]).sum() < 0.03
  if mode == "knowledge":
    for level in ("phrase", "entity", "token_level"):
      assert abs(static[level] - dynamic[level]) < 0.03, (level, static, dynamic)
  if mode == "ngram":  # n-grams of tokens: runs longer than one token are common, unlike token masking
    assert static["run_tokens"][2:].sum() > 0.3


def test_span_lengths_follow_the_clipped_geometric_law():
  """On long single segments, where the 15% budget cuts few spans: words per span ~ Geometric(0.2) clipped at 10
  (mean 3.8), spans are whole words, never touch, and leave the budget at most one word short."""
  rng, vocab = np.random.default_rng(5), _vocab(1)
  opts = masking.MaskingOptions(mode="span", max_predictions_per_seq=80)
  words, short = [], []
  for _ in range(2000):
    tokens = np.concatenate([[CLS], rng.integers(5, VOCAB, 510), [SEP]])
    positions = masking.choose_numpy(tokens, None, opts, vocab, rng)
    runs = np.split(positions, np.flatnonzero(np.diff(positions) > 1) + 1)
    for run in runs:
      assert (run[0] == 1 or vocab.word_start[tokens[run[0]]]) and vocab.word_start[tokens[run[-1] + 1]], "whole words"
      words.append(int(vocab.word_start[tokens[run]].sum()))
    short.append(masking.num_to_predict(510, opts) - len(positions))
  law = np.bincount(words, minlength=11)[1:] / len(words)
  assert abs(np.mean(words) - SPAN_LAW_MEAN) < 0.25, np.mean(words)
  assert 0.5 * np.abs(law - masking.geometric_span_probs(0.2, 10)).sum() < 0.06, law
  assert max(short) < 10 and np.mean(short) < 1.0  # never more than a word short


def test_span_masking_gives_short_rows_a_prediction():
  """Rows of 1-12 maskable tokens (a count of 1-2) made of multi-token words: a first span whose first word
  passes the count moves on to a word that fits, and where none fits one whole word is taken, in both paths."""
  rng, vocab = np.random.default_rng(7), _vocab()
  opts = masking.MaskingOptions(mode="span", max_predictions_per_seq=PRED)
  starts, pieces = np.flatnonzero(vocab.word_start[5:]) + 5, np.flatnonzero(~vocab.word_start)
  rows = []
  for r in range(400):
    words = [[int(rng.choice(starts))] + list(rng.choice(pieces, int(rng.integers(0, 4)))) for _ in range(6)]
    tokens = [t for word in words for t in word][:int(rng.integers(1, 13))]
    rows.append(np.array([CLS] + tokens + [SEP]))
  ids = np.zeros((len(rows), SEQ), np.int32)
  for r, row in enumerate(rows):
    ids[r, :len(row)] = row
  lengths = np.array([len(row) for row in rows])
  remask = masking.tf_remask_fn(masking.DynamicMasking(opts, vocab), SEQ, PRED, seed=3)
  features = {"input_ids": ids, "input_mask": (np.arange(SEQ)[None] < lengths[:, None]).astype(np.int32),
              "masked_lm_positions": np.zeros((len(rows), PRED), np.int32),
              "masked_lm_ids": np.zeros((len(rows), PRED), np.int32),
              "masked_lm_weights": np.zeros((len(rows), PRED), np.float32)}
  dynamic = next(iter(tf.data.Dataset.from_tensor_slices(features).enumerate().map(remask).batch(len(rows))))
  over = 0
  for r, tokens in enumerate(rows):
    w = dynamic["masked_lm_weights"][r].numpy() > 0
    word_of = np.cumsum(vocab.word_start[tokens] | (np.arange(len(tokens)) == 1))
    inside = (np.arange(len(tokens)) > 0) & (np.arange(len(tokens)) < len(tokens) - 1)
    for positions in (masking.choose_numpy(tokens, None, opts, vocab, rng),
                      dynamic["masked_lm_positions"][r].numpy()[w]):
      assert len(positions) >= 1, tokens
      np.testing.assert_array_equal(np.flatnonzero(inside & np.isin(word_of, word_of[positions])), positions)
      if len(positions) > masking.num_to_predict(len(tokens) - 2, opts):  # past the count: one word only
        assert len(np.unique(word_of[positions])) == 1, (tokens, positions)
        over += 1
  assert 0 < over < 2 * len(rows)  # some rows have no word that fits the count, others do


def test_grain_dynamic_masking_is_the_numpy_code(rows):
  """The Grain path re-masks with masking.mask_numpy: the same generator state gives the same masks."""
  opts = MODES["knowledge"]
  dynamic = masking.DynamicMasking(opts, rows["vocab"])
  remask = grain_pipeline._DynamicMask(dynamic)
  for r in range(20):
    length = int(rows["mask"][r].sum())
    ex = {"input_ids": rows["ids"][r].astype(np.int32), "input_mask": rows["mask"][r].astype(np.int32),
          "masked_lm_positions": np.zeros(PRED, np.int32), "masked_lm_ids": np.zeros(PRED, np.int32),
          "masked_lm_weights": np.zeros(PRED, np.float32), masking.UNIT_FEATURE: rows["bits"][r].astype(np.int32)}
    got = remask.random_map(ex, np.random.default_rng(r))
    masked, positions, labels = masking.mask_numpy(rows["ids"][r, :length], rows["bits"][r, :length], opts,
                                                   rows["vocab"], np.random.default_rng(r))
    np.testing.assert_array_equal(got["input_ids"][:length], masked)
    np.testing.assert_array_equal(got["masked_lm_positions"][:len(positions)], positions)
    assert masking.UNIT_FEATURE not in got


# --- Chinese whole-word masking ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def chinese(tmp_path_factory):
  """A per-character WordPiece vocabulary trained on the shipped classical_zh corpus, and its documents."""
  directory = tmp_path_factory.mktemp("zh")
  corpus = corpora.from_spec(corpora.CLASSICAL_ZH_NAME)
  vocab_file = tokenizer_lib.train_vocab(corpus, "wordpiece", str(directory / "wp"), 1024)
  tok = tokenizer_lib.load(vocab_file, lower_case=True)
  documents = list(corpus.iter_documents(collections.Counter()))
  return {"dir": directory, "corpus": corpus, "vocab_file": vocab_file, "tok": tok, "documents": documents}


def test_chinese_is_one_token_per_character_and_jieba_marks_the_words(chinese):
  tok = chinese["tok"]
  text = "子曰：學而時習之，不亦說乎？"
  ids = tok.encode(text)
  assert [tok.pieces[i] for i in ids] == list(text), "BERT's Chinese tokenization: one token per character"
  assert tok.vocab_size == 1024 and tok.unk_id not in ids
  marker = segmenters.UnitMarker(tok, masking.MaskingOptions(segmenter="jieba", whole_word_masking=True))
  keys = marker.encode(text)
  unpacked, bits = masking.unpack_units(keys)
  assert unpacked.tolist() == ids, "the ids stay the per-character ones"
  words = segmenters.load_segmenter("jieba")(text)
  expected = [int(any(s == i for s, _ in words)) for i in range(len(text))]
  assert bits.tolist() == expected
  assert 0 < sum(expected) < len(text), "some words span several characters"


def test_chinese_whole_word_masking_keeps_words_whole_on_10k_instances(chinese):
  tok = chinese["tok"]
  opts = instances.InstanceOptions(max_seq_length=64, max_predictions_per_seq=10, dupe_factor=180, mode="nsp",
                                   whole_word_masking=True, segmenter="jieba")
  marker = segmenters.UnitMarker(tok, opts.masking_options)
  docs = [[marker.encode(s) for s in doc] for doc in chinese["documents"]]
  f = instances.create_instances(docs, opts, masking.VocabIds.from_tokenizer(tok), np.random.default_rng(0))
  n = len(f["input_ids"])
  assert n >= 10_000
  w = f["masked_lm_weights"] > 0
  masked = np.zeros(f["input_ids"].shape, bool)
  masked[np.nonzero(w)[0], f["masked_lm_positions"][w]] = True
  ids = f["input_ids"].copy()
  ids[np.nonzero(w)[0], f["masked_lm_positions"][w]] = f["masked_lm_ids"][w]
  maskable = (f["input_mask"] > 0) & (ids != tok.cls_id) & (ids != tok.sep_id)
  after_break = np.concatenate([np.ones((n, 1), bool), ~maskable[:, :-1]], 1)
  starts = maskable & (((f[masking.UNIT_FEATURE] & masking.WORD_BIT) > 0) | after_break)
  unit = np.cumsum(starts, 1) - 1 + np.arange(n)[:, None] * 64
  size, count = np.bincount(unit[maskable], minlength=n * 64), np.bincount(unit[masked], minlength=n * 64)
  assert not ((count > 0) & (count < size)).any(), "a word's characters are masked together"
  multi = size[np.unique(unit[masked])] > 1
  assert multi.mean() > 0.2, "multi-character words are masked as units"
  rate = w.sum() / maskable.sum()
  assert 0.14 < rate < 0.152, rate


def test_prepare_writes_the_unit_feature_and_both_paths_read_it(chinese, tmp_path):
  """prepare with a segmenter writes mask_unit_start beside the google schema and records the masking in the
  manifest; a google-schema reader ignores it; dynamic masking (tf.data and Grain) uses it and drops it; a
  dynamic-masking config that differs from the manifest's masking fails naming both."""
  opts = instances.InstanceOptions(max_seq_length=64, max_predictions_per_seq=10, dupe_factor=4,
                                   mode="full_sentences", whole_word_masking=True, segmenter="jieba")
  out = str(tmp_path / "zh")
  manifest = prepare.prepare(chinese["corpus"], out, opts, vocab_file=chinese["vocab_file"], lower_case=True,
                             workers=1, num_train_shards=1, eval_fraction=0.0, progress=False,
                             formats=("tfrecord", "array_record"))
  assert manifest["masking"]["segmenter"] == "jieba" and manifest["masking"]["unit_feature"] is True
  on_disk = json.load(open(os.path.join(out, "manifest.json")))
  assert on_disk["masking"]["mode"] == "token" and on_disk["masking"]["whole_word_masking"] is True
  files = pipeline.resolve_files(os.path.join(out, "train", "*.tfrecord"))
  record = next(iter(tf.data.TFRecordDataset(files)))
  assert schema.record_lengths(record.numpy())[masking.UNIT_FEATURE] == 64
  google = tf.io.parse_single_example(record, schema.feature_spec(64, 10))  # the google-research/bert reader
  assert masking.UNIT_FEATURE not in google and google["input_ids"].shape == (64,)

  tok = chinese["tok"]
  dynamic = masking.DynamicMasking(opts.masking_options, masking.VocabIds.from_tokenizer(tok))
  cfg = pipeline.PipelineConfig(files=files, batch_size=16, max_seq_length=64, max_predictions_per_seq=10,
                                dynamic_masking=dynamic)
  batch = next(pipeline.BatchIterator(cfg))
  assert masking.UNIT_FEATURE not in batch and batch["masked_lm_weights"].sum() > 0
  grain_cfg = pipeline.PipelineConfig(files=tuple(f.replace(".tfrecord", ".array_record") for f in files),
                                      batch_size=16, max_seq_length=64, max_predictions_per_seq=10,
                                      dynamic_masking=dynamic)
  grain_batch = next(grain_pipeline.GrainBatchIterator(grain_cfg))
  assert masking.UNIT_FEATURE not in grain_batch and grain_batch["masked_lm_weights"].sum() > 0
  static = next(grain_pipeline.GrainBatchIterator(pipeline.PipelineConfig(
      files=grain_cfg.files, batch_size=4, max_seq_length=64, max_predictions_per_seq=10)))
  assert masking.UNIT_FEATURE not in static, "readers that do not ask for the unit bits never see them"

  pipeline.check_files_match(files, max_seq_length=64, max_predictions_per_seq=10,
                             dynamic_masking=opts.masking_options)
  other = masking.MaskingOptions(mode="span", max_predictions_per_seq=10, segmenter="jieba")
  with pytest.raises(ValueError, match=r"masking mode: config has 'span', data manifest has 'token'"):
    pipeline.check_files_match(files, max_seq_length=64, max_predictions_per_seq=10, dynamic_masking=other)
  no_segmenter = masking.MaskingOptions(max_predictions_per_seq=10, whole_word_masking=True)
  with pytest.raises(ValueError, match=r"masking segmenter: config has '', data manifest has 'jieba'"):
    grain_pipeline.check_files_match(grain_cfg.files, max_seq_length=64, max_predictions_per_seq=10,
                                     dynamic_masking=no_segmenter)
  # static masks: the records carry the data's masks, so a config asking for others is refused too
  pipeline.check_files_match(files, max_seq_length=64, max_predictions_per_seq=10,
                             static_masking=opts.masking_options)
  for check, shards in ((pipeline.check_files_match, files), (grain_pipeline.check_files_match, grain_cfg.files)):
    with pytest.raises(ValueError, match=r"masking mode: config has 'span', data manifest has 'token' \(static "
                                         r"masks: the records hold the data's; set the config's data.masking"):
      check(shards, max_seq_length=64, max_predictions_per_seq=10, static_masking=other)
  # and a run's start-up passes its config's masking for static data
  run = {"data.train_files": os.path.join(out, "train", "*.tfrecord"), "data.max_seq_length": 64,
         "data.max_predictions_per_seq": 10, "data.vocab_file": chinese["vocab_file"], "data.lower_case": True,
         "model.vocab_size": 1024, "data.whole_word_masking": True, "data.segmenter": "jieba"}
  inputs.resolve(configlib.load("tiny", run), str(tmp_path))
  with pytest.raises(ValueError, match=r"masking mode: config has 'span', data manifest has 'token' \(static"):
    inputs.resolve(configlib.load("tiny", {**run, "data.masking": "span", "data.mode": "full_sentences"}),
                   str(tmp_path))


def test_offsets_give_the_ids_of_encode_for_every_vocabulary_kind(chinese, tmp_path):
  english = tmp_path / "en.txt"
  english.write_text("The quick brown fox jumps over the lazy dog.\nPython's standard library is large.\n\n"
                     "Whole-word masking needs word boundaries.\n" * 20, encoding="utf-8")
  corpus = corpora.TextFiles(str(english))
  text = "The lazy dog's library: 北京 boundaries!"
  for kind, size in (("sentencepiece", 60), ("bpe", 300), ("wordpiece", 200)):
    tok = tokenizer_lib.load(tokenizer_lib.train_vocab(corpus, kind, str(tmp_path / kind), size))
    ids, offsets = tok.encode_with_offsets(text)
    assert ids == tok.encode(text), kind
    assert all(0 <= s <= e <= len(text) for s, e in offsets) and offsets == sorted(offsets), kind


# --- knowledge units -------------------------------------------------------------------------------------------

def test_rake_phrases_and_entities_become_units(tmp_path):
  text = "The standard library of Python has the JSON module and a fast HTTP server."
  spans = knowledge.rake_phrases(text)
  assert [text[s:e] for s, e in spans] == ["standard library", "JSON module", "fast HTTP server"]
  entity_file = tmp_path / "entities.txt"
  entity_file.write_text("# named things\nPython\tLANGUAGE\nHTTP server\nJSON\nPy\n", encoding="utf-8")
  entities = knowledge.EntityList(str(entity_file))
  assert [text[s:e] for s, e in entities.find(text)] == ["Python", "JSON", "HTTP server"], "whole words, longest first"

  vocab_file = tmp_path / "vocab.txt"
  pieces = list(tokenizer_lib.SPECIAL_TOKENS) + sorted(set(text.lower().replace(".", " . ").split())) + ["."]
  vocab_file.write_text("\n".join(pieces) + "\n", encoding="utf-8")
  tok = tokenizer_lib.load(str(vocab_file), lower_case=True)
  opts = masking.MaskingOptions(mode="knowledge", entity_file=str(entity_file))
  ids, bits = segmenters.UnitMarker(tok, opts).bits(text)
  words = [tok.pieces[i] for i in ids]
  units = {}
  for level, bit in zip(masking.LEVELS, masking.LEVEL_BITS):
    cuts = [i for i in range(len(ids)) if bits[i] & bit] + [len(ids)]
    units[level] = [" ".join(words[a:b]) for a, b in zip(cuts, cuts[1:])]
  assert units["token"] == words
  assert "standard library" in units["phrase"] and "fast http server" in units["phrase"]
  assert "http server" in units["entity"] and "python" in units["entity"] and "fast" in units["entity"]


def _entity_regex(entities, lower_case):
  """The plain statement of the matching rule: bench/data_bench.py's peer, one regex alternation."""
  return load_bench("data_bench").entity_regex(entities, lower_case)


def test_entity_spans_are_what_one_regex_alternation_finds(tmp_path):
  """EntityList walks a trie; on pydocs with ernie_tiny's entity list, and on random text and entities over an
  alphabet of word and non-word characters, case pairs and characters whose case rules are special (σ/ς/Σ, the
  Kelvin sign, dotted İ, CJK), it finds exactly the regex's spans, case-sensitive and not."""
  entity_file = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "ernie_pydocs_entities.txt")
  docs = corpora.from_spec("pydocs", cache_dir=corpora.run_cache_dir(str(tmp_path)))
  sentences = [s for doc in docs.iter_documents(collections.Counter()) for s in doc][:1000]
  for lower_case in (False, True):
    entities = knowledge.EntityList(entity_file, lower_case)
    regex = _entity_regex(entities.entities, lower_case)
    found = [entities.find(s) for s in sentences]
    assert found == [[m.span() for m in regex.finditer(s)] for s in sentences]
    assert sum(map(len, found)) > 30, "the check must see mentions"
  rng = np.random.default_rng(0)
  alphabet = list("aAbB_1 .-+é漢字İKΣσς")
  random_text = lambda low, high: "".join(rng.choice(alphabet, rng.integers(low, high + 1)))
  for trial in range(200):
    path = tmp_path / f"entities{trial}.txt"
    path.write_text("\n".join(random_text(1, 4) for _ in range(rng.integers(1, 9))) + "\nab\n", encoding="utf-8")
    for lower_case in (False, True):
      entities = knowledge.EntityList(str(path), lower_case)
      text = random_text(0, 40)
      assert entities.find(text) == [m.span() for m in _entity_regex(entities.entities, lower_case).finditer(text)], (
          text, entities.entities, lower_case)


# --- bad input ---------------------------------------------------------------------------------------------------

def test_missing_segmenter_names_the_extra(monkeypatch):
  monkeypatch.setitem(sys.modules, "jieba", None)  # what an environment without jieba gives `import jieba`
  with pytest.raises(ValueError, match=r"pip install 'bert-jax\[chinese\]'"):
    segmenters.load_segmenter("jieba")
  with pytest.raises(ValueError, match=r"'no_such_segmenter_pkg'.*install the package"):
    segmenters.load_segmenter("no_such_segmenter_pkg.cut:segment")
  opts = instances.InstanceOptions(whole_word_masking=True, segmenter="jieba")
  with pytest.raises(ValueError, match=r"bert-jax\[chinese\]"):  # prepare fails before any work
    prepare.prepare(corpora.from_spec(corpora.CLASSICAL_ZH_NAME), "/nonexistent/never-written", opts,
                    vocab_file="unused", progress=False)


def test_entity_list_errors_name_the_line(tmp_path):
  bad = tmp_path / "entities.txt"
  bad.write_text("# people\nConfucius\nLaozi\tPERSON\tEXTRA\n", encoding="utf-8")
  with pytest.raises(ValueError, match=rf"{bad}, line 3: .*ENTITY<TAB>TYPE"):
    knowledge.EntityList(str(bad))
  bad.write_bytes("Confucius\n".encode() + b"Lao\xffzi\n")
  with pytest.raises(ValueError, match=r"line 2: not UTF-8"):
    knowledge.EntityList(str(bad))


@pytest.mark.parametrize("kwargs, message", [
    (dict(masking="span", mode="nsp"), r"span masking .* set mode full_sentences"),
    (dict(masking="ngram"), r"masking 'ngram' needs max_ngram > 1"),
    (dict(masking="span", mode="full_sentences", max_ngram=3), r"contradict"),
    (dict(masking="knowledge", knowledge_mix="token:0.5,entity:0.5"), r"data.entity_file"),
    (dict(masking="knowledge", knowledge_mix="token:0.5,words:0.5"), r"'words:0.5' is not LEVEL:WEIGHT"),
    (dict(masking="knowledge", knowledge_mix="token:0.5,phrase:0.3"), r"sum to 0.8"),
    (dict(masking="whole"), r"masking 'whole' is not one of"),
    (dict(replacement="mask:0.8,random:0.1"), r"replacement 'mask:0.8,random:0.1': the weights sum to 0.9"),
    (dict(replacement="mask:0.9,swap:0.1"), r"'swap:0.1' is not KIND:WEIGHT with KIND one of \('mask', 'random'"),
])
def test_bad_masking_options_say_what_to_fix(kwargs, message):
  with pytest.raises(ValueError, match=message):
    instances.InstanceOptions(**kwargs)


def test_old_configs_keep_their_meaning():
  """data.max_ngram > 1 with the default data.masking is ALBERT's n-gram masking, as before data.masking existed;
  a manifest from before it (no 'mode') reads the same way."""
  assert instances.InstanceOptions(max_ngram=3).masking_options.mode == "ngram"
  old_albert = {"masked_lm_prob": 0.15, "whole_word_masking": False, "max_ngram": 3}
  assert masking.check_settings(masking.MaskingOptions(max_ngram=3).settings(), old_albert) == []
  assert masking.check_settings(masking.MaskingOptions().settings(), old_albert) == [
      "masking mode: config has 'token', data manifest has 'ngram'",
      "masking max_ngram: config has 1, data manifest has 3"]


def test_tf_path_masks_num_to_predict_at_every_length():
  """The tf.data path masks num_to_predict(maskable) tokens, as the numpy path, at every length: its budget was
  computed in float32, where e.g. 190 * 0.15 is 28.500002 (29 masked) while numpy's 28.5 rounds to 28."""
  seq, pred = 512, 80
  vocab = _vocab()
  opts = masking.MaskingOptions(max_predictions_per_seq=pred)
  remask = tf.function(masking.tf_remask_fn(masking.DynamicMasking(opts, vocab), seq, pred, 0))
  for n in (30, 190, 350, 390, 500):  # maskable tokens; 190, 350 and 390 differed
    ids = np.zeros(seq, np.int32)
    ids[0], ids[1:n + 1], ids[n + 1] = CLS, np.arange(n) % (VOCAB - 5) + 5, SEP
    example = {"input_ids": ids, "input_mask": (np.arange(seq) < n + 2).astype(np.int32),
               "segment_ids": np.zeros(seq, np.int32), "masked_lm_positions": np.zeros(pred, np.int32),
               "masked_lm_ids": np.zeros(pred, np.int32), "masked_lm_weights": np.zeros(pred, np.float32),
               "next_sentence_labels": np.int32(0)}
    out = remask(tf.constant(n, tf.int64), {k: tf.constant(v) for k, v in example.items()})
    _, positions, _ = masking.mask_numpy(ids[:n + 2], None, opts, vocab, np.random.default_rng(n))
    assert int(out["masked_lm_weights"].numpy().sum()) == len(positions) == masking.num_to_predict(n, opts), n
