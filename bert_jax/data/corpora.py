"""Document sources. A document is a list of sentences (str); sources stream them one at a time.

Sources:
  TextFiles   google-research/bert format (one sentence per line, blank line between documents)
              or one document per line (`one_doc_per_line=True`, split by `split_sentences`).
  TfdsCorpus  a TFDS dataset by name/version/split read from data_dir (never downloads).
  JsonlFiles / ParquetFiles  one document per row, its text in a column (`text_column`).
  HfCorpus    an HF `datasets` dataset from the local cache or a local directory (never downloads).
  pydocs      the offline default corpus: Python's own documentation (stdlib docstrings and
              pydoc_data topics), deduplicated, written once as a text file and then read as TextFiles.

Every source counts what it skipped into a `collections.Counter` passed to `iter_documents`:
empty_lines, empty_documents, invalid_utf8_lines, plus bytes_read / documents_read for progress.

Parts: file and HF sources also cut themselves into `parts()` (groups of consecutive files of about
PART_BYTES, or row ranges / dataset shards) read one at a time by `iter_part(part, stats)`; a document is
named by (part index, ordinal within the part), so a distributed read (the Beam pipeline) and the local
path chunk it the same way. Sources without parts are one part.
"""

import ast
import collections
import glob as glob_lib
import hashlib
import inspect
import json
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
# Chinese and Japanese put no space after a sentence and have no capitals, so their full-width stops end a sentence
# by themselves; closing quotes and brackets after the stop stay with the sentence they close.
_CJK_BOUNDARY = re.compile(r"[。！？]+[」』”’）)\]】》〉]*")


def _split_cjk(sentence: str) -> list[str]:
  pieces, start = [], 0
  for m in _CJK_BOUNDARY.finditer(sentence):
    pieces.append(sentence[start:m.end()].strip())
    start = m.end()
  pieces.append(sentence[start:].strip())
  return [p for p in pieces if p]


def split_sentences(text: str) -> list[str]:
  """Rule-based splitter: ends at . ! ? before whitespace and a capital/digit, except after
  known abbreviations and single-letter initials, and at 。！？ (with any closing quotes or brackets) without
  needing either. No downloaded models."""
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
  return [piece for s in sentences if s for piece in _split_cjk(s)]


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


PART_BYTES = 64 << 20  # files are grouped into parts of about this size: what one worker of a distributed read gets


def group_files(files: list[str], part_bytes: int = PART_BYTES) -> list[tuple[str, ...]]:
  """Consecutive files grouped until a group holds part_bytes (a larger file is a part alone)."""
  parts, group, size = [], [], 0
  for path in files:
    group.append(path)
    size += _file_size(path)
    if size >= part_bytes:
      parts.append(tuple(group))
      group, size = [], 0
  if group:
    parts.append(tuple(group))
  return parts


class _FileParts:
  """Parts of a file source: groups of consecutive files (group_files); `_iter_file` reads one file."""
  files: list[str]
  part_bytes: int = PART_BYTES

  def parts(self) -> list[tuple[str, ...]]:
    return group_files(self.files, self.part_bytes)

  def iter_part(self, part: tuple[str, ...], stats: collections.Counter) -> Iterator[Document]:
    for path in part:
      yield from self._iter_file(path, stats)

  def iter_documents(self, stats: collections.Counter) -> Iterator[Document]:
    for part in self.parts():
      yield from self.iter_part(part, stats)

  def progress_total(self) -> int:
    return sum(_file_size(f) for f in self.files)


class TextFiles(_FileParts):
  """Documents from local text files (gs:// via tf.io.gfile)."""

  def __init__(self, patterns, one_doc_per_line: bool = False, part_bytes: int = PART_BYTES):
    self.files = expand_globs(patterns)
    self.one_doc_per_line = one_doc_per_line
    self.part_bytes = part_bytes
    self.progress_unit, self.progress_key = "B", "bytes_read"

  def _iter_file(self, path: str, stats: collections.Counter) -> Iterator[Document]:
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


def text_document(text, stats: collections.Counter) -> Document | None:
  """One row's text (paragraphs separated by newlines) -> its sentences; None (counted) when empty."""
  stats["documents_read"] += 1
  sentences = [s for para in (text or "").split("\n") for s in split_sentences(para)]
  if not sentences:
    stats["empty_documents"] += 1
    return None
  return sentences


def _missing_column(where: str, column: str, present) -> KeyError:
  return KeyError(f"{where} has no column {column!r}; its columns are {sorted(present)}. Set --text_column "
                  f"(data.text_column) to the one holding the text")


def _row_text(value, where: str, column: str):
  if value is None or isinstance(value, str):
    return value
  raise TypeError(f"{where}: column {column!r} holds {type(value).__name__}, not text; set --text_column "
                  f"(data.text_column) to a string column")


class JsonlFiles(_FileParts):
  """One document per line of JSON Lines files: an object whose `text_column` holds the text."""

  def __init__(self, patterns, text_column: str = "text", part_bytes: int = PART_BYTES):
    self.files, self.text_column, self.part_bytes = expand_globs(patterns), text_column, part_bytes
    self.progress_unit, self.progress_key = "B", "bytes_read"

  def _iter_file(self, path: str, stats: collections.Counter) -> Iterator[Document]:
    with _open_binary(path) as f:
      for line_number, raw in enumerate(f, 1):
        stats["bytes_read"] += len(raw)
        line = _decode(raw, stats).strip()
        if not line:
          stats["empty_lines"] += 1
          continue
        where = f"{path}:{line_number}"
        try:
          row = json.loads(line)
        except json.JSONDecodeError as e:
          raise ValueError(f"{where} is not JSON ({e.msg}); JSON Lines files hold one object per line") from None
        if not isinstance(row, dict):
          raise ValueError(f"{where} holds a JSON {type(row).__name__}, not an object with a {self.text_column!r} "
                           f"field")
        if self.text_column not in row:
          raise _missing_column(where, self.text_column, row)
        doc = text_document(_row_text(row[self.text_column], where, self.text_column), stats)
        if doc:
          yield doc


class ParquetFiles(_FileParts):
  """One document per row of Parquet files, its text in the string column `text_column` (read with pyarrow)."""

  def __init__(self, patterns, text_column: str = "text", part_bytes: int = PART_BYTES, batch_rows: int = 1024):
    self.files, self.text_column, self.part_bytes = expand_globs(patterns), text_column, part_bytes
    self.batch_rows = batch_rows
    self.progress_unit, self.progress_key = "B", "bytes_read"

  def _iter_file(self, path: str, stats: collections.Counter) -> Iterator[Document]:
    import pyarrow.parquet as pq
    with _open_binary(path) as f:
      table = pq.ParquetFile(f)
      if self.text_column not in table.schema_arrow.names:
        raise _missing_column(path, self.text_column, table.schema_arrow.names)
      rows = max(table.metadata.num_rows, 1)
      size = _file_size(path)
      for batch in table.iter_batches(batch_size=self.batch_rows, columns=[self.text_column]):
        stats["bytes_read"] += size * batch.num_rows // rows  # progress: the file's share of these rows
        for value in batch.column(0).to_pylist():
          doc = text_document(_row_text(value, path, self.text_column), stats)
          if doc:
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


HF_SPLIT_NAMES = ("train", "validation", "test")
HF_ROWS_PER_PART = 100_000  # rows of a map-style (Arrow) dataset per part


def _hf_offline():
  """Never download: the HF libraries read these at import, and datasets' config again at call time."""
  os.environ["HF_DATASETS_OFFLINE"] = os.environ["HF_HUB_OFFLINE"] = "1"
  import datasets
  datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = True
  return datasets


def parse_hf_spec(spec: str) -> tuple[str, str | None, str]:
  """'NAME[:CONFIG][:SPLIT]' -> (name, config, split); a lone second field that is a split name
  (train/validation/test) is the split."""
  name, *rest = spec.split(":")
  if len(rest) > 2 or not name:
    raise ValueError(f"corpus 'hf:{spec}': expected hf:NAME[:CONFIG][:SPLIT] (e.g. hf:wikitext:wikitext-103-raw-v1:"
                     f"train, or hf:/path/to/saved_dataset)")
  if len(rest) == 1 and rest[0] in HF_SPLIT_NAMES:
    rest = ["", rest[0]]
  config, split = (rest + ["", ""])[:2]
  return name, config or None, split or "train"


class HfCorpus:
  """Documents from an HF `datasets` dataset, one per row, its text in `text_column`; never downloads.

  `name` is a dataset in the local datasets cache (loaded as it was downloaded), a directory written by
  `save_to_disk`, or a directory of data files (parquet/jsonl/csv; streamed). Parts: row ranges of a
  map-style dataset, or the shards of a streamed one.
  """

  def __init__(self, name: str, config: str | None = None, split: str = "train", text_column: str = "text"):
    self.name, self.config, self.split, self.text_column = name, config or None, split or "train", text_column
    self.progress_unit, self.progress_key = "doc", "documents_read"
    self._dataset = None
    self._check_column(self.dataset())

  @classmethod
  def parse(cls, spec: str, text_column: str = "text") -> "HfCorpus":
    return cls(*parse_hf_spec(spec), text_column)

  def __getstate__(self):  # workers of a distributed read open the dataset themselves
    return {**self.__dict__, "_dataset": None}

  def dataset(self):
    if self._dataset is None:
      self._dataset = self._load()
    return self._dataset

  def _load(self):
    datasets = _hf_offline()
    path = os.path.expanduser(self.name)
    if os.path.isdir(path):
      saved = any(os.path.exists(os.path.join(path, f)) for f in ("dataset_info.json", "dataset_dict.json"))
      if not saved:  # a directory of data files: the packaged builders stream them
        return datasets.load_dataset(path, self.config, split=self.split, streaming=True)
      ds = datasets.load_from_disk(path)
      if isinstance(ds, datasets.DatasetDict):
        if self.split not in ds:
          raise KeyError(f"saved dataset {path} has no split {self.split!r}; its splits are {sorted(ds)}")
        ds = ds[self.split]
      return ds
    try:
      return datasets.load_dataset(self.name, self.config, split=self.split,
                                   download_mode=datasets.DownloadMode.REUSE_DATASET_IF_EXISTS)
    except Exception as e:  # offline: missing from the cache (ConnectionError, FileNotFoundError, ...)
      config = f", {self.config!r}" if self.config else ""
      raise FileNotFoundError(
          f"HF dataset {self.name!r} (config {self.config!r}, split {self.split!r}) is not in the local datasets "
          f"cache {datasets.config.HF_DATASETS_CACHE} nor a local directory, and this never downloads ({e}). "
          f"Make it available offline: on a machine with network run `python -c \"import datasets; "
          f"datasets.load_dataset({self.name!r}{config}, split={self.split!r}).save_to_disk('DIR')\"` and pass "
          f"--corpus=hf:DIR, or fetch its parquet files and pass --corpus='DIR/*.parquet'") from e

  def _streamed(self) -> bool:
    return not hasattr(self.dataset(), "__len__")

  def _check_column(self, ds):
    columns = ds.column_names
    if columns is None:  # a streamed dataset of unknown features: look at its first row
      columns = list(next(iter(ds), {}))
    if self.text_column not in columns:
      raise _missing_column(f"HF dataset {self.name!r} (split {self.split!r})", self.text_column, columns)

  def parts(self) -> list[tuple[int, int]]:
    ds = self.dataset()
    if self._streamed():
      return [(i, ds.num_shards) for i in range(ds.num_shards)]
    return [(start, min(start + HF_ROWS_PER_PART, len(ds))) for start in range(0, len(ds), HF_ROWS_PER_PART)]

  def iter_part(self, part: tuple[int, int], stats: collections.Counter) -> Iterator[Document]:
    ds, where = self.dataset(), f"HF dataset {self.name!r}"
    if self._streamed():
      index, num_shards = part
      rows = (row[self.text_column] for row in ds.shard(num_shards, index))
    else:
      start, stop = part
      rows = (text for at in range(start, stop, 1024) for text in ds[at:min(at + 1024, stop)][self.text_column])
    for value in rows:
      doc = text_document(_row_text(value, where, self.text_column), stats)
      if doc:
        yield doc

  def iter_documents(self, stats: collections.Counter) -> Iterator[Document]:
    for part in self.parts():
      yield from self.iter_part(part, stats)

  def progress_total(self) -> int | None:
    return None if self._streamed() else len(self.dataset())


# --- pydocs: the offline default corpus -------------------------------------------------------

# classical_zh: the offline Chinese corpus, ~100 passages of the Analects (論語) and the Daodejing (道德經), public
# domain, shipped in the package (texts/README.md names the passages and the edition).
CLASSICAL_ZH_NAME = "classical_zh"
CLASSICAL_ZH_PATH = str(Path(__file__).parent / "texts" / "classical_zh.txt")

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


_DEFINITIONS = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


# Nodes that can hold statements, hence definitions; expressions, arguments and the like cannot (a lambda is not a
# definition), and they are most of a module's nodes.
_HOLDS_STATEMENTS = (ast.stmt, ast.excepthandler, ast.match_case)
_STATEMENT_FIELDS = {"body", "orelse", "finalbody", "handlers", "cases"}


def _definitions(tree: ast.AST) -> list[ast.AST]:
  """The module, class and function nodes of a tree, in ast.walk's (breadth-first) order."""
  found, queue = [], collections.deque([tree])
  while queue:
    node = queue.popleft()
    if isinstance(node, _DEFINITIONS):
      found.append(node)
    for field in node._fields:  # in ast.iter_child_nodes's order
      if field in _STATEMENT_FIELDS:
        queue.extend(n for n in getattr(node, field) if isinstance(n, _HOLDS_STATEMENTS))
  return found


def source_docstrings(root: Path) -> Iterator[list[str]]:
  """For each Python source file under root (tests and the like left out), its docstrings in source order
  (module, classes, functions)."""
  for path in sorted(root.rglob("*.py")):
    if _SKIP_DIRS & set(path.relative_to(root).parts[:-1]):
      continue
    try:
      tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError):
      continue
    nodes = sorted(_definitions(tree), key=lambda n: getattr(n, "lineno", 0))
    docs = [d for d in (ast.get_docstring(n, clean=False) for n in nodes) if d]
    if docs:
      yield docs


def _pydoc_topics() -> Iterator[list[str]]:
  from pydoc_data import topics
  for key in sorted(topics.topics):
    yield [topics.topics[key]]


def docstring_documents(*sources) -> Iterator[Document]:
  """Documents of sources of [text, ...] lists (one document each), keeping prose paragraphs, each paragraph
  once across all of them."""
  seen = set()
  for source in sources:
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


def pydocs_documents() -> Iterator[Document]:
  """The default corpus: Python's language-reference topics (one document each) and the stdlib's
  docstrings (one document per module)."""
  return docstring_documents(_pydoc_topics(), source_docstrings(Path(sysconfig.get_paths()["stdlib"])))


def write_documents(documents, path) -> None:
  """Documents in google-research/bert's text format (a sentence a line, a blank line after each document),
  written to a temporary name and renamed."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(f".tmp{os.getpid()}")
  with open(tmp, "w", encoding="utf-8") as f:
    for doc in documents:
      f.write("\n".join(s.replace("\n", " ") for s in doc) + "\n\n")
  os.replace(tmp, path)


def pydocs_path(cache_dir: str) -> str:
  """Writes the pydocs corpus once (google-research/bert text format) and returns its path."""
  version = f"py{sys.version_info.major}.{sys.version_info.minor}"
  path = Path(cache_dir) / f"{PYDOCS_NAME}-{version}.txt"
  if not path.exists():
    write_documents(pydocs_documents(), path)
  return str(path)


def default_cache_dir() -> str:
  return os.environ.get("BERT_JAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "bert_jax"))


def run_cache_dir(workdir_data: str) -> str:
  """Where a training run keeps a built corpus (pydocs): $BERT_JAX_CACHE when set, shared between runs;
  otherwise the run's own WORKDIR/data, so that a workdir holds everything it was trained from."""
  return os.environ.get("BERT_JAX_CACHE") or workdir_data


def from_spec(spec: str, *, data_dir: str | None = None, text_key: str = "text", one_doc_per_line: bool = False,
              cache_dir: str | None = None, text_column: str | None = None, part_bytes: int = PART_BYTES):
  """A corpus from a string: 'pydocs', 'tfds:NAME[:SPLIT]', 'hf:NAME[:CONFIG][:SPLIT]' (or hf:DIR), or a
  comma-separated list of file globs: *.parquet / *.jsonl (one document per row) or text files.

  text_column names the text field of hf:, Parquet, JSONL and TFDS rows (default: text_key, i.e. 'text');
  part_bytes sizes the parts of file sources (group_files).
  """
  column = text_column or text_key
  if spec == PYDOCS_NAME:
    return TextFiles(pydocs_path(cache_dir or default_cache_dir()), part_bytes=part_bytes)
  if spec == CLASSICAL_ZH_NAME:
    return TextFiles(CLASSICAL_ZH_PATH, part_bytes=part_bytes)
  if spec.startswith("tfds:"):
    parts = spec.split(":")
    return TfdsCorpus(parts[1], parts[2] if len(parts) > 2 else "train", data_dir, column)
  if spec.startswith("hf:"):
    return HfCorpus.parse(spec[len("hf:"):], column)
  patterns = [p.strip() for p in spec.split(",") if p.strip()]
  if patterns and all(p.endswith(".parquet") for p in patterns):
    return ParquetFiles(patterns, column, part_bytes)
  if patterns and all(p.endswith(".jsonl") for p in patterns):
    return JsonlFiles(patterns, column, part_bytes)
  return TextFiles(spec, one_doc_per_line=one_doc_per_line, part_bytes=part_bytes)
