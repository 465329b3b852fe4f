"""Corpus sources, vocabularies, instance statistics and the prepare CLI's output."""
import collections
import glob
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from bert_jax.data import array_record_io, corpora, instances, masking, prepare, schema
from bert_jax.data import manifest as manifest_lib
from bert_jax.data import tokenizer as tokenizer_lib
from cli_helpers import cli_env

SEQ, PRED = 128, 20


@pytest.fixture(scope="module")
def pydocs_data(tmp_path_factory):
  """The offline default corpus prepared once: SentencePiece vocab + shards (>10k instances)."""
  root = tmp_path_factory.mktemp("pydocs")
  os.environ["BERT_JAX_CACHE"] = str(root / "cache")
  corpus = corpora.from_spec("pydocs")
  opts = instances.InstanceOptions(max_seq_length=SEQ, max_predictions_per_seq=PRED, dupe_factor=3)
  manifest = prepare.prepare(corpus, str(root / "out"), opts, vocab_size=4000, workers=2, eval_fraction=0.05,
                             num_train_shards=4, progress=False)
  return root / "out", manifest


def _read_all(files, seq=SEQ, pred=PRED):
  spec = schema.feature_spec(seq, pred)
  rows = collections.defaultdict(list)
  for rec in tf.data.TFRecordDataset(files):
    for k, v in tf.io.parse_single_example(rec, spec).items():
      rows[k].append(v.numpy())
  return {k: np.stack(v) for k, v in rows.items()}


def test_pydocs_corpus_is_real_deduplicated_prose(pydocs_data):
  out, manifest = pydocs_data
  path = corpora.pydocs_path(os.environ["BERT_JAX_CACHE"])
  text = open(path, encoding="utf-8").read()
  docs = [d.split("\n") for d in text.strip().split("\n\n")]
  assert len(docs) > 300 and sum(map(len, docs)) > 10_000
  sentences = [s for d in docs for s in d]
  assert "return" in text and "function" in text
  assert all(s.strip() == s and s for s in sentences)
  assert not any(s.startswith(">>>") for s in sentences)
  assert manifest["stats"]["documents"] == len(docs)


def test_instance_statistics_over_10k(pydocs_data):
  out, manifest = pydocs_data
  tok = tokenizer_lib.load(manifest["vocab"]["file"])
  f = _read_all(sorted(glob.glob(str(out / "train" / "*.tfrecord"))))
  n = len(f["input_ids"])
  assert n >= 10_000
  ids, mask, seg = f["input_ids"], f["input_mask"], f["segment_ids"]
  pos, labels, weights = f["masked_lm_positions"], f["masked_lm_ids"], f["masked_lm_weights"]
  special = {tok.cls_id, tok.sep_id, tok.pad_id}
  lengths = mask.sum(1)
  maskable = lengths - 3
  k = weights.sum(1).astype(int)
  expected_k = np.minimum(PRED, np.maximum(1, np.round(maskable * 0.15).astype(int)))
  assert np.all(k == expected_k), "num_to_predict must follow the rounding rule per instance"
  assert abs(k.sum() / maskable.sum() - 0.15) <= 0.005
  real = weights > 0
  at = np.take_along_axis(ids, pos, 1)[real]
  original = labels[real]
  assert not (set(original.tolist()) & special), "[CLS]/[SEP]/[PAD] must never be masked"
  assert np.all(np.take_along_axis(np.arange(SEQ)[None].repeat(n, 0), pos, 1)[real] < np.repeat(lengths, k))
  frac_mask = np.mean(at == tok.mask_id)
  frac_keep = np.mean(at == original)
  frac_random = 1 - frac_mask - frac_keep
  assert abs(frac_mask - 0.8) <= 0.02 and abs(frac_keep - 0.1) <= 0.02 and abs(frac_random - 0.1) <= 0.02
  assert abs(f["next_sentence_labels"].mean() - 0.5) <= 0.02
  for row in range(0, n, 97):  # segment layout: [CLS] A [SEP] -> 0, B [SEP] -> 1, pad -> 0
    L = lengths[row]
    seps = np.flatnonzero(ids[row, :L] == tok.sep_id)
    assert ids[row, 0] == tok.cls_id and len(seps) == 2 and seps[1] == L - 1
    assert np.all(seg[row, :seps[0] + 1] == 0) and np.all(seg[row, seps[0] + 1:L] == 1)
    assert np.all(seg[row, L:] == 0) and np.all(ids[row, L:] == 0)
  s = manifest["stats"]
  assert s["instances"] == n + manifest["splits"]["eval"]["instances"]
  assert abs(s["masked_fraction"] - 0.15) < 0.005


def test_records_parse_with_google_run_pretraining_spec(pydocs_data):
  out, _ = pydocs_data
  # Written out here as run_pretraining.py's input_fn_builder defines it, not taken from our schema module.
  name_to_features = {
      "input_ids": tf.io.FixedLenFeature([SEQ], tf.int64),
      "input_mask": tf.io.FixedLenFeature([SEQ], tf.int64),
      "segment_ids": tf.io.FixedLenFeature([SEQ], tf.int64),
      "masked_lm_positions": tf.io.FixedLenFeature([PRED], tf.int64),
      "masked_lm_ids": tf.io.FixedLenFeature([PRED], tf.int64),
      "masked_lm_weights": tf.io.FixedLenFeature([PRED], tf.float32),
      "next_sentence_labels": tf.io.FixedLenFeature([1], tf.int64),
  }
  files = glob.glob(str(out / "eval" / "*.tfrecord"))
  parsed = [tf.io.parse_single_example(r, name_to_features) for r in tf.data.TFRecordDataset(files).take(5)]
  assert len(parsed) == 5
  raw = tf.train.Example.FromString(next(iter(tf.data.TFRecordDataset(files))).numpy())
  assert set(raw.features.feature) == set(name_to_features)


def test_manifest_records_settings(pydocs_data):
  out, manifest = pydocs_data
  on_disk = json.load(open(out / schema.MANIFEST_NAME))
  assert on_disk["schema_version"] == schema.SCHEMA_VERSION
  assert on_disk["max_seq_length"] == SEQ and on_disk["max_predictions_per_seq"] == PRED
  assert on_disk["vocab"]["size"] == 4000 and len(on_disk["vocab"]["sha256"]) == 64
  assert on_disk["vocab"]["special_ids"] == {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}
  assert on_disk["seed"] == 12345 and on_disk["masking"]["masked_lm_prob"] == 0.15
  counted = sum(sum(1 for _ in tf.data.TFRecordDataset(f)) for f in glob.glob(str(out / "train" / "*")))
  assert counted == on_disk["splits"]["train"]["instances"]


def test_copied_data_dir_finds_its_vocab(pydocs_data, tmp_path):
  """A prepared directory copied elsewhere (another machine) still resolves the vocabulary it trained."""
  out, manifest = pydocs_data
  copy = tmp_path / "moved"
  shutil.copytree(out, copy)
  recorded = json.load(open(copy / schema.MANIFEST_NAME))["vocab"]["file"]
  json_path = copy / schema.MANIFEST_NAME
  gone = json.load(open(json_path))
  gone["vocab"]["file"] = "/no/such/machine/" + os.path.relpath(recorded, out)  # as written on the other machine
  json_path.write_text(json.dumps(gone))
  found = schema.find_manifest(glob.glob(str(copy / "train" / "*")))
  assert found["vocab"]["file"] == str(copy / os.path.relpath(recorded, out))
  assert tokenizer_lib.file_sha256(found["vocab"]["file"]) == manifest["vocab"]["sha256"]
  assert schema.find_manifest(glob.glob(str(out / "train" / "*")))["vocab"]["file"] == recorded  # present: kept


def _small_corpus(tmp_path, n_docs=40):
  path = tmp_path / "corpus.txt"
  src = corpora.pydocs_path(os.environ.get("BERT_JAX_CACHE", str(tmp_path / "cache")))
  docs = open(src, encoding="utf-8").read().strip().split("\n\n")[:n_docs]
  path.write_text("\n\n".join(docs) + "\n")
  return path


def test_output_does_not_depend_on_worker_count(pydocs_data, tmp_path):
  _, manifest = pydocs_data
  corpus_path = _small_corpus(tmp_path)
  opts = instances.InstanceOptions(max_seq_length=64, max_predictions_per_seq=10, dupe_factor=2)
  digests = []
  for workers in (1, 2):
    out = tmp_path / f"w{workers}"
    prepare.prepare(corpora.TextFiles(str(corpus_path)), str(out), opts, vocab_file=manifest["vocab"]["file"],
                    workers=workers, docs_per_chunk=8, num_train_shards=3, progress=False)
    digests.append([open(f, "rb").read() for f in sorted(glob.glob(str(out / "*" / "*.tfrecord")))])
  assert len(digests[0]) == 4 and digests[0] == digests[1]


def test_tasks_make_independent_shards_that_merge(pydocs_data, tmp_path):
  _, manifest = pydocs_data
  corpus = corpora.TextFiles(str(_small_corpus(tmp_path)))
  opts = instances.InstanceOptions(max_seq_length=64, max_predictions_per_seq=10, dupe_factor=1)
  kw = dict(vocab_file=manifest["vocab"]["file"], workers=1, docs_per_chunk=4, num_train_shards=4, progress=False)
  whole = prepare.prepare(corpus, str(tmp_path / "one"), opts, **kw)
  # Task 1's spools are still there while task 0 closes its shards (concurrent tasks on a shared filesystem).
  stale = tmp_path / "concurrent" / ".spool-00000"
  stale.mkdir(parents=True)
  (stale / "00000-004").write_bytes(b"an interrupted run's pass")
  task0 = prepare._Shards(str(tmp_path / "concurrent"), 4, 0, 2)
  task1 = prepare._Shards(str(tmp_path / "concurrent"), 4, 1, 2)
  row = {k: np.zeros((1,) + v.shape[1:], v.dtype) for k, v in instances.empty_features(opts).items()}
  task0.write(0, [row, row])
  task1.write(1, [row, row])
  assert task0.close() == {"part-00000-of-00004.tfrecord": 2, "part-00002-of-00004.tfrecord": 0}
  task1.close()
  assert sorted(os.listdir(tmp_path / "concurrent")) == [f"part-0000{s}-of-00004.tfrecord" for s in range(4)]
  for t in range(2):
    prepare.prepare(corpus, str(tmp_path / "split"), opts, task_index=t, num_tasks=2, **kw)
  merged = manifest_lib.merge_manifests(str(tmp_path / "split"))
  assert merged["splits"]["train"] == whole["splits"]["train"]
  for name in whole["splits"]["train"]["shards"]:
    assert (tmp_path / "one" / "train" / name).read_bytes() == (tmp_path / "split" / "train" / name).read_bytes()


def test_a_shard_holds_each_dupe_pass_after_the_previous(pydocs_data, tmp_path):
  """Full-sentence rows are the same in every pass (only the masks differ): the shard's first half must hold
  each row once and the second half the same rows again, not copies a few records apart."""
  _, manifest = pydocs_data
  opts = instances.InstanceOptions(max_seq_length=64, max_predictions_per_seq=10, dupe_factor=2,
                                   mode="full_sentences")
  for formats in (("tfrecord",), ("array_record",)):
    out = tmp_path / formats[0]
    prepare.prepare(corpora.TextFiles(str(_small_corpus(tmp_path))), str(out), opts,
                    vocab_file=manifest["vocab"]["file"], workers=1, docs_per_chunk=8, num_train_shards=1,
                    progress=False, formats=formats)
    assert sorted(os.listdir(out / "train")) == [f"part-00000-of-00001.{formats[0]}"], "the spool is gone"
    if formats[0] == "tfrecord":
      f = _read_all([str(out / "train" / "part-00000-of-00001.tfrecord")], seq=64, pred=10)
    else:
      records = array_record_io.read_records(str(out / "train" / "part-00000-of-00001.array_record"))
      parsed = [array_record_io.parse(r) for r in records]
      f = {k: np.stack([p[k] for p in parsed]) for k in parsed[0]}
    rows = [tuple(_originals(f, r)) for r in range(len(f["input_ids"]))]
    half = len(rows) // 2
    assert len(rows) == 2 * half > 40
    assert len(set(rows[:half])) == half, "a row repeats within the first pass"
    assert sorted(rows[:half]) == sorted(rows[half:])
    masked = [tuple(f["masked_lm_positions"][r]) for r in range(len(rows))]
    assert sorted(masked[:half]) != sorted(masked[half:]), "the passes draw their own masks"


def test_bad_text_is_skipped_and_counted(tmp_path):
  path = tmp_path / "bad.txt"
  path.write_bytes(b"First sentence here.\nSecond one.\n\n\n   \n\nOnly sentence of doc two.\n\n"
                   b"Broken \xff\xfe bytes here.\nAnd more.\n")
  stats = collections.Counter()
  docs = list(corpora.TextFiles(str(path)).iter_documents(stats))
  assert docs[0] == ["First sentence here.", "Second one."]
  assert docs[1] == ["Only sentence of doc two."]
  assert "\ufffd" in docs[2][0]
  assert stats["empty_lines"] == 3 and stats["invalid_utf8_lines"] == 1
  per_line = tmp_path / "per_line.txt"
  per_line.write_text("One doc. It has two sentences.\n\n  \nAnother doc here.\n")
  stats = collections.Counter()
  docs = list(corpora.TextFiles(str(per_line), one_doc_per_line=True).iter_documents(stats))
  assert docs == [["One doc.", "It has two sentences."], ["Another doc here."]]
  assert stats["empty_lines"] == 2


def test_split_sentences_ends_chinese_and_japanese_sentences_without_spaces():
  text = ("有子曰：「其為人也孝弟，而好犯上者，鮮矣；不好犯上，而好作亂者，未之有也。君子務本，本立而道生。」"
          "子曰：「可也！」學而時習之，不亦說乎？今日は晴れです。明日は？？")
  assert corpora.split_sentences(text) == [
      "有子曰：「其為人也孝弟，而好犯上者，鮮矣；不好犯上，而好作亂者，未之有也。", "君子務本，本立而道生。」",
      "子曰：「可也！」", "學而時習之，不亦說乎？", "今日は晴れです。", "明日は？？"]
  assert "".join(corpora.split_sentences(text)) == text  # nothing lost, closing brackets kept with their sentence
  assert corpora.split_sentences("沒有句號的一句") == ["沒有句號的一句"]


def test_split_sentences_english_rules_hold():
  text = "Dr. J. Smith met Mr. Lee at 5 p.m. and left. He asked why? Yes! 3 cats, e.g. Tom, came. done. Not split."
  assert corpora.split_sentences(text) == [
      "Dr. J. Smith met Mr. Lee at 5 p.m. and left.", "He asked why?", "Yes!", "3 cats, e.g. Tom, came. done.",
      "Not split."]


def _originals(f, row):
  ids = f["input_ids"][row].copy()
  real = f["masked_lm_weights"][row] > 0
  ids[f["masked_lm_positions"][row][real]] = f["masked_lm_ids"][row][real]
  return ids[:f["input_mask"][row].sum()]


def test_one_sentence_document_gets_random_next():
  vocab = instances.VocabIds(cls_id=2, sep_id=3, mask_id=4, normal_ids=np.arange(5, 50),
                             word_start=np.ones(50, bool))
  docs = [[[10, 11, 12, 13]], [[20, 21, 22], [23, 24, 25], [26, 27]], [[30, 31], [32, 33]]]
  opts = instances.InstanceOptions(max_seq_length=16, max_predictions_per_seq=3, dupe_factor=4, short_seq_prob=0)
  f = instances.create_instances(docs, opts, vocab, np.random.default_rng(0))
  from_doc0 = 0
  for row in range(len(f["input_ids"])):
    tokens = _originals(f, row)
    sep = int(np.flatnonzero(tokens == 3)[0])
    a, b = tokens[1:sep], tokens[sep + 1:-1]
    if np.all((a >= 10) & (a < 20)):
      from_doc0 += 1
      assert f["next_sentence_labels"][row][0] == 1 and np.all(b >= 20)
  assert from_doc0 == 4, "the one-sentence document gives one random-next instance per dupe"


def test_whole_word_masking_masks_whole_words():
  word_start = np.ones(100, bool)
  word_start[50:] = False  # ids >= 50 continue a word
  vocab = instances.VocabIds(2, 3, 4, np.arange(5, 100), word_start)
  opts = instances.InstanceOptions(max_seq_length=64, max_predictions_per_seq=20, whole_word_masking=True)
  rng = np.random.default_rng(0)
  for _ in range(50):
    tokens = np.array([2] + [10, 51, 52, 11, 53, 12, 13, 54, 55, 56] * 4 + [3])
    _, positions, _ = masking.mask_numpy(tokens, None, opts.masking_options, vocab, rng)
    chosen = set(positions.tolist())
    for p in chosen:  # every continuation's word head is chosen too, and vice versa
      if not word_start[tokens[p]]:
        assert p - 1 in chosen
      if p + 1 < len(tokens) and tokens[p + 1] >= 50:
        assert p + 1 in chosen


def test_full_sentence_mode_packs_without_nsp():
  vocab = instances.VocabIds(2, 3, 4, np.arange(5, 50), np.ones(50, bool))
  docs = [[[10] * 5, [11] * 5], [[12] * 4], [[13] * 20]]
  opts = instances.InstanceOptions(max_seq_length=16, max_predictions_per_seq=3, dupe_factor=1,
                                   mode="full_sentences")
  f = instances.create_instances(docs, opts, vocab, np.random.default_rng(0))
  assert np.all(f["next_sentence_labels"] == 0) and np.all(f["segment_ids"] == 0)
  assert f["input_mask"].sum(1).max() <= 16 and len(f["input_ids"]) == 4  # the 20-token segment takes 2 rows


def test_full_sentence_mode_keeps_every_token_of_a_long_segment():
  """A 300-token segment at seq 128 (126 tokens a row) continues over three rows, in order, instead of being cut."""
  vocab = instances.VocabIds(2, 3, 4, np.arange(5, 1000), np.ones(1000, bool))
  segment = list(range(10, 310))
  opts = instances.InstanceOptions(max_seq_length=128, max_predictions_per_seq=20, dupe_factor=1,
                                   mode="full_sentences")
  f = instances.create_instances([[segment], [[600] * 30]], opts, vocab, np.random.default_rng(0))
  rows = []
  for r in range(len(f["input_ids"])):
    ids = f["input_ids"][r].copy()
    w = f["masked_lm_weights"][r] > 0
    ids[f["masked_lm_positions"][r][w]] = f["masked_lm_ids"][r][w]
    rows.append(ids[:f["input_mask"][r].sum()].tolist())
  assert all(row[0] == 2 and row[-1] == 3 for row in rows)
  body = [t for row in sorted(rows, key=lambda row: row[1]) for t in row[1:-1] if t != 3]
  assert body == segment + [600] * 30
  assert sorted(len(row) for row in rows) == [82, 128, 128]  # 126, 126, then 48 + [SEP] + 30 + [SEP]


def test_bpe_sentences_after_the_first_keep_their_leading_space(tmp_path):
  text = "The cat sat on the mat. The dog ran to the cat. Then the cat ran away."
  (tmp_path / "corpus.txt").write_text((text + "\n\n") * 50)
  bpe = tokenizer_lib.load(tokenizer_lib.train_bpe(corpora.TextFiles(str(tmp_path / "corpus.txt")),
                                                   str(tmp_path / "bpe.json"), 400))
  sentences = corpora.split_sentences(text)
  ids = prepare.encode_document(bpe.encode, bpe.kind, sentences)
  assert sum(ids, []) == bpe.encode(text)  # the document's pieces, as encoding it whole gives them
  assert ids[1][0] == bpe.encode(" The")[0] != bpe.encode("The")[0]
  spm_like = prepare.encode_document(str.split, "sentencepiece", sentences)
  assert spm_like[1][0] == "The"  # other vocabularies mark word starts themselves


def test_wordpiece_vocab_loads_through_tokenizers(tmp_path):
  words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "function", "return", "##s", "value", "a", "."]
  vocab = tmp_path / "vocab.txt"
  vocab.write_text("\n".join(words) + "\n")
  tok = tokenizer_lib.load(str(vocab), lower_case=True)
  assert tok.kind == "wordpiece" and (tok.cls_id, tok.mask_id) == (2, 4)
  ids = tok.encode("The function RETURNS a value.")
  assert [words[i] for i in ids] == ["the", "function", "return", "##s", "a", "value", "."]
  assert not tok.word_start_table()[words.index("##s")]


def test_sentencepiece_punctuation_starts_a_word(pydocs_data):
  """As google-research/albert's _is_start_piece: "value." is two words for whole-word masking."""
  _, manifest = pydocs_data
  tok = tokenizer_lib.load(manifest["vocab"]["file"])
  starts = tok.word_start_table()
  ids = tok.encode("It returns the value. Then (optionally) stops, again.")
  pieces = [tok.pieces[i] for i in ids]
  for piece, start in zip(pieces, starts[ids]):
    assert start == (piece.startswith("\u2581") or piece in ".(),"), (piece, start, pieces)
  assert {".", ",", ")"} <= set(pieces), pieces
  assert not all(starts[ids]), f"no piece inside a word, so the test shows nothing: {pieces}"


def test_vocab_without_special_tokens_fails(tmp_path):
  vocab = tmp_path / "vocab.txt"
  vocab.write_text("[PAD]\n[UNK]\nthe\n")
  with pytest.raises(ValueError, match=r"lacks the BERT special tokens \['\[CLS\]', '\[SEP\]', '\[MASK\]'\]"):
    tokenizer_lib.load(str(vocab))


def test_glob_matching_nothing_fails():
  with pytest.raises(FileNotFoundError, match="matched no files"):
    corpora.TextFiles("/nonexistent/dir/*.txt")


def test_tfds_corpus_reads_mock_data():
  import tensorflow_datasets as tfds
  with tfds.testing.mock_data(num_examples=7, policy=tfds.testing.MockPolicy.USE_CODE):
    corpus = corpora.TfdsCorpus("wikipedia/20230601.en", split="train", text_key="text")
    stats = collections.Counter()
    docs = list(corpus.iter_documents(stats))
  assert stats["documents_read"] == 7
  assert all(isinstance(s, str) for d in docs for s in d)


def test_prepare_cli_prints_statistics(pydocs_data, tmp_path):
  _, manifest = pydocs_data
  corpus_path = _small_corpus(tmp_path, 30)
  env = cli_env()
  result = subprocess.run(
      [sys.executable, "-m", "bert_jax.data.prepare", f"--corpus={corpus_path}", f"--output_dir={tmp_path/'cli'}",
       f"--vocab_file={manifest['vocab']['file']}", "--max_seq_length=64", "--max_predictions_per_seq=10",
       "--dupe_factor=1", "--workers=2"], capture_output=True, text=True, env=env, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  for word in ("documents 30", "sentences", "instances", "avg real tokens/instance", "masked fraction"):
    assert word in result.stdout, result.stdout
  assert "prepare: 100%" in result.stderr  # the progress bar reached the end
