"""ALBERT's sentence-order prediction and n-gram masking (static and tf.data), over real pydocs text."""
import collections
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from bert_jax.data import instances, masking, pipeline, prepare, schema
from bert_jax.data import manifest as manifest_lib
from bert_jax.data import tokenizer as tokenizer_lib
from data_helpers import ListCorpus, masked_run_lengths, pydocs_docs, restore_originals
from cli_helpers import cli_env

LAW3 = np.array([6, 3, 2]) / 11  # p(k) ~ 1/k for k = 1, 2, 3


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
  """A small byte-level BPE trained on pydocs, and 300 other pydocs documents tokenized with it."""
  docs = pydocs_docs()
  path = tokenizer_lib.train_bpe(ListCorpus(docs[:150]), str(tmp_path_factory.mktemp("bpe") / "bpe.tokenizer.json"),
                                 vocab_size=2000)
  tok = tokenizer_lib.load(path)
  token_docs = []
  for doc in docs[150:450]:
    segments = [tok.encode(s) for s in doc]
    # Literal "<s>" or "</s>" in the text would look like our separators; the test needs them unambiguous.
    token_docs.append([s for s in segments if not set(s) & set(tok.special_ids.tolist())])
  return tok, instances.VocabIds.from_tokenizer(tok), token_docs


def _contiguous_index(token_docs):
  """A finder for token runs that occur contiguously inside one document."""
  arrays = [np.array([t for seg in doc for t in seg], np.int64) for doc in token_docs]
  index = {2: collections.defaultdict(list), 8: collections.defaultdict(list)}
  for d, arr in enumerate(arrays):
    for key_len, table in index.items():
      for p in range(len(arr) - key_len + 1):
        table[tuple(arr[p:p + key_len])].append((d, p))

  def occurs(run: np.ndarray) -> bool:
    table = index[8 if len(run) >= 8 else 2]
    key = tuple(run[:8 if len(run) >= 8 else 2])
    return any(np.array_equal(arrays[d][p:p + len(run)], run) for d, p in table.get(key, ()))
  return occurs


def test_sop_pairs_are_two_contiguous_segments_in_either_order(bpe):
  tok, vocab, docs = bpe
  opts = instances.InstanceOptions(max_seq_length=128, max_predictions_per_seq=20, dupe_factor=2, mode="sop")
  f = instances.create_instances(docs, opts, vocab, np.random.default_rng(0))
  labels = f["next_sentence_labels"][:, 0]
  assert len(labels) > 2000
  assert abs(labels.mean() - 0.5) < 0.03, "A and B are swapped half of the time"
  occurs = _contiguous_index(docs)
  for row in range(len(labels)):
    ids = restore_originals(f, row)
    seps = np.flatnonzero(ids == tok.sep_id)
    assert ids[0] == tok.cls_id and len(seps) == 2 and seps[1] == len(ids) - 1
    seg = f["segment_ids"][row]
    assert np.all(seg[:seps[0] + 1] == 0) and np.all(seg[seps[0] + 1:len(ids)] == 1) and np.all(seg[len(ids):] == 0)
    a, b = ids[1:seps[0]], ids[seps[0] + 1:-1]
    assert len(a) and len(b)
    in_document_order = np.concatenate([a, b] if labels[row] == 0 else [b, a])
    assert occurs(in_document_order), f"row {row} (label {labels[row]}): the pair is not one run of a document"


def test_sop_single_segments_split_inside_and_truncation_keeps_contiguity():
  vocab = instances.VocabIds(2, 3, 4, np.arange(5, 500), np.ones(500, bool))
  long_doc = [list(range(100, 160))]                        # one segment, longer than the sequence
  two = [list(range(200, 230)), list(range(230, 260))]      # two segments, longer together
  tiny = [[7]]                                              # one token: cannot be split, no instance
  opts = instances.InstanceOptions(max_seq_length=24, max_predictions_per_seq=3, dupe_factor=20, mode="sop",
                                   short_seq_prob=0)
  f = instances.create_instances([long_doc, two, tiny], opts, vocab, np.random.default_rng(0))
  assert len(f["input_ids"]) == 40, "one instance per dupe from each of the first two documents, none from tiny"
  for row in range(40):
    ids = restore_originals(f, row)
    sep = int(np.flatnonzero(ids == 3)[0])
    a, b = ids[1:sep], ids[sep + 1:-1]
    run = np.concatenate([a, b] if f["next_sentence_labels"][row, 0] == 0 else [b, a])
    assert len(ids) == 24 and np.all(np.diff(run) == 1), "A+B is one contiguous run, cut at its outer ends"
    assert 7 not in run


def test_ngram_probabilities_follow_one_over_k():
  np.testing.assert_allclose(masking.ngram_probs(3), LAW3)
  np.testing.assert_allclose(masking.ngram_probs(1), [1.0])
  for n in (2, 3, 4):
    np.testing.assert_allclose(masking.ngram_probs(n), (1 / np.arange(1, n + 1)) / (1 / np.arange(1, n + 1)).sum())


def test_ngram_spans_follow_the_law_on_real_text(bpe):
  """Masked spans that touch merge in the records, so the law is measured on the n-grams masking.chosen_tiles took.

  Rows are 510 real tokens between [CLS] and [SEP] (one run, so run ends barely matter), and each row's
  last span is left out: it is the one cut to fit num_to_predict, the only length not drawn from the law.
  """
  tok, vocab, docs = bpe
  flat = np.array([t for d in docs for s in d for t in s])
  rows = [np.concatenate([[tok.cls_id], flat[i:i + 510], [tok.sep_id]]) for i in range(0, len(flat) - 510, 300)]
  opts = instances.InstanceOptions(max_seq_length=512, max_predictions_per_seq=80, max_ngram=3)
  rng = np.random.default_rng(0)
  lengths = []
  for tokens in rows:
    spans = masking.chosen_tiles(tokens, None, opts.masking_options, vocab, rng)
    positions = np.concatenate(spans)
    assert len(positions) == len(set(positions.tolist())) == masking.num_to_predict(510, opts)
    assert all(np.all(np.diff(s) == 1) for s in spans), "a span is consecutive tokens"
    assert not set(tokens[positions].tolist()) & {tok.cls_id, tok.sep_id}
    lengths += [len(s) for s in spans[:-1]]
  freq = np.bincount(lengths, minlength=4)[1:] / len(lengths)
  assert len(lengths) > 10_000 and set(lengths) <= {1, 2, 3}
  np.testing.assert_allclose(freq, LAW3, atol=0.015)

  # Whole words: spans are whole words, and the n-grams they are taken from count k words with p(k) ~ 1/k.
  # (The spans taken in words lean short: a 3-word n-gram of many tokens is the one most often cut to fit.)
  wwm = instances.InstanceOptions(max_seq_length=512, max_predictions_per_seq=80, max_ngram=3,
                                  whole_word_masking=True)
  word_start = vocab.word_start
  gram_words = []
  for tokens in rows:
    chosen = set(np.concatenate(masking.chosen_tiles(tokens, None, wwm.masking_options, vocab, rng)).tolist())
    for p in chosen:
      if not word_start[tokens[p]] and p - 1 > 0:  # (after [CLS] a piece without 'Ġ' still starts a word)
        assert p - 1 in chosen, "a word's continuation is masked only with the piece before it"
      if p + 1 < len(tokens) - 1 and not word_start[tokens[p + 1]]:
        assert p + 1 in chosen, "a masked piece takes the rest of its word"
    maskable, starts = masking.unit_starts(tokens, None, wwm.masking_options, vocab)
    first = np.flatnonzero(starts)
    lengths = rng.choice(np.arange(1, 4), size=len(first), p=LAW3)
    tile_of, _ = masking._tiles(np.concatenate([[False], maskable[first[1:] - 1]]), lengths, 0)
    gram_words += np.bincount(tile_of)[:-1].tolist()
  freq = np.bincount(gram_words, minlength=4)[1:] / len(gram_words)
  np.testing.assert_allclose(freq, LAW3, atol=0.015)


def _static(docs, vocab, max_ngram, mode="nsp", seed=0):
  opts = instances.InstanceOptions(max_seq_length=128, max_predictions_per_seq=20, dupe_factor=1, mode=mode,
                                   max_ngram=max_ngram)
  return instances.create_instances(docs, opts, vocab, np.random.default_rng(seed))


def _check_masking(f, tok, pred=20, rule_exact=True):
  lengths = f["input_mask"].sum(1)
  maskable = lengths - 3
  k = f["masked_lm_weights"].sum(1).astype(int)
  expected = np.minimum(pred, np.maximum(1, np.round(maskable * 0.15).astype(int)))
  if rule_exact:
    np.testing.assert_array_equal(k, expected)
  assert abs(k.sum() / maskable.sum() - 0.15) < 0.005
  real = f["masked_lm_weights"] > 0
  at = np.take_along_axis(f["input_ids"], f["masked_lm_positions"], 1)[real]
  labels = f["masked_lm_ids"][real]
  assert not set(labels.tolist()) & {tok.cls_id, tok.sep_id, tok.pad_id}
  assert abs(np.mean(at == tok.mask_id) - 0.8) < 0.02 and abs(np.mean(at == labels) - 0.1) < 0.02


def test_static_ngram_masking_rate_and_spans_on_pydocs_instances(bpe):
  tok, vocab, docs = bpe
  single, ngram = _static(docs, vocab, 1), _static(docs, vocab, 3)
  assert len(ngram["input_ids"]) > 1000
  _check_masking(ngram, tok)
  runs1, runs3 = masked_run_lengths(single), masked_run_lengths(ngram)
  # Touching spans merge, so observed runs are at least as long as the drawn n-grams (mean 18/11).
  assert runs1.mean() < 1.25 and runs3.mean() > 1.6 and runs3.max() > 3
  wwm = instances.create_instances(docs, instances.InstanceOptions(
      max_seq_length=128, max_predictions_per_seq=20, dupe_factor=1, max_ngram=3, whole_word_masking=True),
      vocab, np.random.default_rng(1))
  _check_masking(wwm, tok, rule_exact=False)  # a word that does not fit is left out: at most the rule's count
  assert np.all(wwm["masked_lm_weights"].sum(1) <= np.minimum(20, np.maximum(1, np.round(
      (wwm["input_mask"].sum(1) - 3) * 0.15))))


def test_dynamic_ngram_masking_in_tf_data_matches_static(bpe, tmp_path):
  tok, vocab, docs = bpe
  f = _static(docs, vocab, 3, mode="sop")
  path = str(tmp_path / "sop.tfrecord")
  with tf.io.TFRecordWriter(path) as w:
    for row in range(len(f["input_ids"])):
      w.write(schema.serialize(f, row))
  spec = masking.DynamicMasking(masking.MaskingOptions(max_ngram=3, max_predictions_per_seq=20), vocab)
  cfg = pipeline.PipelineConfig(files=(path,), batch_size=len(f["input_ids"]), max_seq_length=128,
                                max_predictions_per_seq=20, shuffle=False, dynamic_masking=spec)
  batch = next(pipeline.BatchIterator(cfg))
  _check_masking(batch, tok)
  for row in range(0, len(f["input_ids"]), 7):  # the same examples, re-masked
    np.testing.assert_array_equal(restore_originals(batch, row), restore_originals(f, row))
  assert not np.array_equal(batch["masked_lm_positions"], f["masked_lm_positions"])
  # Same n-gram rule as the numpy path (masking.py): the merged masked runs have the same length distribution.
  dyn, static = masked_run_lengths(batch), masked_run_lengths(f)
  for k in (1, 2, 3, 4):
    assert abs(np.mean(dyn == k) - np.mean(static == k)) < 0.02, k
  assert abs(dyn.mean() - static.mean()) < 0.05
  with pytest.raises(ValueError, match="max_ngram must be >= 1"):
    masking.MaskingOptions(max_ngram=0)


def test_prepare_records_sop_ngram_and_bpe_in_the_manifest(tmp_path):
  docs = pydocs_docs()[:60]
  opts = instances.InstanceOptions(max_seq_length=64, max_predictions_per_seq=10, dupe_factor=1, mode="sop",
                                   max_ngram=3)
  manifest = prepare.prepare(ListCorpus(docs), str(tmp_path / "out"), opts, vocab_type="bpe", vocab_size=1000,
                             lower_case=True, workers=1, num_train_shards=2, progress=False)
  on_disk = json.load(open(tmp_path / "out" / schema.MANIFEST_NAME))
  assert on_disk["masking"]["max_ngram"] == 3 and on_disk["instances"]["max_ngram"] == 3
  np.testing.assert_allclose(on_disk["masking"]["ngram_probs"], LAW3, atol=1e-6)
  assert on_disk["mode"] == "sop" and "swapped" in on_disk["next_sentence_labels"]
  assert on_disk["vocab_type"] == "bpe" and on_disk["vocab"]["kind"] == "bpe" and on_disk["lower_case"]
  assert on_disk["vocab"]["special_ids"] == {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4}
  assert on_disk["vocab"]["special_tokens"]["cls"] == "<s>" and on_disk["vocab"]["file"].endswith(".tokenizer.json")
  assert 0.4 < manifest["stats"]["random_next_fraction"] < 0.6
  assert "swapped" in manifest_lib.format_stats(manifest)


def test_config_fields_reach_the_prepare_cache_and_the_manifest(tmp_path):
  from bert_jax import inputs
  from configs import common
  d = common.get_config().data
  assert (d.vocab_type, d.max_ngram) == ("sentencepiece", 1)
  base = inputs._prepare_settings(d)
  assert "vocab_type" not in base and "max_ngram" not in base, "defaults keep the keys of data prepared before"
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("\n\n".join("\n".join(doc) for doc in pydocs_docs()[:40]) + "\n")
  d.corpus, d.vocab_type, d.max_ngram, d.mode, d.vocab_size = str(corpus), "bpe", 3, "sop", 600
  d.max_seq_length, d.max_predictions_per_seq, d.dupe_factor, d.prepare_workers = 64, 10, 1, 1
  changed = inputs._prepare_settings(d)
  assert changed["vocab_type"] == "bpe" and changed["max_ngram"] == 3 and changed["mode"] == "sop"
  out = inputs.prepare_cached(d, str(tmp_path / "work"), log=lambda *_: None)
  manifest = json.load(open(os.path.join(out, schema.MANIFEST_NAME)))
  assert manifest["masking"]["max_ngram"] == 3 and manifest["mode"] == "sop" and manifest["vocab"]["kind"] == "bpe"


def test_cli_flags_reach_the_vocabulary_and_the_records(tmp_path):
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("\n\n".join("\n".join(d) for d in pydocs_docs()[:30]) + "\n")
  env = cli_env()
  vocab = subprocess.run([sys.executable, "-m", "bert_jax.data.tokenizer", f"--corpus={corpus}", "--vocab_type=bpe",
                          "--vocab_size=800", f"--output={tmp_path / 'v' / 'bpe'}"],
                         capture_output=True, text=True, env=env, timeout=120)
  assert vocab.returncode == 0, vocab.stderr[-2000:]
  vocab_file = tmp_path / "v" / "bpe.tokenizer.json"
  assert tokenizer_lib.load(str(vocab_file)).kind == "bpe"
  result = subprocess.run(
      [sys.executable, "-m", "bert_jax.data.prepare", f"--corpus={corpus}", f"--output_dir={tmp_path / 'out'}",
       f"--vocab_file={vocab_file}", "--max_seq_length=64", "--max_predictions_per_seq=10", "--dupe_factor=1",
       "--workers=1", "--mode=sop", "--max_ngram=3"], capture_output=True, text=True, env=env, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  manifest = json.load(open(tmp_path / "out" / schema.MANIFEST_NAME))
  assert manifest["mode"] == "sop" and manifest["masking"]["max_ngram"] == 3 and manifest["vocab"]["kind"] == "bpe"
  assert "swapped" in result.stdout
