"""Word segmenters, and the unit bits of a tokenized sentence (masking.UNIT_FEATURE).

Chinese whole-word masking (HIT's BERT-wwm / RoBERTa-wwm-ext recipe): Chinese is tokenized per character,
while a segmenter decides the words; a character that continues its word counts as a '##' piece for the
masking decision only (the ids stay the per-character ones).

data.segmenter:
  ''                     no segmenter: words are what the vocabulary says ('##' pieces, '▁'/'Ġ' starts);
  'jieba'                jieba.lcut (the `chinese` extra: pip install 'bert-jax[chinese]');
  'pkg.module:function'  any callable text -> list of words that concatenate to the text.
Segmenters are imported through importlib when asked for, so a missing one fails with the package to install.
"""

import importlib
import logging

import numpy as np

from bert_jax.data import knowledge, masking

BUILTIN = {"jieba": ("jieba", "lcut", "chinese")}  # name -> (module, function, extra that installs it)


def load_segmenter(spec: str):
  """text -> list of (start, end) word spans, or None for spec ''."""
  if not spec:
    return None
  module_name, function, extra = BUILTIN.get(spec, (*spec.partition(":")[::2], ""))
  if not function:
    raise ValueError(f"data.segmenter {spec!r}: use one of {sorted(BUILTIN)} or 'pkg.module:function'")
  try:
    module = importlib.import_module(module_name)
  except ImportError as e:
    fix = (f"pip install 'bert-jax[{extra}]'" if extra else f"install the package that provides {module_name!r}")
    raise ValueError(f"data.segmenter={spec!r} needs the module {module_name!r}, which is not importable ({e}). "
                     f"Fix: {fix}, or set data.segmenter='' (words from the vocabulary)") from None
  if module_name == "jieba":
    module.setLogLevel(logging.WARNING)  # its dictionary-loading chatter
  segment = getattr(module, function, None)
  if segment is None:
    raise ValueError(f"data.segmenter {spec!r}: module {module_name!r} has no {function!r}")
  return lambda text: word_spans(segment(text), text)


def word_spans(words, text: str) -> list[tuple[int, int]]:
  """The words' (start, end) in text, searching forward (a segmenter may drop whitespace)."""
  spans, at = [], 0
  for word in words:
    start = text.find(word, at) if word else -1
    if start < 0:
      continue
    spans.append((start, start + len(word)))
    at = start + len(word)
  return spans


def _span_index(starts: np.ndarray, spans) -> np.ndarray:
  """For each token start offset, the index of the span holding it, else -1."""
  index = np.full(len(starts), -1, np.int64)
  for i, (s, e) in enumerate(spans):
    index[(starts >= s) & (starts < e)] = i
  return index


def _level_starts(word_start: np.ndarray, index: np.ndarray) -> np.ndarray:
  """Starts of a partition into the spans (whole) and the words outside them."""
  previous = np.concatenate([[-1], index[:-1]])
  return np.where(index >= 0, index != previous, word_start | (previous >= 0))


class UnitMarker:
  """Sentence -> token keys (masking.pack_units: ids with their unit bits) for data with UNIT_FEATURE."""

  def __init__(self, tok, opts: masking.MaskingOptions):
    self.tok, self.opts = tok, opts
    self.segment = load_segmenter(opts.segmenter)
    self.vocab_word_start = tok.word_start_table()
    self.phrases = self.entities = None
    if opts.mode == "knowledge":
      self.phrases = knowledge.load_phrase_chunker(opts.phrase_chunker, self.segment)
      if opts.entity_file:
        self.entities = knowledge.load_entities(opts.entity_file, tok.lower_case)

  def bits(self, text: str) -> tuple[list[int], np.ndarray]:
    """(ids, unit bits per token)."""
    ids, offsets = self.tok.encode_with_offsets(text)
    if not ids:
      return [], np.zeros(0, np.int64)
    starts = np.array([s for s, _ in offsets], np.int64)
    word = self.vocab_word_start[np.asarray(ids)].astype(bool)
    if self.segment is not None:
      index = _span_index(starts, self.segment(text))
      word &= index != np.concatenate([[-2], index[:-1]])  # a character inside its word continues it
    word[0] = True
    bits = np.where(word, masking.WORD_BIT, 0)
    if self.phrases is not None:
      bits |= np.where(_level_starts(word, _span_index(starts, self.phrases(text))), masking.PHRASE_BIT, 0)
    if self.entities is not None:
      bits |= np.where(_level_starts(word, _span_index(starts, self.entities.find(text))), masking.ENTITY_BIT, 0)
    return list(ids), bits

  def encode(self, text: str) -> list[int]:
    ids, bits = self.bits(text)
    return masking.pack_units(ids, bits)
