"""Corpora from HF `datasets` (a saved dataset, a directory of data files, the cache: never downloading) and
from Parquet / JSONL files with a text column."""
import collections
import json
import os

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bert_jax.data import corpora, instances, prepare
from bert_jax.data import tokenizer as tokenizer_lib
from data_helpers import pydocs_docs

ROWS = 240


def _texts():
  """Real prose, one document per row (paragraph-like text, a blank row and a None among them)."""
  texts = [" ".join(doc) for doc in pydocs_docs()[:ROWS]]
  texts[5], texts[9] = "   ", None
  return texts


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
  root = tmp_path_factory.mktemp("hf")
  texts = _texts()
  ids = list(range(len(texts)))
  datasets.Dataset.from_dict({"id": ids, "content": texts}).save_to_disk(str(root / "saved"))
  (root / "files").mkdir()
  half = len(texts) // 2
  for i, (lo, hi) in enumerate([(0, half), (half, len(texts))]):
    pq.write_table(pa.table({"id": ids[lo:hi], "content": texts[lo:hi]}), root / "files" / f"train-{i}.parquet")
  with open(root / "rows.jsonl", "w") as f:
    for i, t in zip(ids, texts):
      f.write(json.dumps({"id": i, "content": t}) + "\n")
    f.write("\n")
  return root, texts


def _documents(corpus):
  stats = collections.Counter()
  return [tuple(d) for d in corpus.iter_documents(stats)], stats


def test_saved_dataset_prepares_end_to_end(sources, tmp_path):
  root, texts = sources
  corpus = corpora.from_spec(f"hf:{root / 'saved'}", text_column="content")
  assert isinstance(corpus, corpora.HfCorpus) and corpus.progress_total() == ROWS
  vocab = tokenizer_lib.train_vocab(corpus, "sentencepiece", str(tmp_path / "spm"), 1000)
  opts = instances.InstanceOptions(max_seq_length=64, max_predictions_per_seq=10, dupe_factor=1)
  manifest = prepare.prepare(corpus, str(tmp_path / "out"), opts, vocab_file=vocab, workers=1, progress=False,
                             eval_fraction=0.05, corpus_description=f"hf:{root / 'saved'}")
  s = manifest["stats"]
  assert s["documents"] == ROWS and s["skipped_empty_documents"] == 2  # the blank row and the None
  assert manifest["splits"]["train"]["instances"] > 200 and manifest["splits"]["eval"]["instances"] > 0
  assert os.path.exists(tmp_path / "out" / "manifest.json")


def test_every_source_reads_the_same_documents(sources):
  root, _ = sources
  saved, saved_stats = _documents(corpora.from_spec(f"hf:{root / 'saved'}", text_column="content"))
  streamed_corpus = corpora.from_spec(f"hf:{root / 'files'}", text_column="content")  # parquet dir, streamed
  streamed, _ = _documents(streamed_corpus)
  parquet, parquet_stats = _documents(corpora.from_spec(f"{root / 'files'}/*.parquet", text_column="content"))
  jsonl, jsonl_stats = _documents(corpora.from_spec(str(root / "rows.jsonl"), text_column="content"))
  assert len(saved) == ROWS - 2 and saved == streamed == parquet == jsonl
  assert saved_stats["empty_documents"] == parquet_stats["empty_documents"] == jsonl_stats["empty_documents"] == 2
  assert jsonl_stats["empty_lines"] == 1
  assert len(streamed_corpus.parts()) == 2  # the streamed dataset's shards are its parts


def test_missing_text_column_names_the_columns(sources):
  root, _ = sources
  with pytest.raises(KeyError, match=r"rows.jsonl:1 has no column 'text'; its columns are \['content', 'id'\]"):
    _documents(corpora.from_spec(str(root / "rows.jsonl")))
  with pytest.raises(KeyError, match=r"train-0.parquet has no column 'body'; its columns are \['content', 'id'\]"):
    _documents(corpora.from_spec(f"{root / 'files'}/*.parquet", text_column="body"))
  with pytest.raises(KeyError, match=r"no column 'text'; its columns are \['content', 'id'\]"):
    corpora.from_spec(f"hf:{root / 'saved'}")
  with pytest.raises(TypeError, match="holds int, not text"):
    _documents(corpora.from_spec(str(root / "rows.jsonl"), text_column="id"))


def test_dataset_missing_offline_says_how_to_make_it_available(tmp_path, monkeypatch):
  monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "empty_cache"))
  monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "empty_cache"))
  with pytest.raises(FileNotFoundError) as e:
    corpora.from_spec("hf:no-such-org/no-such-corpus:en:train")
  message = str(e.value)
  assert "'no-such-org/no-such-corpus'" in message and "never downloads" in message
  assert str(tmp_path / "empty_cache") in message and "save_to_disk" in message and "--corpus=hf:DIR" in message
  assert os.environ["HF_DATASETS_OFFLINE"] == "1"


def test_hf_spec_parsing():
  cases = {"wikitext:wikitext-103-raw-v1:validation": ("wikitext", "wikitext-103-raw-v1", "validation"),
           "imdb:test": ("imdb", None, "test"), "c4:en": ("c4", "en", "train"), "bookcorpus": ("bookcorpus", None, "train"),
           "/data/saved::validation": ("/data/saved", None, "validation")}
  for spec, expected in cases.items():
    assert corpora.parse_hf_spec(spec) == expected, spec
  with pytest.raises(ValueError, match="expected hf:NAME"):
    corpora.parse_hf_spec("a:b:c:d")
