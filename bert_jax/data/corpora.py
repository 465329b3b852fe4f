"""Document sources. A document is a list of sentences (str); sources stream them one at a time.

Sources:
  TextFiles   google-research/bert format (one sentence per line, blank line between documents)
              or one document per line (`one_doc_per_line=True`, split by `split_sentences`).
  TfdsCorpus  a TFDS dataset by name/version/split read from data_dir (never downloads).
  pydocs      the offline default corpus: Python's own documentation (stdlib docstrings and
              pydoc_data topics), deduplicated, written once as a text file and then read as TextFiles.

Every source counts what it skipped into a `collections.Counter` passed to `iter_documents`:
empty_lines, empty_documents, invalid_utf8_lines, plus bytes_read / documents_read for progress.
"""

import ast
import collections
import glob as glob_lib
import hashlib
import inspect
import os
import re
import sys
import sysconfig
from pathlib import Path
from typing import Iterator

Document = list[str]

_ABBREVIATIONS = frozenset(
    "e.g i.e etc vs cf mr mrs ms dr prof st jr sr no fig eq approx resp al inc ltd co".split())
_BOUNDARY = re.compile(r"""(?<=[.!?])["')\]]*\s+(?=["'(\[]?[A-Z0-9])""")


def split_sentences(text: str) -> list[str]:
  """Rule-based splitter: ends at . ! ? before whitespace and a capital/digit, except after
  known abbreviations and single-letter initials. No downloaded models."""
  text = " ".join(text.split())
  sentences, start = [], 0
  for m in _BOUNDARY.finditer(text):
    before = text[start:m.start()].rstrip("\"')]")
    last_word = before.rsplit(" ", 1)[-1].rstrip(".!?").lower()
    if last_word in _ABBREVIATIONS or (len(last_word) == 1 and last_word.isalpha()):
      continue
    sentences.append(text[start:m.start()].strip())
    start = m.end()
  tail = text[start:].strip()
  if tail:
    sentences.append(tail)
  return [s for s in sentences if s]


def expand_globs(patterns) -> list[str]:
  """Sorted files matching comma-separated or listed globs; fails naming a glob that matches nothing."""
  if isinstance(patterns, str):
    patterns = [p for p in patterns.split(",") if p.strip()]
  files = []
  for pattern in patterns:
    pattern = pattern.strip()
    if pattern.startswith("gs://"):
      import tensorflow as tf
      matched = tf.io.gfile.glob(pattern)
    else:
      matched = glob_lib.glob(os.path.expanduser(pattern))
    matched = sorted(m for m in matched if not os.path.isdir(m))
    if not matched:
      raise FileNotFoundError(f"glob {pattern!r} matched no files; check the path (globs like 'dir/*.txt' work)")
    files.extend(matched)
  return files


def _decode(raw: bytes, stats) -> str:
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError:
    stats["invalid_utf8_lines"] += 1
    return raw.decode("utf-8", errors="replace")


class TextFiles:
  """Documents from local text files (gs:// via tf.io.gfile)."""

  def __init__(self, patterns, one_doc_per_line: bool = False):
    self.files = expand_globs(patterns)
    self.one_doc_per_line = one_doc_per_line
    self.progress_unit, self.progress_key = "B", "bytes_read"

  def progress_total(self) -> int:
    return sum(_file_size(f) for f in self.files)

  def iter_documents(self, stats: collections.Counter) -> Iterator[Document]:
    for path in self.files:
      with _open_binary(path) as f:
        doc: Document = []
        blank_run = 0
        for raw in f:
          stats["bytes_read"] += len(raw)
          line = _decode(raw, stats).strip()
          if self.one_doc_per_line:
            if not line:
              stats["empty_lines"] += 1
              continue
            stats["documents_read"] += 1
            sentences = split_sentences(line)
            if sentences:
              yield sentences
            continue
          if line:
            doc.append(line)
            blank_run = 0
            continue
          blank_run += 1
          if doc:
            stats["documents_read"] += 1
            yield doc
            doc = []
          elif blank_run > 1:
            stats["empty_lines"] += 1  # blank or whitespace-only lines beyond the one separator
        if doc:
          stats["documents_read"] += 1
          yield doc


def _file_size(path):
  if path.startswith("gs://"):
    import tensorflow as tf
    return tf.io.gfile.stat(path).length
  return os.path.getsize(path)


def _open_binary(path):
  if path.startswith("gs://"):
    import tensorflow as tf
    return tf.io.gfile.GFile(path, "rb")
  return open(path, "rb")


class TfdsCorpus:
  """Documents from a prepared TFDS dataset, e.g. wikipedia/20230601.en, c4/en, wiki40b/en.

  Paragraphs (newline-separated) are split into sentences; the dataset must already be in data_dir.
  """

  def __init__(self, name: str, split: str = "train", data_dir: str | None = None, text_key: str = "text"):
    self.name, self.split, self.data_dir, self.text_key = name, split, data_dir, text_key
    self.progress_unit, self.progress_key = "doc", "documents_read"

  def _builder(self):
    import tensorflow_datasets as tfds
    return tfds.builder(self.name, data_dir=self.data_dir)

  def progress_total(self) -> int | None:
    try:
      return self._builder().info.splits[self.split].num_examples
    except Exception:  # info without split sizes is fine: progress then has no ETA
      return None

  def iter_documents(self, stats: collections.Counter) -> Iterator[Document]:
    import tensorflow_datasets as tfds
    ds = tfds.load(self.name, split=self.split, data_dir=self.data_dir, download=False, shuffle_files=False)
    for example in tfds.as_numpy(ds):
      stats["documents_read"] += 1
      if self.text_key not in example:
        raise KeyError(f"TFDS {self.name!r} examples have no {self.text_key!r} field; "
                       f"fields are {sorted(example)} (set the text key)")
      text = _decode(example[self.text_key], stats)
      sentences = [s for para in text.split("\n") for s in split_sentences(para)]
      if sentences:
        yield sentences
      else:
        stats["empty_documents"] += 1


# --- pydocs: the offline default corpus -------------------------------------------------------

PYDOCS_NAME = "pydocs"
_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "turtledemo",
              "ensurepip", "venv"}


def _prose_paragraphs(docstring: str) -> Iterator[str]:
  """Paragraphs of a docstring that read as prose: no doctest, code blocks or tables."""
  for para in re.split(r"\n\s*\n", inspect.cleandoc(docstring)):
    lines = para.splitlines()
    if not lines or any(l.lstrip().startswith((">>>", "...", "$ ", "+--", "===", "---")) for l in lines):
      continue
    if sum(l.startswith((" ", "\t")) for l in lines) > len(lines) / 2:
      continue  # indented: code or a literal block
    text = " ".join(l.strip() for l in lines)
    letters = sum(ch.isalpha() for ch in text)
    if len(text) >= 20 and letters >= 0.6 * len(text) and " " in text:
      yield text


def _stdlib_module_docstrings() -> Iterator[list[str]]:
  """For each stdlib source file, its docstrings in source order (module, classes, functions)."""
  root = Path(sysconfig.get_paths()["stdlib"])
  for path in sorted(root.rglob("*.py")):
    if _SKIP_DIRS & set(path.relative_to(root).parts[:-1]):
      continue
    try:
      tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError):
      continue
    nodes = [n for n in ast.walk(tree)
             if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
    nodes.sort(key=lambda n: getattr(n, "lineno", 0))
    docs = [d for d in (ast.get_docstring(n, clean=False) for n in nodes) if d]
    if docs:
      yield docs


def _pydoc_topics() -> Iterator[list[str]]:
  from pydoc_data import topics
  for key in sorted(topics.topics):
    yield [topics.topics[key]]


def pydocs_documents() -> Iterator[Document]:
  """The default corpus: Python's language-reference topics (one document each) and the stdlib's
  docstrings (one document per module), keeping prose paragraphs, each paragraph once."""
  seen = set()
  for source in (_pydoc_topics(), _stdlib_module_docstrings()):
    for texts in source:
      sentences = []
      for text in texts:
        for para in _prose_paragraphs(text):
          key = hashlib.sha1(para.lower().encode()).digest()
          if key not in seen:
            seen.add(key)
            sentences.extend(split_sentences(para))
      if sentences:
        yield sentences


def pydocs_path(cache_dir: str) -> str:
  """Writes the pydocs corpus once (google-research/bert text format) and returns its path."""
  version = f"py{sys.version_info.major}.{sys.version_info.minor}"
  path = Path(cache_dir) / f"{PYDOCS_NAME}-{version}.txt"
  if not path.exists():
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
      for doc in pydocs_documents():
        f.write("\n".join(s.replace("\n", " ") for s in doc) + "\n\n")
    os.replace(tmp, path)
  return str(path)


def default_cache_dir() -> str:
  return os.environ.get("BERT_JAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "bert_jax"))


def from_spec(spec: str, *, data_dir: str | None = None, text_key: str = "text", one_doc_per_line: bool = False,
              cache_dir: str | None = None):
  """A corpus from a string: 'pydocs', 'tfds:NAME[:SPLIT]' or a comma-separated list of file globs."""
  if spec == PYDOCS_NAME:
    return TextFiles(pydocs_path(cache_dir or default_cache_dir()))
  if spec.startswith("tfds:"):
    parts = spec.split(":")
    return TfdsCorpus(parts[1], parts[2] if len(parts) > 2 else "train", data_dir, text_key)
  return TextFiles(spec, one_doc_per_line=one_doc_per_line)
