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
  * num_to_predict = min(max_predictions, max(1, round(n * masked_lm_prob))), where n counts the
    maskable (non-[CLS]/[SEP]) tokens (google-research/bert uses the length including the three
    special tokens, which over-masks short sequences); each chosen token becomes [MASK] 80%,
    a random non-special token 10%, itself 10%. Whole-word masking picks whole words.
  * mode "full_sentences" (RoBERTa): no NSP; sentences are packed up to max_seq_length - 2,
    crossing document boundaries with an extra [SEP].
  * mode "sop" (ALBERT sentence-order prediction): segments accumulate as for NSP and A is a random prefix of
    them, but B is always the rest of the same chunk, i.e. the real continuation; with probability 0.5 A and B
    are swapped. next_sentence_labels: 0 = original order, 1 = swapped (HF AlbertForPreTraining's
    sentence_order_label). A chunk of a single segment (a one-sentence document, or a document's lone last
    sentence) is split inside that segment at a random token, A before it and B after; a one-token segment
    gives no instance. (google-research/albert instead gives such chunks a B from a random document,
    labelled 1 like a swap, which mixes topic prediction back into SOP.) Truncation cuts A from the front and
    B from the back, so that A+B stays one contiguous run of the document.
  * n-gram masking (ALBERT; max_ngram > 1): see ngram_spans.
The random-next document comes from the bounded buffer of documents the caller passes in.
"""

import dataclasses

import numpy as np

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

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"mode {self.mode!r} is not one of {MODES}")
    if self.max_ngram < 1:
      raise ValueError(f"max_ngram must be >= 1 (1: no n-gram masking; ALBERT uses 3), got {self.max_ngram}")
    if self.max_seq_length < 8:
      raise ValueError(f"max_seq_length must be >= 8, got {self.max_seq_length}")
    if not 0 < self.masked_lm_prob < 1:
      raise ValueError(f"masked_lm_prob must be in (0, 1), got {self.masked_lm_prob}")


@dataclasses.dataclass(frozen=True)
class VocabIds:
  """What masking needs from a vocabulary."""
  cls_id: int
  sep_id: int
  mask_id: int
  normal_ids: np.ndarray        # ids random replacement may pick
  word_start: np.ndarray        # bool[vocab]

  @classmethod
  def from_tokenizer(cls, tok) -> "VocabIds":
    return cls(tok.cls_id, tok.sep_id, tok.mask_id, tok.normal_ids, tok.word_start_table())


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
      seg = seg[:max_tokens]
      if len(row) + len(seg) > max_tokens:
        if row:
          yield row
        row = []
      row.extend(seg)
    if row and len(row) < max_tokens:
      row.append(sep_id)  # document boundary
  if row:
    yield row


def _candidate_groups(tokens: np.ndarray, vocab: VocabIds, whole_word: bool) -> list[np.ndarray]:
  maskable = (tokens != vocab.cls_id) & (tokens != vocab.sep_id)
  idx = np.flatnonzero(maskable)
  if not whole_word:
    return [idx[i:i + 1] for i in range(len(idx))]
  groups: list[list[int]] = []
  for i in idx:
    if groups and not vocab.word_start[tokens[i]] and groups[-1][-1] == i - 1:
      groups[-1].append(int(i))
    else:
      groups.append([int(i)])
  return [np.array(g) for g in groups]


def num_to_predict(num_maskable: int, opts: InstanceOptions) -> int:
  return min(opts.max_predictions_per_seq, max(1, int(round(num_maskable * opts.masked_lm_prob))))


def ngram_probs(max_ngram: int) -> np.ndarray:
  """p(k) for k = 1..max_ngram, proportional to 1/k (ALBERT's default, favouring short n-grams)."""
  p = 1.0 / np.arange(1, max_ngram + 1)
  return p / p.sum()


def draw_ngram_lengths(rng: np.random.Generator, max_ngram: int, size: int) -> np.ndarray:
  """int64[size] n-gram lengths drawn from ngram_probs(max_ngram)."""
  return rng.choice(np.arange(1, max_ngram + 1), size=size, p=ngram_probs(max_ngram))


def ngram_tiling(units: list[np.ndarray], max_ngram: int, rng: np.random.Generator) -> list[list[np.ndarray]]:
  """Cuts runs of adjacent candidate units into n-grams of k units, k drawn from ngram_probs(max_ngram).

  Units are adjacent when no [CLS]/[SEP] lies between them; a run's last n-gram is cut short at its end,
  so no n-gram crosses [CLS]/[SEP]. Returns the n-grams (lists of units) in position order.
  """
  lengths = draw_ngram_lengths(rng, max_ngram, len(units))
  grams: list[list[np.ndarray]] = []
  start = 0
  while start < len(units):
    gram = [units[start]]
    while (len(gram) < lengths[len(grams)] and start + len(gram) < len(units)
           and units[start + len(gram)][0] == gram[-1][-1] + 1):
      gram.append(units[start + len(gram)])
    grams.append(gram)
    start += len(gram)
  return grams


def ngram_spans(tokens: np.ndarray, opts: InstanceOptions, vocab: VocabIds, rng: np.random.Generator
                ) -> list[np.ndarray]:
  """The spans n-gram masking predicts, in the order chosen: each an array of token positions.

  The candidate units (words under whole-word masking, else tokens) are cut into n-grams (ngram_tiling),
  which are taken in random order until num_to_predict tokens are chosen; the n-gram that would pass that
  count keeps only its leading units that fit (ALBERT falls back to a shorter n-gram the same way), and
  under whole-word masking a word that does not fit is left out and later n-grams may still fill the
  count. Every n-gram is equally likely to be taken, so the spans follow p(k) ~ 1/k, except where a run
  ends ([CLS]/[SEP]) and the budget-cut span (in words, spans lean shorter: an n-gram of many tokens is
  the one most often cut to fit). Spans never overlap, but two may touch.
  """
  units = _candidate_groups(tokens, vocab, opts.whole_word_masking)
  budget = num_to_predict(sum(len(u) for u in units), opts)
  grams = ngram_tiling(units, opts.max_ngram, rng)
  spans, count = [], 0
  for g in rng.permutation(len(grams)):
    taken = []
    for unit in grams[g]:
      if count + len(unit) > budget:
        break
      taken.append(unit)
      count += len(unit)
    if taken:
      spans.append(np.concatenate(taken))
    if count >= budget:
      break
  return spans


def mask_tokens(tokens: np.ndarray, opts: InstanceOptions, vocab: VocabIds, rng: np.random.Generator):
  """Returns (masked input ids, sorted positions, original ids at those positions)."""
  if opts.max_ngram > 1:
    spans = ngram_spans(tokens, opts, vocab, rng)
    chosen = np.concatenate(spans).tolist() if spans else []
  else:
    groups = _candidate_groups(tokens, vocab, opts.whole_word_masking)
    budget = num_to_predict(sum(len(g) for g in groups), opts)
    chosen: list[int] = []
    for g in rng.permutation(len(groups)):
      if len(chosen) >= budget:
        break
      if len(chosen) + len(groups[g]) > budget:
        continue
      chosen.extend(groups[g].tolist())
  positions = np.sort(np.array(chosen, np.int64))
  labels = tokens[positions]
  u = rng.random(len(positions))
  masked = tokens.copy()
  masked[positions[u < 0.8]] = vocab.mask_id
  random_pick = (u >= 0.8) & (u < 0.9)
  masked[positions[random_pick]] = rng.choice(vocab.normal_ids, int(random_pick.sum()))
  return masked, positions, labels


def _features(tokens, segment_ids, is_random_next, opts, vocab, rng) -> dict:
  tokens = np.asarray(tokens, np.int64)
  masked, positions, labels = mask_tokens(tokens, opts, vocab, rng)
  seq, pred = opts.max_seq_length, opts.max_predictions_per_seq
  out = {k: np.zeros(seq, np.int64) for k in ("input_ids", "input_mask", "segment_ids")}
  out["input_ids"][:len(tokens)] = masked
  out["input_mask"][:len(tokens)] = 1
  out["segment_ids"][:len(tokens)] = segment_ids
  out["masked_lm_positions"] = np.zeros(pred, np.int64)
  out["masked_lm_positions"][:len(positions)] = positions
  out["masked_lm_ids"] = np.zeros(pred, np.int64)
  out["masked_lm_ids"][:len(labels)] = labels
  out["masked_lm_weights"] = np.zeros(pred, np.float32)
  out["masked_lm_weights"][:len(labels)] = 1.0
  out["next_sentence_labels"] = np.array([int(is_random_next)], np.int64)
  return out


def create_instances(docs: list[list[list[int]]], opts: InstanceOptions, vocab: VocabIds,
                     rng: np.random.Generator) -> dict[str, np.ndarray]:
  """All instances (dupe_factor passes, shuffled) from a buffer of tokenized documents.

  Returns a dict of FEATURES, each stacked on a leading instance axis (0 rows if none).
  """
  docs = [[list(seg) for seg in doc if len(seg)] for doc in docs]
  docs = [d for d in docs if d]
  rows = []
  balance = _NspBalance()
  for _ in range(opts.dupe_factor):
    if opts.mode == "full_sentences":
      for row in _full_sentence_rows(docs, opts, vocab.sep_id):
        rows.append(_features([vocab.cls_id] + row + [vocab.sep_id], 0, False, opts, vocab, rng))
      continue
    for d in range(len(docs)):
      pairs = _sop_pairs(docs[d], opts, rng) if opts.mode == "sop" else _nsp_pairs(d, docs, opts, rng, balance)
      for a, b, is_random_next in pairs:
        tokens = [vocab.cls_id] + a + [vocab.sep_id] + b + [vocab.sep_id]
        segment_ids = np.array([0] * (len(a) + 2) + [1] * (len(b) + 1))
        rows.append(_features(tokens, segment_ids, is_random_next, opts, vocab, rng))
  order = rng.permutation(len(rows))
  if not rows:
    return empty_features(opts)
  return {k: np.stack([rows[i][k] for i in order]) for k in FEATURES}


def empty_features(opts: InstanceOptions) -> dict[str, np.ndarray]:
  seq, pred = opts.max_seq_length, opts.max_predictions_per_seq
  shapes = dict(input_ids=seq, input_mask=seq, segment_ids=seq, masked_lm_positions=pred, masked_lm_ids=pred,
                masked_lm_weights=pred, next_sentence_labels=1)
  return {k: np.zeros((0, n), np.float32 if k == "masked_lm_weights" else np.int64) for k, n in shapes.items()}
