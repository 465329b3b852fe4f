"""Exported tokenizer files: transformers.AutoTokenizer loads them offline and gives exactly our ids."""
import json

import pytest

from bert_jax.data import hf_tokenizer
from bert_jax.data import tokenizer as tokenizer_lib
from data_helpers import ListCorpus, pydocs_docs

transformers = pytest.importorskip("transformers")

MAX_LEN = 48
# Class names transformers 4.x has (5.x keeps them, some as aliases): files naming them load in both.
CLASSES_4X = {"BertTokenizer", "BertTokenizerFast", "RobertaTokenizer", "RobertaTokenizerFast",
              "PreTrainedTokenizerFast"}


@pytest.fixture(scope="module")
def vocab_files(tmp_path_factory):
  """Tiny vocabularies of each kind: the two we train, and a WordPiece vocab.txt written here."""
  root = tmp_path_factory.mktemp("vocabs")
  corpus = ListCorpus(pydocs_docs()[:80])
  files = {("sentencepiece", lc): tokenizer_lib.train_vocab(corpus, "sentencepiece", str(root / f"sp{lc:d}"), 800,
                                                            lower_case=lc) for lc in (False, True)}
  files.update({("bpe", lc): tokenizer_lib.train_vocab(corpus, "bpe", str(root / f"bpe{lc:d}"), 800, lower_case=lc)
                for lc in (False, True)})
  from tokenizers import BertWordPieceTokenizer
  for lc in (False, True):
    trainer = BertWordPieceTokenizer(lowercase=lc, strip_accents=lc)
    trainer.train_from_iterator([s for d in corpus.docs for s in d], vocab_size=800,
                                special_tokens=list(tokenizer_lib.SPECIAL_TOKENS))
    vocab = trainer.get_vocab()
    path = root / f"wordpiece{lc:d}" / "vocab.txt"
    path.parent.mkdir()
    path.write_text("\n".join(sorted(vocab, key=vocab.get)) + "\n", encoding="utf-8")
    files["wordpiece", lc] = str(path)
  return files


@pytest.fixture(scope="module")
def sentences():
  """~50 real sentences the vocabularies were not trained on (mixed case, punctuation, code words)."""
  out = [s for d in pydocs_docs()[300:] for s in d if 20 < len(s) < 200]
  return out[:50] + ["Naïve café déjà vu — Ünïcode façade.", "  Extra   spaces\tand TABS  "]


KINDS = [("sentencepiece", False), ("sentencepiece", True), ("bpe", False), ("bpe", True), ("wordpiece", True),
         ("wordpiece", False)]


@pytest.mark.parametrize("kind,lower_case", KINDS, ids=[f"{k}-{'lower' if lc else 'cased'}" for k, lc in KINDS])
def test_auto_tokenizer_gives_our_ids(vocab_files, sentences, tmp_path, kind, lower_case):
  vocab_file = vocab_files[kind, lower_case]
  hf_tokenizer.save_hf_tokenizer(vocab_file, lower_case, str(tmp_path), model_max_length=MAX_LEN)
  config = json.load(open(tmp_path / "tokenizer_config.json"))
  assert config["tokenizer_class"] in CLASSES_4X and config["model_max_length"] == MAX_LEN
  hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
  ours = tokenizer_lib.load(vocab_file, lower_case)
  cls, sep = ours.cls_id, ours.sep_id
  assert (hf.cls_token_id, hf.sep_token_id, hf.pad_token_id, hf.mask_token_id) == (cls, sep, ours.pad_id, ours.mask_id)
  for a, b in zip(sentences, sentences[1:] + sentences[:1]):
    ea, eb = ours.encode(a), ours.encode(b)
    assert hf(a)["input_ids"] == [cls] + ea + [sep], a
    pair = hf(a, b, return_token_type_ids=True)
    if kind == "bpe":  # RoBERTa: <s> A </s></s> B </s>, one segment id
      assert pair["input_ids"] == [cls] + ea + [sep, sep] + eb + [sep]
      assert set(pair["token_type_ids"]) == {0}
    else:
      assert pair["input_ids"] == [cls] + ea + [sep] + eb + [sep]
      assert pair["token_type_ids"] == [0] * (len(ea) + 2) + [1] * (len(eb) + 1)
  long_text = " ".join(sentences[:20])
  assert len(hf(long_text)["input_ids"]) > MAX_LEN
  cut = hf(long_text, truncation=True)["input_ids"]
  assert len(cut) == MAX_LEN and cut[0] == cls and cut[-1] == sep
  assert cut[1:-1] == ours.encode(long_text)[:MAX_LEN - 2]
  if kind == "wordpiece":  # the vocabulary file slow BertTokenizer and TF tooling read, in id order
    assert (tmp_path / "vocab.txt").read_text(encoding="utf-8").splitlines() == ours.pieces
  if kind == "bpe":
    mask = [t for t in json.load(open(tmp_path / "tokenizer.json"))["added_tokens"] if t["content"] == "<mask>"]
    assert mask[0]["lstrip"] and mask[0]["special"], "<mask> takes the space before it, as RoBERTa's"
    if not lower_case:  # a lower-casing BPE is saved as PreTrainedTokenizerFast (see hf_tokenizer's docstring)
      assert config["tokenizer_class"].startswith("RobertaTokenizer") and "Roberta" in type(hf).__name__


def test_bpe_vocabulary_roles_and_word_starts(vocab_files):
  tok = tokenizer_lib.load(vocab_files["bpe", False])
  assert tok.kind == "bpe" and (tok.cls_id, tok.pad_id, tok.sep_id, tok.unk_id, tok.mask_id) == (0, 1, 2, 3, 4)
  assert [tok.token(r) for r in tokenizer_lib.ROLES] == ["<pad>", "<unk>", "<s>", "</s>", "<mask>"]
  pieces = [tok.pieces[i] for i in tok.encode("The function returns a value")]
  starts = tok.word_start_table()
  assert [starts[i] for i in tok.encode("The function returns a value")] == [p.startswith("\u0120") for p in pieces]
  assert all(starts[i] for i in tok.special_ids) and not starts[tok.pieces.index("T")]
  lower = tokenizer_lib.load(vocab_files["bpe", False], lower_case=True)  # lower-casing added at load
  assert lower.lower_case and lower.encode("The FUNCTION") == tok.encode("the function")
  assert tokenizer_lib.load(vocab_files["bpe", True]).lower_case, "a lower-casing file says so itself"


def test_unsupported_tokenizer_json_fails_clearly(tmp_path):
  from tokenizers import Tokenizer, models
  path = tmp_path / "tokenizer.json"
  Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")).save(str(path))
  with pytest.raises(ValueError, match="only byte-level BPE tokenizer.json files are supported"):
    tokenizer_lib.load(str(tmp_path))
  with pytest.raises(ValueError, match="vocab_type 'unigram' is not one of"):
    tokenizer_lib.train_vocab(None, "unigram", str(tmp_path / "x"), 100)
  with pytest.raises(ValueError, match="too small for byte-level BPE"):
    tokenizer_lib.train_bpe(ListCorpus([["a b"]]), str(tmp_path / "b.json"), 100)
