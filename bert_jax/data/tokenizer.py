"""Vocabularies: train/load SentencePiece models, or load an existing WordPiece vocab.txt.

Our SentencePiece models put the BERT special tokens at fixed ids:
  [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4
A WordPiece vocab.txt keeps its own ids (original BERT: [PAD]=0, [UNK]=100, [CLS]=101, ...).

CLI: python -m bert_jax.data.tokenizer --corpus=pydocs --vocab_size=8000 --output=DIR/spm
"""

import abc
import collections
import hashlib
import os

import numpy as np

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def file_sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


class Tokenizer(abc.ABC):
  """Common interface: encode(text) -> ids, special ids, and which ids start a word."""
  kind: str
  vocab_file: str
  lower_case: bool

  def __init__(self, pieces: list[str]):
    self.pieces = pieces
    index = {p: i for i, p in enumerate(pieces)}
    missing = [t for t in SPECIAL_TOKENS if t not in index]
    if missing:
      raise ValueError(f"vocabulary {self.vocab_file!r} lacks the BERT special tokens {missing}; "
                       f"train one with `python -m bert_jax.data.tokenizer` or add them")
    self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (index[t] for t in SPECIAL_TOKENS)
    self.special_ids = np.array(sorted({index[t] for t in SPECIAL_TOKENS}), np.int32)
    # Ids that random replacement may pick: everything but the special tokens.
    self.normal_ids = np.setdiff1d(np.arange(len(pieces), dtype=np.int32), self.special_ids)

  @property
  def vocab_size(self) -> int:
    return len(self.pieces)

  @abc.abstractmethod
  def word_start_table(self) -> np.ndarray:
    """bool[vocab]: True where a piece begins a new word (for whole-word masking)."""

  @abc.abstractmethod
  def encode(self, text: str) -> list[int]:
    """Token ids of text, without special tokens."""

  def describe(self) -> dict:
    return {"kind": self.kind, "file": os.path.abspath(self.vocab_file), "size": self.vocab_size,
            "sha256": file_sha256(self.vocab_file), "lower_case": self.lower_case,
            "special_ids": dict(zip(SPECIAL_TOKENS, (self.pad_id, self.unk_id, self.cls_id, self.sep_id,
                                                     self.mask_id)))}


class SentencePieceTokenizer(Tokenizer):
  kind = "sentencepiece"

  def __init__(self, model_file: str, lower_case: bool = False):
    import sentencepiece as spm
    self.vocab_file, self.lower_case = model_file, lower_case
    self._sp = spm.SentencePieceProcessor(model_file=model_file)
    super().__init__([self._sp.id_to_piece(i) for i in range(self._sp.get_piece_size())])

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text.lower() if self.lower_case else text)

  def word_start_table(self) -> np.ndarray:
    return np.array([p.startswith("\u2581") or p in SPECIAL_TOKENS for p in self.pieces])


class WordPieceTokenizer(Tokenizer):
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

  def encode(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False).ids

  def word_start_table(self) -> np.ndarray:
    return np.array([not p.startswith("##") for p in self.pieces])


def load(vocab_file: str, lower_case: bool = False) -> Tokenizer:
  """A .model file is SentencePiece; anything else is read as a WordPiece vocab.txt."""
  if not os.path.exists(vocab_file):
    raise FileNotFoundError(f"vocabulary {vocab_file!r} does not exist")
  if vocab_file.endswith(".model"):
    return SentencePieceTokenizer(vocab_file, lower_case)
  return WordPieceTokenizer(vocab_file, lower_case)


def train_sentencepiece(corpus, output_prefix: str, vocab_size: int, lower_case: bool = False,
                        max_sentences: int = 2_000_000, seed_sentencepiece: bool = True) -> str:
  """Trains a unigram SentencePiece model on up to max_sentences sentences; returns the .model path."""
  import sentencepiece as spm

  def sentences():
    stats = collections.Counter()
    n = 0
    for doc in corpus.iter_documents(stats):
      for s in doc:
        yield s.lower() if lower_case else s
        n += 1
        if n >= max_sentences:
          return

  os.makedirs(os.path.dirname(os.path.abspath(output_prefix)), exist_ok=True)
  spm.SentencePieceTrainer.train(
      sentence_iterator=sentences(), model_prefix=output_prefix, vocab_size=vocab_size, model_type="unigram",
      character_coverage=0.9995, pad_id=0, pad_piece="[PAD]", unk_id=1, unk_piece="[UNK]", bos_id=-1, eos_id=-1,
      user_defined_symbols=list(SPECIAL_TOKENS[2:]), hard_vocab_limit=False, num_threads=os.cpu_count() or 1,
      shuffle_input_sentence=True, input_sentence_size=max_sentences, minloglevel=2)
  model_file = output_prefix + ".model"
  tok = SentencePieceTokenizer(model_file, lower_case)
  fixed = (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id)
  if fixed != (0, 1, 2, 3, 4):
    raise RuntimeError(f"SentencePiece put the special tokens at {fixed}, expected (0, 1, 2, 3, 4)")
  return model_file


def main(argv):
  del argv
  from absl import flags
  from bert_jax.data import corpora
  f = flags.FLAGS
  corpus = corpora.from_spec(f.corpus, data_dir=f.tfds_data_dir, one_doc_per_line=f.one_doc_per_line)
  path = train_sentencepiece(corpus, f.output, f.vocab_size, lower_case=f.lower_case)
  print(f"wrote {path} ({SentencePieceTokenizer(path).vocab_size} pieces)")


def cli():
  from absl import app, flags
  flags.DEFINE_string("corpus", "pydocs", "'pydocs', 'tfds:NAME[:SPLIT]', or comma-separated text-file globs")
  flags.DEFINE_string("output", None, "output prefix; writes PREFIX.model and PREFIX.vocab", required=True)
  flags.DEFINE_integer("vocab_size", 8000, "number of pieces, special tokens included")
  flags.DEFINE_bool("lower_case", False, "lower-case text before training and encoding")
  flags.DEFINE_bool("one_doc_per_line", False, "text files hold one document per line")
  flags.DEFINE_string("tfds_data_dir", None, "TFDS data_dir for tfds: corpora")
  app.run(main)


if __name__ == "__main__":
  cli()
