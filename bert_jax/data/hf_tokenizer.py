"""Our vocabularies as transformers tokenizer files: AutoTokenizer.from_pretrained(dir) gives our ids.

  wordpiece      BertTokenizer: [CLS] A [SEP] (B [SEP]), token_type_ids 0 for A, 1 for B
  sentencepiece  PreTrainedTokenizerFast over a Unigram tokenizer.json built from the .model (its
                 normalizer charsmap included), with the same [CLS]/[SEP] template
  bpe            RobertaTokenizer: <s> A </s> and <s> A </s></s> B </s>, token_type_ids all 0,
                 <mask> absorbing the space before it (lstrip) as RoBERTa's

Each tokenizer is built as a `tokenizers.Tokenizer` here and handed over whole (tokenizer_object), so the
files do not depend on how a transformers version rebuilds a class from vocab.txt. The tokenizer_class
written to tokenizer_config.json exists in transformers 4.x and 5.x. transformers 5's RobertaTokenizer
rebuilds its backend from the vocabulary and would drop a Lowercase normalizer, so a lower-casing BPE
is saved as PreTrainedTokenizerFast (same template and special tokens). After saving, the directory is
loaded back and compared with our ids on a probe text, so a mismatch fails here rather than in use.
"""

import json
import os

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from bert_jax.data import tokenizer as tokenizer_lib

PROBE_TEXT = ("The function returns a VALUE, e.g. 3.14; it's naïve to call it twice.",
              "Second sentence: [brackets] and <angle> text.")


def _bert_template(tok):
  from tokenizers import processors
  cls, sep = tok.token("cls"), tok.token("sep")
  return processors.TemplateProcessing(single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
                                       special_tokens=[(cls, tok.cls_id), (sep, tok.sep_id)])


def _wordpiece_backend(tok):
  from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
  vocab = {p: i for i, p in enumerate(tok.pieces)}
  backend = Tokenizer(models.WordPiece(vocab, unk_token=tok.token("unk"), max_input_chars_per_word=100))
  backend.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                  strip_accents=tok.lower_case, lowercase=tok.lower_case)
  backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  backend.decoder = decoders.WordPiece(prefix="##")
  backend.post_processor = _bert_template(tok)
  return backend


def _sentencepiece_normalizer_class():
  """A message class for the one part of sentencepiece's ModelProto we read: normalizer_spec (field 3) and its
  precompiled_charsmap (field 2); other fields are skipped as unknown. sentencepiece's own generated
  sentencepiece_model_pb2 refuses any protobuf runtime older than the one it was generated with (0.2.3 wants
  protobuf >= 7.36), which apache-beam's protobuf < 7 pin rules out in one environment."""
  field = descriptor_pb2.FieldDescriptorProto
  proto = descriptor_pb2.FileDescriptorProto(name="bert_jax/sentencepiece_normalizer.proto",
                                             package="bert_jax_spm", syntax="proto2")
  proto.message_type.add(name="NormalizerSpec").field.add(name="precompiled_charsmap", number=2,
                                                          type=field.TYPE_BYTES, label=field.LABEL_OPTIONAL)
  proto.message_type.add(name="ModelProto").field.add(name="normalizer_spec", number=3, type=field.TYPE_MESSAGE,
                                                      label=field.LABEL_OPTIONAL,
                                                      type_name=".bert_jax_spm.NormalizerSpec")
  pool = descriptor_pool.DescriptorPool()
  pool.Add(proto)
  return message_factory.GetMessageClass(pool.FindMessageTypeByName("bert_jax_spm.ModelProto"))


_SentencePieceModel = _sentencepiece_normalizer_class()


def _sentencepiece_backend(tok):
  import sentencepiece as spm
  from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
  sp = spm.SentencePieceProcessor(model_file=tok.vocab_file)
  proto = _SentencePieceModel()
  with open(tok.vocab_file, "rb") as f:
    proto.ParseFromString(f.read())
  vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
  backend = Tokenizer(models.Unigram(vocab, unk_id=tok.unk_id, byte_fallback=False))
  steps = [normalizers.Lowercase()] if tok.lower_case else []
  steps += [normalizers.Precompiled(proto.normalizer_spec.precompiled_charsmap), normalizers.Strip(),
            normalizers.Replace(Regex(" {2,}"), " ")]
  backend.normalizer = normalizers.Sequence(steps)
  backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
  backend.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
  backend.post_processor = _bert_template(tok)
  return backend


def _bpe_backend(tok):
  from tokenizers import AddedToken, Tokenizer, processors
  backend = Tokenizer.from_str(tok.backend.to_str())  # our normalizer (lower-casing) included
  backend.post_processor = processors.RobertaProcessing((tok.token("sep"), tok.sep_id), (tok.token("cls"), tok.cls_id),
                                                        trim_offsets=True, add_prefix_space=False)
  backend.add_special_tokens([AddedToken(tok.token("mask"), lstrip=True, rstrip=False, normalized=False,
                                         special=True)])
  return backend


def _special_kwargs(tok) -> dict:
  kw = {f"{r}_token": tok.token(r) for r in tokenizer_lib.ROLES}
  if tok.kind == "bpe":
    kw.update(bos_token=tok.token("cls"), eos_token=tok.token("sep"))
  return kw


def _ours(tok, a: str, b: str | None = None) -> list[int]:
  """Our ids with the special tokens around them, as the exported tokenizer should give them."""
  ids = [tok.cls_id] + tok.encode(a) + [tok.sep_id]
  if b is not None:
    ids += ([tok.sep_id] if tok.kind == "bpe" else []) + tok.encode(b) + [tok.sep_id]
  return ids


def save_hf_tokenizer(vocab_file: str, lower_case: bool, output_dir: str, model_max_length: int) -> None:
  """Writes tokenizer files for `vocab_file` that transformers.AutoTokenizer loads offline with our ids.

  model_max_length (usually the model's max_position_embeddings) is what truncation=True cuts to.
  """
  import transformers
  if model_max_length < 2:
    raise ValueError(f"model_max_length must be at least 2 (the special tokens), got {model_max_length}")
  tok = tokenizer_lib.load(vocab_file, lower_case)
  kw = dict(model_max_length=model_max_length, **_special_kwargs(tok))
  if tok.kind == "wordpiece":
    fast = transformers.BertTokenizerFast(tokenizer_object=_wordpiece_backend(tok), do_lower_case=tok.lower_case,
                                          strip_accents=tok.lower_case, **kw)
  elif tok.kind == "sentencepiece":
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=_sentencepiece_backend(tok),
                                                model_input_names=["input_ids", "token_type_ids", "attention_mask"],
                                                **kw)
  elif not tok.lower_case:
    fast = transformers.RobertaTokenizerFast(tokenizer_object=_bpe_backend(tok), add_prefix_space=False,
                                             trim_offsets=True, **kw)
  else:
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=_bpe_backend(tok),
                                                model_input_names=["input_ids", "attention_mask"], **kw)
  os.makedirs(output_dir, exist_ok=True)
  fast.save_pretrained(output_dir)
  if tok.kind == "wordpiece" or (tok.kind == "bpe" and not tok.lower_case):
    # vocab.txt (WordPiece) or vocab.json + merges.txt (BPE): what slow tokenizers and TF tooling read
    fast.backend_tokenizer.model.save(output_dir)
  _portable_class_name(output_dir)
  _check(tok, output_dir)


def _portable_class_name(output_dir: str) -> None:
  """transformers 5 writes its generic class as 'TokenizersBackend', which 4.x lacks; both know
  'PreTrainedTokenizerFast'."""
  path = os.path.join(output_dir, "tokenizer_config.json")
  with open(path, encoding="utf-8") as f:
    config = json.load(f)
  if config.get("tokenizer_class") in ("TokenizersBackend", None):
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    with open(path, "w", encoding="utf-8") as f:
      json.dump(config, f, indent=2, ensure_ascii=False)


def _check(tok, output_dir: str) -> None:
  import transformers
  hf = transformers.AutoTokenizer.from_pretrained(output_dir, local_files_only=True)
  for args in ((PROBE_TEXT[0],), PROBE_TEXT):
    got, want = hf(*args)["input_ids"], _ours(tok, *args)
    if got != want:
      raise RuntimeError(f"the exported {tok.kind} tokenizer in {output_dir} gives {got[:12]}... where ours gives "
                         f"{want[:12]}... on {args!r} (transformers {transformers.__version__}, "
                         f"{type(hf).__name__}); this version of transformers loads the files differently")
