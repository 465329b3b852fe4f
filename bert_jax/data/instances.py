"""Documents of token ids -> NSP pairs (or packed full sentences) -> masked-LM instances.

Follows google-research/bert's create_pretraining_data.py, written anew with numpy:
  * target length = max_seq_length - 3, or with prob short_seq_prob a random length in [2, that];
  * segments accumulate to the target (at least two while the document has them: google-research/bert
    closes a chunk on one long segment and then must use a random B, which pushes random-next well
    above 50%); A takes a random prefix of them; B is the rest (label 0), or a span of a random other
    document from the buffer (label 1), whose unused segments are put back. B must be random when
    there is no real next segment (a one-sentence document, as in google-research/bert); the other
    pairs are random with the probability that keeps the overall fraction at 50% (_NspBalance);
  * truncate_seq_pair trims the longer side, from the front or back at random;
  * masking (which positions, what replaces them; modes token / ngram / span / knowledge) is masking.py's,
    shared with the dynamic input paths. num_to_predict counts the maskable (non-[CLS]/[SEP]) tokens
    (google-research/bert uses the length including the three special tokens, which over-masks short
    sequences).
  * mode "full_sentences" (RoBERTa): no NSP; sentences are packed up to max_seq_length - 2,
    crossing document boundaries with an extra [SEP]; a sentence longer than that fills rows of its own, in order.
  * mode "sop" (ALBERT sentence-order prediction): segments accumulate as for NSP and A is a random prefix of
    them, but B is always the rest of the same chunk, i.e. the real continuation; with probability 0.5 A and B
    are swapped. next_sentence_labels: 0 = original order, 1 = swapped (HF AlbertForPreTraining's
    sentence_order_label). A chunk of a single segment (a one-sentence document, or a document's lone last
    sentence) is split inside that segment at a random token, A before it and B after; a one-token segment
    gives no instance. (google-research/albert instead gives such chunks a B from a random document,
    labelled 1 like a swap, which mixes topic prediction back into SOP.) Truncation cuts A from the front and
    B from the back, so that A+B stays one contiguous run of the document.
  * span masking (SpanBERT) needs single contiguous segments: mode full_sentences.
The random-next document comes from the bounded buffer of documents the caller passes in.
Where the masking needs unit bits the ids cannot tell (masking.MaskingOptions.unit_feature: a segmenter, or
knowledge masking), the documents hold token keys (masking.pack_units) instead of ids, and the instances get
the masking.UNIT_FEATURE feature.
"""

import dataclasses

import numpy as np

from bert_jax.data import masking
from bert_jax.data.masking import BERT_REPLACEMENT  # the field `masking` hides the module in the class body
from bert_jax.data.masking import VocabIds  # noqa: F401  (callers build instances with it)

FEATURES = ("input_ids", "input_mask", "segment_ids", "masked_lm_positions", "masked_lm_ids",
            "masked_lm_weights", "next_sentence_labels")
MODES = ("nsp", "sop", "full_sentences")


@dataclasses.dataclass(frozen=True)
class InstanceOptions:
  max_seq_length: int = 128
  max_predictions_per_seq: int = 20
  masked_lm_prob: float = 0.15
  short_seq_prob: float = 0.1
  dupe_factor: int = 5
  whole_word_masking: bool = False
  mode: str = "nsp"
  max_ngram: int = 1            # mask spans of up to this many units (words or tokens), p(k) ~ 1/k
  masking: str = "token"        # token | ngram | span | knowledge (masking.py; the rest of its fields below)
  span_geometric_p: float = 0.2
  max_span_length: int = 10
  knowledge_mix: str = "token:0.4,phrase:0.3,entity:0.3"
  segmenter: str = ""
  entity_file: str = ""
  phrase_chunker: str = ""
  replacement: str = BERT_REPLACEMENT  # what masked positions show: [MASK], a random token, or themselves

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"mode {self.mode!r} is not one of {MODES}")
    if self.max_seq_length < 8:
      raise ValueError(f"max_seq_length must be >= 8, got {self.max_seq_length}")
    if self.masking_options.mode == "span" and self.mode != "full_sentences":
      raise ValueError(f"span masking (SpanBERT) trains on single contiguous segments without a sentence task, "
                       f"but mode is {self.mode!r}: set mode full_sentences (--mode / data.mode) and the "
                       f"objective to mlm or the span objective")

  @property
  def masking_options(self) -> "masking.MaskingOptions":
    return masking.MaskingOptions(
        mode=self.masking, masked_lm_prob=self.masked_lm_prob, max_predictions_per_seq=self.max_predictions_per_seq,
        whole_word_masking=self.whole_word_masking, max_ngram=self.max_ngram,
        span_geometric_p=self.span_geometric_p, max_span_length=self.max_span_length,
        knowledge_mix=self.knowledge_mix, segmenter=self.segmenter, entity_file=self.entity_file,
        phrase_chunker=self.phrase_chunker, replacement=self.replacement)


def truncate_seq_pair(tokens_a: list, tokens_b: list, max_num_tokens: int, rng: np.random.Generator):
  while len(tokens_a) + len(tokens_b) > max_num_tokens:
    longer = tokens_a if len(tokens_a) > len(tokens_b) else tokens_b
    if rng.random() < 0.5:
      del longer[0]
    else:
      longer.pop()


class _NspBalance:
  """Keeps the random-next fraction at 50%. Pairs with no real next segment (one-sentence documents,
  a lone final sentence) must be random; the free choices compensate with probability
  (0.5 - f) / (1 - f), f being the forced fraction so far."""

  def __init__(self):
    self.forced = self.total = 0

  def choose_random(self, forced: bool, rng) -> bool:
    self.total += 1
    if forced:
      self.forced += 1
      return True
    f = self.forced / self.total
    return rng.random() < max(0.0, (0.5 - f) / (1.0 - f))


def _nsp_pairs(doc_index: int, docs: list[list[list[int]]], opts: InstanceOptions, rng, balance: _NspBalance):
  """Yields (tokens_a, tokens_b, is_random_next) for one document of the buffer."""
  document = docs[doc_index]
  max_num_tokens = opts.max_seq_length - 3
  target = max_num_tokens
  if rng.random() < opts.short_seq_prob:
    target = int(rng.integers(2, max_num_tokens + 1))
  chunk, length, i = [], 0, 0
  while i < len(document):
    chunk.append(document[i])
    length += len(document[i])
    last = i == len(document) - 1
    # A lone segment that reached the target takes one more when the document has it, so that B can
    # be the real next segment; otherwise NSP would be biased towards random-next.
    if last or (length >= target and len(chunk) >= 2):
      a_end = int(rng.integers(1, len(chunk))) if len(chunk) >= 2 else 1
      tokens_a = [t for seg in chunk[:a_end] for t in seg]
      tokens_b = []
      is_random_next = balance.choose_random(len(chunk) == 1, rng)
      if is_random_next:
        target_b = target - len(tokens_a)
        other = doc_index
        for _ in range(10):
          other = int(rng.integers(0, len(docs)))
          if other != doc_index:
            break
        random_doc = docs[other]
        for seg in random_doc[int(rng.integers(0, len(random_doc))):]:
          tokens_b.extend(seg)
          if len(tokens_b) >= target_b:
            break
        i -= len(chunk) - a_end  # put the unused segments back
      else:
        tokens_b = [t for seg in chunk[a_end:] for t in seg]
      truncate_seq_pair(tokens_a, tokens_b, max_num_tokens, rng)
      if tokens_a and tokens_b:
        yield tokens_a, tokens_b, is_random_next
      chunk, length = [], 0
    i += 1


def _truncate_outer(tokens_a: list, tokens_b: list, max_num_tokens: int):
  """Trims the longer side at its outer end (A's front, B's back), keeping A+B contiguous."""
  while len(tokens_a) + len(tokens_b) > max_num_tokens:
    if len(tokens_a) > len(tokens_b):
      del tokens_a[0]
    else:
      tokens_b.pop()


def _sop_pairs(document: list[list[int]], opts: InstanceOptions, rng):
  """Yields (tokens_a, tokens_b, swapped) for one document: B is always A's real continuation."""
  max_num_tokens = opts.max_seq_length - 3
  target = max_num_tokens
  if rng.random() < opts.short_seq_prob:
    target = int(rng.integers(2, max_num_tokens + 1))
  chunk, length = [], 0
  for i, segment in enumerate(document):
    chunk.append(segment)
    length += len(segment)
    if i == len(document) - 1 or (length >= target and len(chunk) >= 2):
      if len(chunk) >= 2:
        a_end = int(rng.integers(1, len(chunk)))
        tokens_a = [t for seg in chunk[:a_end] for t in seg]
        tokens_b = [t for seg in chunk[a_end:] for t in seg]
      elif len(chunk[0]) >= 2:  # one segment: split it inside
        split = int(rng.integers(1, len(chunk[0])))
        tokens_a, tokens_b = list(chunk[0][:split]), list(chunk[0][split:])
      else:
        chunk, length = [], 0
        continue
      _truncate_outer(tokens_a, tokens_b, max_num_tokens)
      swapped = bool(rng.random() < 0.5)
      yield (tokens_b, tokens_a, True) if swapped else (tokens_a, tokens_b, False)
      chunk, length = [], 0


def _full_sentence_rows(docs: list[list[list[int]]], opts: InstanceOptions, sep_id: int):
  max_tokens = opts.max_seq_length - 2
  row: list[int] = []
  for doc in docs:
    for seg in doc:
      # A segment longer than a row (a long line, no sentence splitter) goes on over the next rows: cutting it
      # would silently lose the rest of its text.
      for start in range(0, len(seg), max_tokens):
        piece = seg[start:start + max_tokens]
        if len(row) + len(piece) > max_tokens:
          if row:
            yield row
          row = []
        row.extend(piece)
    if row and len(row) < max_tokens:
      row.append(sep_id)  # document boundary
  if row:
    yield row


def _features(tokens, segment_ids, is_random_next, opts, vocab, rng, masking_opts) -> dict:
  tokens, unit_bits = np.asarray(tokens, np.int64), None
  if masking_opts.unit_feature:
    tokens, unit_bits = masking.unpack_units(tokens)
  masked, positions, labels = masking.mask_numpy(tokens, unit_bits, masking_opts, vocab, rng)
  seq, pred = opts.max_seq_length, opts.max_predictions_per_seq
  out = {k: np.zeros(seq, np.int64) for k in ("input_ids", "input_mask", "segment_ids")}
  if unit_bits is not None:
    out[masking.UNIT_FEATURE] = np.zeros(seq, np.int64)
    out[masking.UNIT_FEATURE][:len(tokens)] = unit_bits
  out["input_ids"][:len(tokens)] = masked
  out["input_mask"][:len(tokens)] = 1
  out["segment_ids"][:len(tokens)] = segment_ids
  out.update(masking.padded_predictions(positions, labels, pred))
  out["next_sentence_labels"] = np.array([int(is_random_next)], np.int64)
  return out


def create_instance_passes(docs: list[list[list[int]]], opts: InstanceOptions, vocab: VocabIds,
                           rng: np.random.Generator) -> list[dict[str, np.ndarray]]:
  """The instances of each of the dupe_factor passes over a buffer of tokenized documents, each pass shuffled.

  Returns one dict per pass of FEATURES (and masking.UNIT_FEATURE where the masking needs it), each stacked on a
  leading instance axis (0 rows if none). With that feature, docs hold token keys (masking.pack_units). The
  passes stay apart so that a writer can put a document's copies far from each other (prepare.py).
  """
  masking_opts = opts.masking_options
  docs = [[list(seg) for seg in doc if len(seg)] for doc in docs]
  docs = [d for d in docs if d]
  passes = []
  balance = _NspBalance()
  # With unit bits, [CLS]/[SEP] are keys too (bits 0).
  cls_key, sep_key = ((vocab.cls_id << masking.UNIT_BITS, vocab.sep_id << masking.UNIT_BITS)
                      if masking_opts.unit_feature else (vocab.cls_id, vocab.sep_id))
  for _ in range(opts.dupe_factor):
    rows = []
    passes.append(rows)
    if opts.mode == "full_sentences":
      for row in _full_sentence_rows(docs, opts, sep_key):
        rows.append(_features([cls_key] + row + [sep_key], 0, False, opts, vocab, rng, masking_opts))
      continue
    for d in range(len(docs)):
      pairs = _sop_pairs(docs[d], opts, rng) if opts.mode == "sop" else _nsp_pairs(d, docs, opts, rng, balance)
      for a, b, is_random_next in pairs:
        tokens = [cls_key] + a + [sep_key] + b + [sep_key]
        segment_ids = np.array([0] * (len(a) + 2) + [1] * (len(b) + 1))
        rows.append(_features(tokens, segment_ids, is_random_next, opts, vocab, rng, masking_opts))
  return [_stacked([rows[i] for i in rng.permutation(len(rows))], opts) for rows in passes]


def create_instances(docs: list[list[list[int]]], opts: InstanceOptions, vocab: VocabIds,
                     rng: np.random.Generator) -> dict[str, np.ndarray]:
  """All instances of create_instance_passes, pass after pass, stacked as one dict of features."""
  return concatenate(create_instance_passes(docs, opts, vocab, rng), opts)


def concatenate(parts: list[dict[str, np.ndarray]], opts: InstanceOptions) -> dict[str, np.ndarray]:
  """Stacked features of several parts (passes, chunks) -> one dict, rows in order."""
  parts = [p for p in parts if len(p["input_ids"])]
  if not parts:
    return empty_features(opts)
  return {k: np.concatenate([p[k] for p in parts]) for k in feature_names(opts)}


def _stacked(rows: list[dict], opts: InstanceOptions) -> dict[str, np.ndarray]:
  if not rows:
    return empty_features(opts)
  return {k: np.stack([row[k] for row in rows]) for k in feature_names(opts)}


def feature_names(opts: InstanceOptions) -> tuple[str, ...]:
  return FEATURES + ((masking.UNIT_FEATURE,) if opts.masking_options.unit_feature else ())


def empty_features(opts: InstanceOptions) -> dict[str, np.ndarray]:
  seq, pred = opts.max_seq_length, opts.max_predictions_per_seq
  shapes = dict(input_ids=seq, input_mask=seq, segment_ids=seq, masked_lm_positions=pred, masked_lm_ids=pred,
                masked_lm_weights=pred, next_sentence_labels=1)
  if opts.masking_options.unit_feature:
    shapes[masking.UNIT_FEATURE] = seq
  return {k: np.zeros((0, n), np.float32 if k == "masked_lm_weights" else np.int64) for k, n in shapes.items()}
