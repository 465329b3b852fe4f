"""ERNIE-style knowledge units in text: entities from an entity list, phrases from a phrase chunker.

Both give character spans (start, end) of a sentence; segmenters.UnitMarker turns them into unit bits.

Entity list file (data.entity_file): UTF-8, one entity per line, optionally `ENTITY<TAB>TYPE` (the type is
read and ignored); blank lines and lines starting with '#' are skipped. A line that does not parse (invalid
UTF-8, an empty entity, more than one TAB) fails naming the file and the line number. Mentions are found
longest first; entities made of word characters must stand as whole words (no 'Paris' inside 'Parisian').
Matching walks a character trie from each position, so its cost grows with the text and the longest entity, not
with the number of entities (one regular-expression alternation of them tried every entity at every position;
bench/RESULTS.md compares the two).

Phrase chunkers (data.phrase_chunker), pluggable:
  ''/'auto'   'segmenter' when a segmenter is set (Chinese: its multi-character words are the phrases, as
              ERNIE's Chinese phrase level), else 'rake';
  'rake'      candidate phrases RAKE-style (Rose et al. 2010): maximal runs of content words between
              stopwords and punctuation, kept when two words or longer (a one-word phrase is a word unit);
  'pkg.module:function'  a callable text -> list of (start, end) character spans.
"""

import functools
import importlib
import re

# A compact English stopword list (function words; RAKE's phrase delimiters).
ENGLISH_STOPWORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being below between
both but by can could did do does doing down during each either else ever every few for from further had has
have having he her here hers herself him himself his how however i if in into is it its itself just least less
let like may me might more most much must my myself neither no nor not now of off on once only or other ought
our ours ourselves out over own per rather same shall she should since so some such than that the their theirs
them themselves then there these they this those though through thus to too under until up upon us very via
was we were what when where whether which while who whom whose why will with within without would yet you
your yours yourself yourselves
""".split())
_WORD = re.compile(r"[^\W_]+(?:['\-][^\W_]+)*")


def rake_phrases(text: str) -> list[tuple[int, int]]:
  """Character spans of RAKE-style candidate phrases of two or more words (see the module docstring)."""
  spans, run = [], []
  last_end = 0
  for m in _WORD.finditer(text):
    between = text[last_end:m.start()]
    if m.group().lower() in ENGLISH_STOPWORDS or (run and between.strip()):  # punctuation ends a phrase too
      if len(run) >= 2:
        spans.append((run[0][0], run[-1][1]))
      run = []
    if m.group().lower() not in ENGLISH_STOPWORDS:
      run.append((m.start(), m.end()))
    last_end = m.end()
  if len(run) >= 2:
    spans.append((run[0][0], run[-1][1]))
  return spans


def load_phrase_chunker(spec: str, segmenter=None):
  """text -> phrase spans, from data.phrase_chunker (see the module docstring)."""
  if spec in ("", "auto"):
    spec = "segmenter" if segmenter is not None else "rake"
  if spec == "rake":
    return rake_phrases
  if spec == "segmenter":
    if segmenter is None:
      raise ValueError("data.phrase_chunker='segmenter' needs data.segmenter (e.g. 'jieba')")
    return lambda text: [(s, e) for s, e in segmenter(text) if e - s > 1 and text[s:e].strip()]
  module, _, name = spec.partition(":")
  if not name:
    raise ValueError(f"data.phrase_chunker {spec!r}: use 'rake', 'segmenter' or 'pkg.module:function'")
  try:
    return getattr(importlib.import_module(module), name)
  except (ImportError, AttributeError) as e:
    raise ValueError(f"data.phrase_chunker {spec!r} is not importable ({e}); install the package that provides "
                     f"it or use 'rake'") from None


_END = ""  # trie key of a node where an entity ends (no text character is the empty string)


def _is_word_char(ch: str) -> bool:
  """Python's re `\\w` for one character of a str pattern."""
  return ch.isalnum() or ch == "_"


def _fold_char(ch: str) -> str:
  for folded in (ch.casefold(), ch.lower()):
    if len(folded) == 1:
      return folded
  return ch


def _fold_keeping_length(text: str) -> str:
  """Each character case-folded, as re.IGNORECASE compares them (σ, ς and Σ alike), where that is one character;
  else lower-cased where that is one character ('ß'), else as it is ('İ')."""
  folded = text.casefold()  # no character folds to nothing, so the same length means one character each
  return folded if len(folded) == len(text) else "".join(map(_fold_char, text))


class EntityList:
  """Entities of a data.entity_file, found in text as character spans."""

  def __init__(self, path: str, lower_case: bool = False):
    self.path, self.entities = path, self._read(path)
    if not self.entities:
      raise ValueError(f"entity list {path} holds no entities (one per line, '#' starts a comment)")
    self._fold = _fold_keeping_length if lower_case else (lambda text: text)
    # char -> child node; node[_END] = (must start a word, must end a word): an ASCII word character at an
    # entity's edge must not continue a word of the text there.
    self._trie: dict = {}
    for entity in self.entities:
      node = self._trie
      for ch in self._fold(entity):
        node = node.setdefault(ch, {})
      node[_END] = (bool(re.match(r"\w", entity, re.ASCII)), bool(re.search(r"\w$", entity, re.ASCII)))

  @staticmethod
  def _read(path: str) -> list[str]:
    entities = []
    with open(path, "rb") as f:
      for number, raw in enumerate(f, 1):
        try:
          line = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as e:
          raise ValueError(f"{path}, line {number}: not UTF-8 ({e.reason} at byte {e.start}); the entity list "
                           f"must be UTF-8 text, one entity per line") from None
        if not line.strip() or line.lstrip().startswith("#"):
          continue
        fields = line.split("\t")
        if len(fields) > 2 or not fields[0].strip():
          raise ValueError(f"{path}, line {number}: {line!r} is not ENTITY or ENTITY<TAB>TYPE (one entity per "
                           f"line; '#' starts a comment)")
        entities.append(fields[0].strip())
    return sorted(set(entities))

  def find(self, text: str) -> list[tuple[int, int]]:
    """Spans of the mentions, left to right without overlaps, the longest entity that matches at each start."""
    folded, spans, start, n = self._fold(text), [], 0, len(text)
    while start < n:
      node, end, longest = self._trie.get(folded[start]), start, 0
      while node is not None:
        end += 1
        edges = node.get(_END)
        if edges is not None and not (edges[0] and start > 0 and _is_word_char(text[start - 1])) and not (
            edges[1] and end < n and _is_word_char(text[end])):
          longest = end
        node = node.get(folded[end]) if end < n else None
      if longest:
        spans.append((start, longest))
        start = longest
      else:
        start += 1
    return spans


@functools.lru_cache(maxsize=8)
def load_entities(path: str, lower_case: bool = False) -> EntityList:
  return EntityList(path, lower_case)
