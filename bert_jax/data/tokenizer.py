"""Vocabularies: train/load SentencePiece models, byte-level BPE (RoBERTa) tokenizer.json files and WordPiece
vocab.txt files (BERT's; per-character for Chinese).

Every kind names its special tokens by role (pad, unk, cls, sep, mask), so callers use tok.cls_id etc.:
  sentencepiece  ours put the BERT tokens at fixed ids: [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4
  wordpiece      a vocab.txt keeps its own ids (original BERT: [PAD]=0, [UNK]=100, [CLS]=101, ...)
  bpe            RoBERTa's tokens and order: <s>=0 <pad>=1 </s>=2 <unk>=3 <mask>=4, with cls=<s>, sep=</s>

CLI: python -m bert_jax.data.tokenizer --corpus=pydocs --vocab_size=8000 --output=DIR/spm [--vocab_type=bpe]
"""

import abc
import collections
import hashlib
import json
import os
import string

import numpy as np

from bert_jax.data import corpora

ROLES = ("pad", "unk", "cls", "sep", "mask")
BERT_SPECIAL_TOKENS = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
SPECIAL_TOKENS = tuple(BERT_SPECIAL_TOKENS[r] for r in ROLES)  # the BERT tokens, in role order
ROBERTA_SPECIAL_TOKENS = {"pad": "<pad>", "unk": "<unk>", "cls": "<s>", "sep": "</s>", "mask": "<mask>"}
BPE_TOKEN_ORDER = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")  # ids 0..4 of the BPE vocabularies we train
BYTE_LEVEL_SPACE = "\u0120"  # 'Ġ': how byte-level BPE spells the space that starts a word
VOCAB_TYPES = ("sentencepiece", "bpe", "wordpiece")  # what train_vocab can make
BPE_SUFFIX = ".tokenizer.json"


def file_sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


class Tokenizer(abc.ABC):
  """Common interface: encode(text) -> ids, special ids by role, and which ids start a word."""
  kind: str
  family: str = "BERT"                              # whose special tokens, for error messages
  special_tokens: dict[str, str] = BERT_SPECIAL_TOKENS  # role -> token
  vocab_file: str
  lower_case: bool

  def __init__(self, pieces: list[str]):
    self.pieces = pieces
    index = {p: i for i, p in enumerate(pieces)}
    missing = [self.special_tokens[r] for r in ROLES if self.special_tokens[r] not in index]
    if missing:
      raise ValueError(f"vocabulary {self.vocab_file!r} lacks the {self.family} special tokens {missing}; "
                       f"train one with `python -m bert_jax.data.tokenizer` or add them")
    self.role_ids = {r: index[self.special_tokens[r]] for r in ROLES}
    self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (self.role_ids[r] for r in ROLES)
    self.special_ids = np.array(sorted(set(self.role_ids.values())), np.int32)
    # Ids that random replacement may pick: everything but the special tokens.
    self.normal_ids = np.setdiff1d(np.arange(len(pieces), dtype=np.int32), self.special_ids)

  def token(self, role: str) -> str:
    """The special token playing `role` (one of ROLES) in this vocabulary."""
    return self.special_tokens[role]

  @property
  def vocab_size(self) -> int:
    return len(self.pieces)

  def _is_special(self, piece: str) -> bool:
    return piece in self.special_tokens.values()

  @abc.abstractmethod
  def word_start_table(self) -> np.ndarray:
    """bool[vocab]: True where a piece begins a new word (for whole-word masking)."""

  @abc.abstractmethod
  def encode(self, text: str) -> list[int]:
    """Token ids of text, without special tokens."""

  @abc.abstractmethod
  def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """encode's ids and each token's (start, end) character offsets in text (for segmenters.UnitMarker)."""

  def describe(self) -> dict:
    return {"kind": self.kind, "file": os.path.abspath(self.vocab_file), "size": self.vocab_size,
            "sha256": file_sha256(self.vocab_file), "lower_case": self.lower_case,
            "special_ids": {self.special_tokens[r]: self.role_ids[r] for r in ROLES},
            "special_tokens": {r: self.special_tokens[r] for r in ROLES}}


class SentencePieceTokenizer(Tokenizer):
  kind = "sentencepiece"

  def __init__(self, model_file: str, lower_case: bool = False):
    import sentencepiece as spm
    self.vocab_file, self.lower_case = model_file, lower_case
    self._sp = spm.SentencePieceProcessor(model_file=model_file)
    super().__init__([self._sp.id_to_piece(i) for i in range(self._sp.get_piece_size())])

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text.lower() if self.lower_case else text)

  def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Offsets into text.lower() when lower-casing (the same length for almost all text)."""
    text = text.lower() if self.lower_case else text
    pieces = self._sp.encode(text, out_type="proto").pieces
    edges = [offset for p in pieces for offset in (p.begin, p.end)]  # UTF-8 byte offsets
    if not text.isascii():  # byte offset -> character offset
      char_at = np.cumsum([0] + [len(ch.encode("utf-8")) for ch in text])
      edges = np.searchsorted(char_at, edges).tolist()
    return [p.id for p in pieces], list(zip(edges[::2], edges[1::2]))

  def word_start_table(self) -> np.ndarray:
    """A piece begins a word when it carries the word-boundary mark '▁' or is a lone ASCII punctuation mark
    (google-research/albert's _is_start_piece): SentencePiece glues punctuation to the word before it ("▁word",
    "."), which whole-word, n-gram and span masking would otherwise mask and count as one word."""
    return np.array([p.startswith("\u2581") or p in string.punctuation or self._is_special(p) for p in self.pieces])


class _HfTokenizersEncoding(Tokenizer):
  """encode and encode_with_offsets through an HF `tokenizers` object in self._tok, without special tokens."""
  _tok = None

  def encode(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False).ids

  def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    encoding = self._tok.encode(text, add_special_tokens=False)
    return encoding.ids, [tuple(o) for o in encoding.offsets]


class WordPieceTokenizer(_HfTokenizersEncoding):
  """An original BERT vocab.txt through HF `tokenizers` (BERT normalizer + WordPiece)."""
  kind = "wordpiece"

  def __init__(self, vocab_file: str, lower_case: bool = True):
    from tokenizers import BertWordPieceTokenizer
    self.vocab_file, self.lower_case = vocab_file, lower_case
    with open(vocab_file, encoding="utf-8") as f:
      pieces = [line.rstrip("\n") for line in f]
    super().__init__(pieces)
    self._tok = BertWordPieceTokenizer(vocab_file, lowercase=lower_case, strip_accents=lower_case,
                                       clean_text=True, handle_chinese_chars=True)

  def word_start_table(self) -> np.ndarray:
    return np.array([not p.startswith("##") for p in self.pieces])


def _lowercases(normalizer: dict | None) -> bool:
  """Whether a tokenizer.json normalizer spec lower-cases (alone or inside a Sequence)."""
  if not normalizer:
    return False
  if normalizer.get("type") == "Sequence":
    return any(_lowercases(n) for n in normalizer.get("normalizers", []))
  return normalizer.get("type") == "Lowercase" or bool(normalizer.get("lowercase"))


class BpeTokenizer(_HfTokenizersEncoding):
  """A byte-level BPE tokenizer.json (RoBERTa/GPT-2 style) through HF `tokenizers`.

  A word starts where a piece carries the byte-level space 'Ġ'. With add_prefix_space=False (RoBERTa) the
  first word of each sentence has no 'Ġ', so whole-word masking joins it to the word before it.
  """
  kind = "bpe"
  family = "RoBERTa"
  special_tokens = ROBERTA_SPECIAL_TOKENS

  def __init__(self, tokenizer_file: str, lower_case: bool = False):
    from tokenizers import Tokenizer as HfTokenizer
    from tokenizers import normalizers
    self.vocab_file = tokenizer_file
    spec = _read_tokenizer_json(tokenizer_file)
    self._tok = HfTokenizer.from_file(tokenizer_file)
    self._tok.no_truncation()
    self._tok.no_padding()
    in_file = _lowercases(spec.get("normalizer"))
    if lower_case and not in_file:
      steps = [self._tok.normalizer] if self._tok.normalizer is not None else []
      self._tok.normalizer = normalizers.Sequence(steps + [normalizers.Lowercase()])
    self.lower_case = lower_case or in_file
    size = self._tok.get_vocab_size(with_added_tokens=True)
    super().__init__([self._tok.id_to_token(i) or "" for i in range(size)])

  @property
  def backend(self):
    """The `tokenizers.Tokenizer` used by encode (lower-casing included)."""
    return self._tok

  def word_start_table(self) -> np.ndarray:
    return np.array([p.startswith(BYTE_LEVEL_SPACE) or self._is_special(p) for p in self.pieces])


def _read_tokenizer_json(path: str) -> dict:
  try:
    with open(path, encoding="utf-8") as f:
      spec = json.load(f)
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{path!r} is not a tokenizers JSON file ({e}); pass a byte-level BPE tokenizer.json, "
                     f"a SentencePiece .model or a WordPiece vocab.txt") from None
  model = (spec.get("model") or {}).get("type")
  pre = json.dumps(spec.get("pre_tokenizer"))
  if model != "BPE" or "ByteLevel" not in pre:
    raise ValueError(f"{path!r} holds a {model} model with pre-tokenizer {pre[:80]}; only byte-level BPE "
                     f"tokenizer.json files are supported (train one with --vocab_type=bpe)")
  return spec


def detect_kind(vocab_file: str) -> str:
  """'sentencepiece' for a .model file, 'bpe' for a JSON file (a tokenizer.json), else 'wordpiece'."""
  if vocab_file.endswith(".model"):
    return "sentencepiece"
  if vocab_file.endswith(".json"):
    return "bpe"
  with open(vocab_file, "rb") as f:
    head = f.read(64).lstrip()
  return "bpe" if head.startswith(b"{") else "wordpiece"


def load(vocab_file: str, lower_case: bool = False) -> Tokenizer:
  """A .model file is SentencePiece, a tokenizer.json (or a directory holding one) byte-level BPE;
  anything else is read as a WordPiece vocab.txt."""
  if not os.path.exists(vocab_file):
    raise FileNotFoundError(f"vocabulary {vocab_file!r} does not exist")
  if os.path.isdir(vocab_file):
    inside = os.path.join(vocab_file, "tokenizer.json")
    if not os.path.exists(inside):
      raise FileNotFoundError(f"{vocab_file!r} is a directory without tokenizer.json; pass the vocabulary file")
    vocab_file = inside
  kind = detect_kind(vocab_file)
  if kind == "sentencepiece":
    return SentencePieceTokenizer(vocab_file, lower_case)
  if kind == "bpe":
    return BpeTokenizer(vocab_file, lower_case)
  return WordPieceTokenizer(vocab_file, lower_case)


def _sentences(corpus, max_sentences: int, lower_case: bool = False):
  stats = collections.Counter()
  n = 0
  for doc in corpus.iter_documents(stats):
    for s in doc:
      yield s.lower() if lower_case else s
      n += 1
      if n >= max_sentences:
        return


def train_sentencepiece(corpus, output_prefix: str, vocab_size: int, lower_case: bool = False,
                        max_sentences: int = 2_000_000, seed_sentencepiece: bool = True) -> str:
  """Trains a unigram SentencePiece model on up to max_sentences sentences; returns the .model path."""
  import sentencepiece as spm
  os.makedirs(os.path.dirname(os.path.abspath(output_prefix)), exist_ok=True)
  spm.SentencePieceTrainer.train(
      sentence_iterator=_sentences(corpus, max_sentences, lower_case), model_prefix=output_prefix,
      vocab_size=vocab_size, model_type="unigram",
      character_coverage=0.9995, pad_id=0, pad_piece="[PAD]", unk_id=1, unk_piece="[UNK]", bos_id=-1, eos_id=-1,
      user_defined_symbols=list(SPECIAL_TOKENS[2:]), hard_vocab_limit=False, num_threads=os.cpu_count() or 1,
      shuffle_input_sentence=True, input_sentence_size=max_sentences, minloglevel=2)
  model_file = output_prefix + ".model"
  tok = SentencePieceTokenizer(model_file, lower_case)
  fixed = (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id)
  if fixed != (0, 1, 2, 3, 4):
    raise RuntimeError(f"SentencePiece put the special tokens at {fixed}, expected (0, 1, 2, 3, 4)")
  return model_file


def train_bpe(corpus, output_file: str, vocab_size: int, lower_case: bool = False,
              max_sentences: int = 2_000_000) -> str:
  """Trains a byte-level BPE as RoBERTa's (ByteLevel pre-tokenizer without prefix space, all 256 bytes in the
  initial alphabet, so nothing is ever unknown) and saves it as a tokenizer.json; returns output_file.

  Lower-casing is a Lowercase normalizer inside the file, so every loader of the file lower-cases.
  """
  from tokenizers import Tokenizer as HfTokenizer
  from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers
  alphabet = pre_tokenizers.ByteLevel.alphabet()
  if vocab_size < len(alphabet) + len(BPE_TOKEN_ORDER):
    raise ValueError(f"vocab_size {vocab_size} is too small for byte-level BPE: it needs at least "
                     f"{len(alphabet) + len(BPE_TOKEN_ORDER)} (256 bytes + 5 special tokens)")
  tok = HfTokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  if lower_case:
    tok.normalizer = normalizers.Lowercase()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(BPE_TOKEN_ORDER),
                                initial_alphabet=alphabet, show_progress=False)
  tok.train_from_iterator(_sentences(corpus, max_sentences), trainer)
  os.makedirs(os.path.dirname(os.path.abspath(output_file)), exist_ok=True)
  tok.save(output_file)
  loaded = BpeTokenizer(output_file, lower_case)
  got = tuple(loaded.role_ids[r] for r in ("cls", "pad", "sep", "unk", "mask"))
  if got != (0, 1, 2, 3, 4):
    raise RuntimeError(f"BPE training put {BPE_TOKEN_ORDER} at {got}, expected (0, 1, 2, 3, 4)")
  return output_file


def train_wordpiece(corpus, output_file: str, vocab_size: int, lower_case: bool = False,
                    max_sentences: int = 2_000_000) -> str:
  """Trains a BERT WordPiece vocab.txt as Google's Chinese/multilingual ones: BERT's normalizer puts spaces
  around CJK characters, so every Chinese character is its own token (what whole-word masking with a
  segmenter needs), other scripts get '##' pieces. The special tokens come first ([PAD] 0, [UNK] 1, [CLS] 2,
  [SEP] 3, [MASK] 4); a corpus too small for vocab_size is padded with [unused<i>] slots, as Google's vocabs
  are, so the size is what the config says. Returns output_file."""
  from tokenizers import BertWordPieceTokenizer
  tok = BertWordPieceTokenizer(lowercase=lower_case, strip_accents=lower_case, clean_text=True,
                               handle_chinese_chars=True)
  tok.train_from_iterator(_sentences(corpus, max_sentences), vocab_size=vocab_size, min_frequency=1,
                          special_tokens=list(SPECIAL_TOKENS), show_progress=False, wordpieces_prefix="##")
  vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
  pieces = [p for p, _ in vocab]
  pieces += [f"[unused{i}]" for i in range(vocab_size - len(pieces))]
  os.makedirs(os.path.dirname(os.path.abspath(output_file)), exist_ok=True)
  with open(output_file, "w", encoding="utf-8") as f:
    f.write("\n".join(pieces) + "\n")
  loaded = WordPieceTokenizer(output_file, lower_case)
  got = tuple(loaded.role_ids[r] for r in ROLES)
  if got != (0, 1, 2, 3, 4):
    raise RuntimeError(f"WordPiece training put {SPECIAL_TOKENS} at {got}, expected (0, 1, 2, 3, 4)")
  return output_file


def vocab_path(output_prefix: str, vocab_type: str) -> str:
  """Where train_vocab writes: PREFIX.model (sentencepiece), PREFIX.tokenizer.json (bpe) or PREFIX.vocab.txt
  (wordpiece)."""
  check_vocab_type(vocab_type)
  return output_prefix + {"sentencepiece": ".model", "bpe": BPE_SUFFIX, "wordpiece": ".vocab.txt"}[vocab_type]


def check_vocab_type(vocab_type: str) -> None:
  if vocab_type not in VOCAB_TYPES:
    raise ValueError(f"vocab_type {vocab_type!r} is not one of {VOCAB_TYPES}; set --vocab_type "
                     f"(config: data.vocab_type) to one of them")


def train_vocab(corpus, vocab_type: str, output_prefix: str, vocab_size: int, lower_case: bool = False,
                max_sentences: int = 2_000_000) -> str:
  """Trains a vocabulary of vocab_type (VOCAB_TYPES); returns the file to pass to load()."""
  path = vocab_path(output_prefix, vocab_type)
  if vocab_type == "sentencepiece":
    return train_sentencepiece(corpus, output_prefix, vocab_size, lower_case, max_sentences)
  if vocab_type == "wordpiece":
    return train_wordpiece(corpus, path, vocab_size, lower_case, max_sentences)
  return train_bpe(corpus, path, vocab_size, lower_case, max_sentences)


def main(argv):
  del argv
  from absl import flags
  f = flags.FLAGS
  corpus = corpora.from_spec(f.corpus, data_dir=f.tfds_data_dir, one_doc_per_line=f.one_doc_per_line)
  path = train_vocab(corpus, f.vocab_type, f.output, f.vocab_size, lower_case=f.lower_case)
  print(f"wrote {path} ({load(path, f.lower_case).vocab_size} pieces)")


def cli():
  from absl import app, flags
  flags.DEFINE_string("corpus", "pydocs", "'pydocs', 'tfds:NAME[:SPLIT]', or comma-separated text-file globs")
  flags.DEFINE_string("output", None, "output prefix; sentencepiece writes PREFIX.model and PREFIX.vocab, "
                      "bpe writes PREFIX.tokenizer.json", required=True)
  flags.DEFINE_enum("vocab_type", "sentencepiece", list(VOCAB_TYPES),
                    "sentencepiece (unigram, BERT special tokens), bpe (byte-level, RoBERTa special tokens) or "
                    "wordpiece (BERT vocab.txt, one token per Chinese character)")
  flags.DEFINE_integer("vocab_size", 8000, "number of pieces, special tokens included")
  flags.DEFINE_bool("lower_case", False, "lower-case text before training and encoding")
  flags.DEFINE_bool("one_doc_per_line", False, "text files hold one document per line")
  flags.DEFINE_string("tfds_data_dir", None, "TFDS data_dir for tfds: corpora")
  app.run(main)


if __name__ == "__main__":
  cli()
