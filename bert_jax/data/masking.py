"""Masked-LM masking, once: which positions an instance predicts and what the model sees there.

Two implementations of one algorithm, side by side: numpy (`mask_numpy`: prepare's static masking and the
Grain dynamic path) and tf.data (`tf_remask_fn`: the TFRecord dynamic path). They share the options
(MaskingOptions), the vocabulary facts (VocabIds), the unit rule and the length laws; they draw different
random numbers, so their masks differ while their statistics agree (tests/test_masking.py checks both with
one statistical check).

The algorithm, for the tokens of one instance:
  1. Maskable positions: everything but [CLS] and [SEP] (and padding).
  2. Units: runs of maskable positions that are masked together. A unit starts at a maskable position whose
     unit bit is set, or right after an unmaskable one. The unit bit is
       * every token (mode token/ngram without whole-word masking; knowledge's token level without it);
       * a word start (whole-word masking, and always in span mode): the vocabulary's word-start table
         ('##' pieces continue a word), or, when the records carry the UNIT_FEATURE, its WORD_BIT: there a
         segmenter (Chinese: jieba) decided the words, which ids alone cannot tell;
       * knowledge mode's phrase and entity levels: PHRASE_BIT / ENTITY_BIT of the UNIT_FEATURE.
  3. Tiles: units grouped into what is chosen together.
       token, knowledge  one unit per tile;
       ngram (ALBERT)    k units, k ~ 1/k up to max_ngram, from the start of each run of adjacent units;
       span (SpanBERT)   L words, L ~ Geometric(span_geometric_p) clipped at max_span_length, followed by one
                         gap word that is never masked, so two spans never touch (SpanBERT merges touching
                         spans, so its span boundary objective sees them as one; here every span keeps an
                         unmasked word on each side that lies inside the sequence).
     A tile never crosses [CLS]/[SEP]; a run's last tile is cut short at its end.
  4. Tiles are taken in random order, their units in order, until num_to_predict
     = min(max_predictions, max(1, round(maskable * masked_lm_prob))) positions are chosen. A unit that would
     pass the count is left out with the rest of its tile (which keeps its leading units), and later tiles
     may still fill the count. So units are never partly masked, and spans stay contiguous. Span mode stops
     at the first cut instead, as SpanBERT places spans until the count and cuts the last one: filling the
     rest with the leading words of more tiles would make the last spans short and pull the mean span length
     from 3.8 words to ~3.5. Its count may so end up to a word short (tests/test_masking.py: 14.0%
     of the tokens on rows of 24-128 tokens; on 510-token rows the spans average 3.7 words). It stops only once
     it has taken something, though: a cut in the first span's first word moves on to the next span; where no
     span's first word fits the count, it takes one whole word, the first listed that fits, or where none does
     (a short row of long words) the first span's first word, up to max_predictions tokens and so past the
     count. A row with maskable tokens so always has a prediction. (Whole-word token/ngram modes leave such a
     row without one, as BERT's whole-word masking does.) Computed
     without a loop over units: list the tiles' positions in order, take the prefix that fits the count,
     drop the unit it cuts through and close that tile; repeat while a unit was cut (a few passes).
  5. Replacement (data.replacement): BERT's [MASK] 80%, a random non-special token 10%, unchanged 10%
     (google-research/electra: [MASK] 85%, unchanged 15%): per token, except span mode, where one draw
     decides for the whole span (SpanBERT).

Mode knowledge (ERNIE 1.0) picks one level per instance (token, phrase or entity, by knowledge_mix) and masks
that level's units. ERNIE's paper applies the levels as successive training stages; its released reader
(PaddlePaddle ERNIE 1.0, batching.mask with per-instance mask_word tags) mixes word-unit and character
masking per instance, which is what the mixture does here, with the proportions as configuration.

How this differs from the code it replaces (instances.mask_tokens, pipeline._dynamic_mask):
  * token and ngram modes give the same numpy output for the same seed as before (same draws in the same
    order, the same choice rule), with or without whole-word masking;
  * the tf.data path now honours whole words (it masked tokens only), and treats [UNK]/[MASK]/[PAD] ids
    inside the text as maskable, as the numpy path always did.
"""

import dataclasses
import functools
import math

import numpy as np

MODES = ("token", "ngram", "span", "knowledge")
LEVELS = ("token", "phrase", "entity")                  # knowledge masking's levels
UNIT_FEATURE = "mask_unit_start"                        # optional int64[max_seq_length] record feature
WORD_BIT, PHRASE_BIT, ENTITY_BIT = 1, 2, 4              # its bits: a unit of that level starts here
LEVEL_BITS = (WORD_BIT, PHRASE_BIT, ENTITY_BIT)         # in LEVELS order
UNIT_BITS = 3                                           # bits a packed token key keeps for the unit bits
REPLACEMENTS = ("mask", "random", "keep")              # what a chosen position shows: [MASK], a random token, itself
BERT_REPLACEMENT = "mask:0.8,random:0.1,keep:0.1"      # BERT's 80/10/10 (google-research/electra: mask:0.85,keep:0.15)


def _parse_weights(text: str, names: tuple[str, ...], field: str, kind: str, example: str) -> tuple[float, ...]:
  """'a:0.4,b:0.6' -> weights in `names` order (names left out get 0), checked to be >= 0 and sum to 1."""
  weights = dict.fromkeys(names, 0.0)
  for part in (p.strip() for p in text.split(",") if p.strip()):
    name, sep, value = part.partition(":")
    try:
      weight = float(value)
    except ValueError:
      weight = -1.0
    if not sep or name.strip() not in weights or weight < 0:
      raise ValueError(f"{field.split('.')[-1]} {text!r}: {part!r} is not {kind}:WEIGHT with {kind} one of {names} "
                       f"and WEIGHT >= 0 (e.g. {field}='{example}')")
    weights[name.strip()] = weight
  total = sum(weights.values())
  if abs(total - 1.0) > 1e-6:
    raise ValueError(f"{field.split('.')[-1]} {text!r}: the weights sum to {total:g}, not 1 ({field})")
  return tuple(weights[name] for name in names)


def parse_knowledge_mix(text: str) -> tuple[float, ...]:
  """'token:0.4,phrase:0.3,entity:0.3' -> probabilities in LEVELS order (levels left out get 0)."""
  return _parse_weights(text, LEVELS, "data.knowledge_mix", "LEVEL", "token:0.4,phrase:0.3,entity:0.3")


def parse_replacement(text: str) -> tuple[float, ...]:
  """'mask:0.8,random:0.1,keep:0.1' -> probabilities in REPLACEMENTS order (kinds left out get 0)."""
  return _parse_weights(text, REPLACEMENTS, "data.replacement", "KIND", BERT_REPLACEMENT)


def geometric_span_probs(p: float, max_length: int) -> np.ndarray:
  """p(L) for L = 1..max_length: Geometric(p) clipped at max_length and renormalised (SpanBERT: 0.2, 10)."""
  lengths = np.arange(1, max_length + 1)
  law = p * (1 - p) ** (lengths - 1)
  return law / law.sum()


def ngram_probs(max_ngram: int) -> np.ndarray:
  """p(k) for k = 1..max_ngram, proportional to 1/k (ALBERT's default, favouring short n-grams)."""
  p = 1.0 / np.arange(1, max_ngram + 1)
  return p / p.sum()


@dataclasses.dataclass(frozen=True)
class MaskingOptions:
  """How instances are masked (config: data.masking and the fields named below)."""
  mode: str = "token"                   # data.masking: token | ngram | span | knowledge
  masked_lm_prob: float = 0.15
  max_predictions_per_seq: int = 20
  whole_word_masking: bool = False      # token/ngram (and knowledge's token level): units are whole words
  max_ngram: int = 1                    # ngram: up to this many units; token with max_ngram > 1 means ngram
  span_geometric_p: float = 0.2         # span: Geometric(p) span lengths in words
  max_span_length: int = 10             # span: clipped at this many words
  knowledge_mix: str = "token:0.4,phrase:0.3,entity:0.3"  # knowledge: level proportions per instance
  segmenter: str = ""                   # word boundaries from a segmenter (segmenters.py); '' the vocabulary's
  entity_file: str = ""                 # knowledge: entity list, one per line
  phrase_chunker: str = ""              # knowledge: phrase chunker (knowledge.py); '' the default
  replacement: str = BERT_REPLACEMENT   # what chosen positions show (per span in span mode): [MASK], random, kept

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"masking {self.mode!r} is not one of {MODES} (data.masking / --masking)")
    if self.max_ngram < 1:
      raise ValueError(f"max_ngram must be >= 1 (1: no n-gram masking; ALBERT uses 3), got {self.max_ngram}")
    if self.mode == "token" and self.max_ngram > 1:  # configs from before data.masking (albert_*) say n-grams so
      object.__setattr__(self, "mode", "ngram")
    if self.mode == "ngram" and self.max_ngram == 1:
      raise ValueError("masking 'ngram' needs max_ngram > 1 (data.max_ngram / --max_ngram; ALBERT uses 3)")
    if self.mode in ("span", "knowledge") and self.max_ngram > 1:
      raise ValueError(f"masking {self.mode!r} and max_ngram={self.max_ngram} contradict each other: n-grams "
                       f"belong to masking 'ngram'; set max_ngram=1")
    if not 0 < self.masked_lm_prob < 1:
      raise ValueError(f"masked_lm_prob must be in (0, 1), got {self.masked_lm_prob}")
    if not 0 < self.span_geometric_p <= 1:
      raise ValueError(f"span_geometric_p must be in (0, 1], got {self.span_geometric_p}")
    if self.max_span_length < 1:
      raise ValueError(f"max_span_length must be >= 1, got {self.max_span_length}")
    parse_replacement(self.replacement)
    probs = parse_knowledge_mix(self.knowledge_mix)
    if self.mode == "knowledge" and probs[LEVELS.index("entity")] > 0 and not self.entity_file:
      raise ValueError(f"knowledge_mix {self.knowledge_mix!r} masks entities, but no entity list is given: set "
                       f"data.entity_file (--entity_file; one entity per line), or give entity weight 0")

  @functools.cached_property  # parsed once: mask_numpy asks per instance
  def replacement_thresholds(self) -> tuple[float, float]:
    """(u below which a chosen position shows [MASK], u below which it shows a random token) for u ~ U[0, 1)."""
    mask, random, _ = parse_replacement(self.replacement)
    return mask, mask + random

  @property
  def level_probs(self) -> np.ndarray:
    return np.array(parse_knowledge_mix(self.knowledge_mix))

  @property
  def word_units(self) -> bool:
    """Whether the token-level units are words."""
    return self.whole_word_masking or self.mode == "span"

  @property
  def unit_feature(self) -> bool:
    """Whether the records carry UNIT_FEATURE: the units are not recoverable from the ids alone."""
    return bool(self.segmenter) or self.mode == "knowledge"

  @property
  def fill_after_cut(self) -> bool:
    """Whether later tiles may fill the count after a unit was cut (all but span: see step 4)."""
    return self.mode != "span"

  def tile_law(self) -> tuple[np.ndarray, int] | None:
    """(p over lengths 1..K, gap units after each tile) for ngram/span; None when a tile is one unit."""
    if self.mode == "ngram":
      return ngram_probs(self.max_ngram), 0
    if self.mode == "span":
      return geometric_span_probs(self.span_geometric_p, self.max_span_length), 1
    return None

  def settings(self) -> dict:
    """The manifest's record of the masking; check_settings compares a config's with it."""
    out = {"mode": self.mode, "masked_lm_prob": self.masked_lm_prob, "whole_word_masking": self.whole_word_masking,
           "max_ngram": self.max_ngram, "segmenter": self.segmenter, "unit_feature": self.unit_feature,
           "replacement": dict(zip(REPLACEMENTS, parse_replacement(self.replacement))),
           "replacement_per": "span" if self.mode == "span" else "token"}
    if self.mode == "ngram":
      out["ngram_probs"] = [round(float(p), 6) for p in ngram_probs(self.max_ngram)]
    if self.mode == "span":
      out.update(span_geometric_p=self.span_geometric_p, max_span_length=self.max_span_length)
    if self.mode == "knowledge":
      out.update(knowledge_mix=self.knowledge_mix, entity_file=self.entity_file,
                 phrase_chunker=self.phrase_chunker)
    return out


# What must agree between a dynamic-masking run and its data (the rest only describes the data).
CHECKED_SETTINGS = ("mode", "whole_word_masking", "max_ngram", "segmenter", "span_geometric_p", "max_span_length",
                    "knowledge_mix")


def check_settings(config: dict, data: dict | None, where: str = "data manifest") -> list[str]:
  """Problems (naming both values) where a dynamic-masking config differs from the data's masking."""
  if data is None:
    return []
  defaults = MaskingOptions().settings()
  if "mode" not in data:  # manifests from before data.masking: n-grams were max_ngram > 1
    data = {**data, "mode": "ngram" if data.get("max_ngram", 1) > 1 else "token"}
  problems = []
  for key in CHECKED_SETTINGS:
    if key not in config and key not in data:
      continue
    mine, theirs = config.get(key, defaults.get(key)), data.get(key, defaults.get(key))
    if mine != theirs:
      problems.append(f"masking {key}: config has {mine!r}, {where} has {theirs!r}")
  return problems


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


@dataclasses.dataclass(frozen=True)
class DynamicMasking:
  """Re-masking in the input pipeline (data.dynamic_masking): the options and the vocabulary's ids."""
  options: MaskingOptions
  vocab: VocabIds


def num_to_predict(num_maskable: int, opts) -> int:
  return min(opts.max_predictions_per_seq, max(1, int(round(num_maskable * opts.masked_lm_prob))))


# --- packed token keys: ids that carry their unit bits through instance building ---------------------------

def pack_units(ids, bits) -> list[int]:
  """Token keys id << UNIT_BITS | bits, so that the unit bits travel with the tokens they describe."""
  return [(int(i) << UNIT_BITS) | int(b) for i, b in zip(ids, bits)]


def unpack_units(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  keys = np.asarray(keys, np.int64)
  return keys >> UNIT_BITS, keys & ((1 << UNIT_BITS) - 1)


# --- numpy -------------------------------------------------------------------------------------------------

def unit_starts(tokens: np.ndarray, unit_bits: np.ndarray | None, opts: MaskingOptions, vocab: VocabIds,
                level: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """(maskable bool[n], unit start bool[n]) at level `level` (an index into LEVELS; 0 outside knowledge)."""
  maskable = (tokens != vocab.cls_id) & (tokens != vocab.sep_id)
  if level > 0:
    if unit_bits is None:
      raise ValueError(f"knowledge masking's {LEVELS[level]} level needs the records' {UNIT_FEATURE} feature")
    bit = unit_bits & LEVEL_BITS[level]
  elif not opts.word_units:
    bit = np.ones(len(tokens), bool)
  else:
    bit = (unit_bits & WORD_BIT) if unit_bits is not None else vocab.word_start[tokens]
  after_break = np.concatenate([[True], ~maskable[:-1]])
  return maskable, maskable & ((bit > 0) | after_break)


def _tiles(continues: np.ndarray, lengths: np.ndarray, gap: int) -> tuple[np.ndarray, np.ndarray]:
  """(tile of each unit, whether the unit is masked when its tile is taken): tile t holds lengths[t] units
  plus `gap` never-masked ones, and a new tile starts where a run of adjacent units breaks."""
  n = len(continues)
  tile_of, masked = np.empty(n, np.int64), np.ones(n, bool)
  tile, offset, length = -1, 0, 0
  for j in range(n):
    if tile < 0 or not continues[j] or offset >= length + gap:
      tile, offset = tile + 1, 0
      length = lengths[tile]
    tile_of[j] = tile
    masked[j] = offset < length
    offset += 1
  return tile_of, masked


def choose_numpy(tokens: np.ndarray, unit_bits: np.ndarray | None, opts: MaskingOptions, vocab: VocabIds,
                 rng: np.random.Generator) -> np.ndarray:
  """Sorted positions to predict (steps 1-4 of the module docstring)."""
  tiles = chosen_tiles(tokens, unit_bits, opts, vocab, rng)
  return np.sort(np.concatenate(tiles)) if tiles else np.zeros(0, np.int64)


def chosen_tiles(tokens: np.ndarray, unit_bits: np.ndarray | None, opts: MaskingOptions, vocab: VocabIds,
                 rng: np.random.Generator) -> list[np.ndarray]:
  """The positions choose_numpy takes, one array per tile (an n-gram, a span) in the order taken: the tiles
  masked spans are made of, before touching ones merge in the records."""
  level = int(rng.choice(len(LEVELS), p=opts.level_probs)) if opts.mode == "knowledge" else 0
  maskable, starts = unit_starts(tokens, unit_bits, opts, vocab, level)
  unit_of = np.cumsum(starts) - 1
  first = np.flatnonzero(starts)
  if not len(first):
    return []
  budget = num_to_predict(int(maskable.sum()), opts)
  law = opts.tile_law()
  if law is None:
    tile_of, candidate = np.arange(len(first)), np.ones(len(first), bool)
  else:
    probs, gap = law
    lengths = rng.choice(np.arange(1, len(probs) + 1), size=len(first), p=probs)
    continues = np.concatenate([[False], maskable[first[1:] - 1]])
    tile_of, candidate = _tiles(continues, lengths, gap)
  rank = np.empty(tile_of[-1] + 1, np.int64)
  rank[rng.permutation(len(rank))] = np.arange(len(rank))
  positions = np.flatnonzero(maskable)
  units = unit_of[positions]
  keep = candidate[units]
  positions, units = positions[keep], units[keep]
  in_order = np.argsort(rank[tile_of[units]] * len(tokens) + positions, kind="stable")
  positions, units = positions[in_order], units[in_order]
  size = np.bincount(units, minlength=len(first))
  tiles = tile_of[units]
  taken, open_tile, remaining = np.zeros(len(positions), bool), np.ones(len(rank), bool), budget
  while remaining > 0:  # one pass per unit the count cuts through (few)
    available = ~taken & open_tile[tiles]
    pick = available & (np.cumsum(available) <= remaining)
    count = np.bincount(units[pick], minlength=len(first))
    cut = pick & (count[units] < size[units])
    taken |= pick & ~cut
    remaining = budget - int(taken.sum())
    if not cut.any() or (not opts.fill_after_cut and taken.any()):  # span mode stops at a cut once it has a span
      break
    open_tile[tiles[cut]] = False
  if not opts.fill_after_cut and not taken.any() and len(positions):  # span: no span's first word fits
    word = units[np.argmax(size[units] <= budget)]  # the first listed word that fits the count, else the first
    taken = (units == word) & (np.cumsum(units == word) <= opts.max_predictions_per_seq)
  positions, tiles = positions[taken], tiles[taken]
  return np.split(positions, np.flatnonzero(np.diff(tiles)) + 1) if len(positions) else []


def span_ids(positions: np.ndarray) -> np.ndarray:
  """Index of the maximal run of consecutive positions each sorted position belongs to."""
  if not len(positions):
    return np.zeros(0, np.int64)
  return np.cumsum(np.concatenate([[1], np.diff(positions) > 1])) - 1


def mask_numpy(tokens: np.ndarray, unit_bits: np.ndarray | None, opts: MaskingOptions, vocab: VocabIds,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(masked input ids, sorted positions, original ids there) for one instance's real tokens."""
  tokens = np.asarray(tokens, np.int64)
  positions = choose_numpy(tokens, unit_bits, opts, vocab, rng)
  labels = tokens[positions]
  if opts.mode == "span":
    spans = span_ids(positions)
    u = rng.random(int(spans[-1]) + 1 if len(spans) else 0)[spans]
  else:
    u = rng.random(len(positions))
  masked = tokens.copy()
  to_mask, to_random = opts.replacement_thresholds
  masked[positions[u < to_mask]] = vocab.mask_id
  random_pick = (u >= to_mask) & (u < to_random)
  masked[positions[random_pick]] = rng.choice(vocab.normal_ids, int(random_pick.sum()))
  return masked, positions, labels


def padded_predictions(positions, labels, max_predictions: int, int_dtype=np.int64) -> dict[str, np.ndarray]:
  """masked_lm_positions / masked_lm_ids / masked_lm_weights padded with zeros to max_predictions."""
  out = {name: np.zeros(max_predictions, int_dtype) for name in ("masked_lm_positions", "masked_lm_ids")}
  out["masked_lm_positions"][:len(positions)] = positions
  out["masked_lm_ids"][:len(labels)] = labels
  out["masked_lm_weights"] = np.zeros(max_predictions, np.float32)
  out["masked_lm_weights"][:len(labels)] = 1.0
  return out


# --- tf.data -----------------------------------------------------------------------------------------------

def _shift_left(x, fill):
  import tensorflow as tf
  return tf.concat([x[1:], tf.fill([1], fill)], 0)


def _tile_starts(valid, continues, lengths, gap: int, cap: int):
  """bool[n]: the units where a tile starts, found without a loop over units.

  From the start of each run a tile covers min(length + gap, rest of the run) units, the next one starts
  after it (nxt). The starts reachable that way are marked by pointer doubling (log2(n) gathers)."""
  import tensorflow as tf
  n = int(valid.shape[0])
  at = tf.range(n, dtype=tf.int32)
  link = tf.cast(_shift_left(valid & continues, False), tf.int32)   # unit j + 1 follows j in its run
  avail, window = tf.cast(valid, tf.int32), tf.cast(valid, tf.int32)
  for d in range(1, cap):                                             # units left in the run, capped
    window = window * tf.concat([link[d - 1:], tf.zeros([min(d - 1, n)], tf.int32)], 0)
    avail += window
  nxt = tf.concat([tf.where(valid, at + tf.minimum(lengths + gap, avail), at), [n]], 0)
  starts = tf.cast(tf.concat([valid & ~continues, [False]], 0), tf.int32)
  for _ in range(math.ceil(math.log2(n + 1))):
    starts = tf.tensor_scatter_nd_max(starts, nxt[:, None], starts)
    nxt = tf.gather(nxt, nxt)
  return tf.cast(starts[:n], tf.bool) & valid


def tf_choose(ids, maskable, unit_bits, opts: MaskingOptions, word_start, seeds):
  """int32[m]: sorted positions to predict, steps 1-4 of the module docstring (one example, graph mode).

  ids/maskable/unit_bits: [seq]; unit_bits may be None; word_start: bool[vocab] constant; seeds: 3 seeds."""
  import tensorflow as tf
  seq = int(ids.shape[0])
  at = tf.range(seq, dtype=tf.int32)
  s_level, s_len, s_rank = seeds
  if opts.word_units:
    word = (unit_bits & WORD_BIT) > 0 if unit_bits is not None else tf.gather(word_start, ids)
  else:
    word = tf.ones([seq], tf.bool)
  bit = word
  if opts.mode == "knowledge":
    logits = tf.constant(np.log(np.maximum(opts.level_probs, 1e-30))[None], tf.float32)
    level = tf.cast(tf.random.stateless_categorical(logits, 1, s_level)[0, 0], tf.int32)
    level_bit = tf.gather(tf.constant(LEVEL_BITS, unit_bits.dtype), level)
    bit = tf.where(level > 0, (unit_bits & level_bit) > 0, word)
  after_break = tf.concat([[True], ~maskable[:-1]], 0)
  starts = maskable & (bit | after_break)
  unit_of = tf.maximum(tf.cumsum(tf.cast(starts, tf.int32)) - 1, 0)
  n_units = tf.reduce_sum(tf.cast(starts, tf.int32))
  valid = at < n_units                                                   # unit-indexed from here
  law = opts.tile_law()
  if law is None:
    tile_of, candidate = at, valid
  else:
    probs, gap = law
    continues = tf.pad(tf.boolean_mask(~after_break, starts), [[0, seq - n_units]])  # unit j joins j - 1's run
    logits = tf.constant(np.log(probs)[None], tf.float32)
    lengths = tf.cast(tf.random.stateless_categorical(logits, seq, s_len)[0], tf.int32) + 1
    tile_start = _tile_starts(valid, continues, lengths, gap, len(probs) + gap)
    tile_of = tf.maximum(tf.cumsum(tf.cast(tile_start, tf.int32)) - 1, 0)
    first_unit = tf.gather(tf.boolean_mask(at, tile_start), tile_of)
    candidate = valid & (at - first_unit < tf.gather(lengths, first_unit))
  rank = tf.argsort(tf.argsort(tf.random.stateless_uniform([seq], s_rank)))
  pos_candidate = maskable & tf.gather(candidate, unit_of)
  key = tf.where(pos_candidate, tf.gather(rank, tf.gather(tile_of, unit_of)) * seq + at, seq * seq + at)
  n = tf.reduce_sum(tf.cast(maskable, tf.int32))
  # float64, as num_to_predict: in float32, n * 0.15 lands just above k + 0.5 where Python's is k + 0.5 (n = 190:
  # 28.500002 rounds to 29, 28.5 to 28), so the two paths would mask different counts.
  budget = tf.minimum(opts.max_predictions_per_seq,
                      tf.maximum(1, tf.cast(tf.round(tf.cast(n, tf.float64) * opts.masked_lm_prob), tf.int32)))
  order = tf.argsort(key)                                        # positions listed tile by tile
  units = tf.gather(unit_of, order)
  tiles = tf.gather(tile_of, units)
  listed = tf.gather(pos_candidate, order)
  size = tf.math.unsorted_segment_sum(tf.cast(maskable, tf.int32), unit_of, seq)

  def one_pass(taken, open_tile, _):
    available = ~taken & listed & tf.gather(open_tile, tiles)
    remaining = budget - tf.reduce_sum(tf.cast(taken, tf.int32))
    pick = available & (tf.cumsum(tf.cast(available, tf.int32)) <= remaining)
    count = tf.math.unsorted_segment_sum(tf.cast(pick, tf.int32), units, seq)
    cut = pick & (tf.gather(count, units) < tf.gather(size, units))
    closed = tf.math.unsorted_segment_max(tf.cast(cut, tf.int32), tiles, seq) > 0
    taken = taken | (pick & ~cut)
    n_taken = tf.reduce_sum(tf.cast(taken, tf.int32))
    more = tf.reduce_any(cut) & (n_taken < budget) & tf.logical_or(opts.fill_after_cut, n_taken == 0)
    return taken, open_tile & ~closed, more

  taken, _, _ = tf.while_loop(lambda taken, open_tile, more: more, one_pass,
                              (tf.zeros([seq], tf.bool), tf.ones([seq], tf.bool), tf.constant(True)))
  if not opts.fill_after_cut:  # span: no span's first word fits; one whole word, as in chosen_tiles
    fits = listed & (tf.gather(size, units) <= budget)
    word = listed & tf.equal(units, tf.gather(units, tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)))
    word &= tf.cumsum(tf.cast(word, tf.int32)) <= opts.max_predictions_per_seq
    taken = tf.cond(tf.reduce_any(taken), lambda: taken, lambda: word)
  return tf.sort(tf.boolean_mask(order, taken))


def process_seed(seed: int, process_index: int) -> int:
  """The dynamic-masking seed of one process. Each process numbers its own example stream from 0, so masks keyed
  on (seed, position) alone would repeat on every process of a multi-host run. Process 0 keeps `seed` (single-host
  runs and their checkpoints mask as before); the others get a seed derived from both, in [0, 2**32) as Grain needs."""
  if process_index == 0:
    return seed
  return int(np.random.SeedSequence([seed % 2**64, process_index]).generate_state(1)[0])


def tf_remask_fn(masking: DynamicMasking, max_seq_length: int, max_predictions_per_seq: int, seed: int):
  """(counter, parsed example) -> the example re-masked: the recorded masks put back, then masked anew with
  stateless random numbers keyed by (seed, counter). Drops UNIT_FEATURE (it serves masking only)."""
  import tensorflow as tf
  opts, vocab = masking.options, masking.vocab
  seq, pred = max_seq_length, max_predictions_per_seq
  normal = tf.constant(np.asarray(vocab.normal_ids, np.int32))
  word_start = tf.constant(np.asarray(vocab.word_start, bool))

  def remask(counter, ex):
    ex = dict(ex)
    unit_bits = ex.pop(UNIT_FEATURE, None)
    if opts.unit_feature and unit_bits is None:
      raise ValueError(f"masking {opts.mode!r} with segmenter {opts.segmenter!r} needs the records' "
                       f"{UNIT_FEATURE} feature")
    s = tf.unstack(tf.random.experimental.stateless_split(tf.stack([tf.constant(seed, tf.int64), counter]), 6))
    real_pred = ex["masked_lm_weights"] > 0
    pos = tf.boolean_mask(ex["masked_lm_positions"], real_pred)
    ids = tf.tensor_scatter_nd_update(ex["input_ids"], pos[:, None], tf.boolean_mask(ex["masked_lm_ids"], real_pred))
    maskable = (ex["input_mask"] > 0) & (ids != vocab.cls_id) & (ids != vocab.sep_id)
    chosen = tf_choose(ids, maskable, unit_bits, opts, word_start, s[:3])
    k = tf.shape(chosen)[0]
    labels = tf.gather(ids, chosen)
    if opts.mode == "span":  # one draw per span: maximal runs of consecutive chosen positions
      breaks = tf.concat([[1], tf.cast(chosen[1:] - chosen[:-1] > 1, tf.int32)], 0)[:k]
      u = tf.gather(tf.random.stateless_uniform([seq], s[3]), tf.cumsum(breaks) - 1)
    else:
      u = tf.random.stateless_uniform([k], s[3])
    random_ids = tf.gather(normal, tf.random.stateless_uniform([k], s[4], 0, tf.shape(normal)[0], tf.int32))
    to_mask, to_random = opts.replacement_thresholds
    replacement = tf.where(u < to_mask, tf.fill([k], vocab.mask_id), tf.where(u < to_random, random_ids, labels))
    masked = tf.tensor_scatter_nd_update(ids, chosen[:, None], replacement)
    pad = [[0, pred - k]]
    return {**ex, "input_ids": masked,
            "masked_lm_positions": tf.pad(chosen, pad), "masked_lm_ids": tf.pad(labels, pad),
            "masked_lm_weights": tf.pad(tf.ones([k], tf.float32), pad)}
  return remask
