"""Fine-tuning tasks: what they are, where their examples come from, and how examples become features.

Task kinds and their example dicts:
  classification / regression: {"text_a": str, "text_b": str | None, "label": int | float}
  tagging:                     {"words": [str], "labels": [int]}                   one label per word
  qa:                          {"id": str, "question": str, "context": str, "answers": [str],
                                "answer_start": int (-1: none given)}
  multiple_choice:             {"context": str, "question": str | None, "choices": [str], "label": int}
                                each choice is read as the pair (context, choice_segment(question, choice))

Sources: TFDS by name (GLUE, squad, conll2003, race, hellaswag, piqa, ai2_arc) read from a data_dir, or local
TSV (header row) and JSONL files. Features are numpy dicts with input_ids/input_mask/segment_ids [N, T] plus
  classification: label [N] (int32; float32 for regression)
  tagging:        labels [N, T] (label of each word's first sub-token), label_weights [N, T], example_index [N]
  qa:             start_positions, end_positions [N] (0 = [CLS] when the answer is not in the window),
                  and, for decoding, example_index [N], token_start/token_end [N, T] (each token's characters
                  in the context; -1 outside it) and max_context [N, T] (1 where this window gives the token
                  the most context of all windows holding it)
  multiple_choice: input_ids/input_mask/segment_ids [N, C, T] (one pair per choice), label [N] (the right
                  choice), choice_mask [N, C] (0 for the slots of an example with fewer than C choices)
QA metrics: squad (every question has an answer: SQuAD 1.1) or squad_v2 (questions without one, answered "").
"""

import ast
import csv
import dataclasses
import hashlib
import json
import os
import re
import sysconfig
from pathlib import Path

import numpy as np

from bert_jax.data import corpora

KINDS = ("classification", "regression", "tagging", "qa", "multiple_choice")
METRICS = {"classification": ("accuracy_f1", "mcc"), "regression": ("pearson_spearman",), "tagging": ("tagging",),
           "qa": ("squad", "squad_v2"), "multiple_choice": ("accuracy",)}  # the first: a kind's default


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  name: str
  kind: str
  text_keys: tuple[str, ...] = ("text_a", "text_b")  # source field names, in order
  label_key: str = "label"
  label_names: tuple[str, ...] = ()                  # classification/tagging; multiple_choice: optional names of
                                                     # the choice positions (A,B,C,D); empty for regression/qa
  metric: str = "accuracy_f1"                        # one of METRICS[kind]
  train_split: str = "train"
  eval_split: str = "validation"
  choice_keys: tuple[str, ...] = ()                  # multiple_choice: one field holding the list of choices, or
                                                     # one field per choice (ending0,ending1,...)
  per_item: tuple[str, ...] = ()                     # fields holding one value per question of a record (RACE's
                                                     # questions, answers, options): one example per question

  @property
  def num_labels(self) -> int:
    """Outputs per row of the head: one score per choice for multiple_choice."""
    return {"regression": 1, "qa": 2, "multiple_choice": 1}.get(self.kind, len(self.label_names))


def _glue(name, keys, labels, metric="accuracy_f1", eval_split="validation", kind="classification"):
  return TaskSpec(f"glue/{name}", kind, keys, "label", labels, metric, "train", eval_split)


TFDS_TASKS = {t.name: t for t in (
    _glue("cola", ("sentence",), ("unacceptable", "acceptable"), "mcc"),
    _glue("sst2", ("sentence",), ("negative", "positive")),
    _glue("mrpc", ("sentence1", "sentence2"), ("not_equivalent", "equivalent")),
    _glue("qqp", ("question1", "question2"), ("not_duplicate", "duplicate")),
    _glue("stsb", ("sentence1", "sentence2"), (), "pearson_spearman", kind="regression"),
    _glue("mnli", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"),
          eval_split="validation_matched"),
    _glue("qnli", ("question", "sentence"), ("entailment", "not_entailment")),
    _glue("rte", ("sentence1", "sentence2"), ("entailment", "not_entailment")),
    _glue("wnli", ("sentence1", "sentence2"), ("not_entailment", "entailment")),
    TaskSpec("squad", "qa", ("question", "context"), "answers", (), "squad"),
    TaskSpec("squad/v2.0", "qa", ("question", "context"), "answers", (), "squad_v2"),
    TaskSpec("ai2_arc/ARC-Challenge", "multiple_choice", ("question",), "answerKey", (), "accuracy",
             choice_keys=("choices",)),
    TaskSpec("ai2_arc/ARC-Easy", "multiple_choice", ("question",), "answerKey", (), "accuracy",
             choice_keys=("choices",)),
    *(TaskSpec(f"race/{level}", "multiple_choice", ("article", "questions"), "answers", ("A", "B", "C", "D"),
               "accuracy", choice_keys=("options",), per_item=("questions", "answers", "options"))
      for level in ("high", "middle")),
    TaskSpec("hellaswag", "multiple_choice", ("context",), "label", (), "accuracy", choice_keys=("endings",)),
    TaskSpec("piqa", "multiple_choice", ("goal",), "label", (), "accuracy", choice_keys=("sol1", "sol2")),
    TaskSpec("conll2003", "tagging", ("tokens",), "ner",
             ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"), "tagging",
             "train", "dev"),
)}


def _text(x):
  return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def _label_index(spec: TaskSpec, value, where: str):
  """A label as the model sees it; a value outside the label set fails naming the example."""
  if spec.kind == "regression":
    try:
      return float(value)
    except (TypeError, ValueError):
      raise ValueError(f"{where}: label {value!r} is not a number (regression task {spec.name})") from None
  if _text(value) in spec.label_names:  # a named label, or an integer label of a file task (names are its digits)
    return spec.label_names.index(_text(value))
  if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
    if 0 <= int(value) < len(spec.label_names):  # TFDS's ClassLabel: the index into its names
      return int(value)
  raise ValueError(f"{where}: label {value!r} is not in the label set {list(spec.label_names)} of task "
                   f"{spec.name}; fix the example or set task.label_names")


def _field(record: dict, key: str, where: str, config_key: str):
  """record[key] (TFDS records key by bytes); a missing field fails naming the record's fields and the config
  key that chose it, where it would otherwise read as None: a lost second sentence, a label None, "None" text."""
  for k in (key, key.encode()):
    if k in record:
      return record[k]
  raise ValueError(f"{where}: no {key!r} field (it has {sorted(map(_text, record))}); set --config.task.{config_key} "
                   f"to the field that holds it")


def _words(value, where: str, what: str) -> list:
  """A tagging example's words or tags: a list (a .tsv cell is a string, whose characters are no words)."""
  if isinstance(value, (str, bytes)):
    example = json.dumps({"words": ["EU", "rejects"], "tags": ["B-ORG", "O"]})
    raise ValueError(f"{where}: the {what} are the string {_text(value)[:60]!r}, not a list; tagging reads .jsonl "
                     f"files whose fields hold lists, e.g. {example}")
  return list(value)


def _choices(spec: TaskSpec, record: dict, where: str) -> tuple[list[str], list[str] | None]:
  """(choices, their own labels or None): the list in its one choice field, or one field per choice. A field that
  is a dict of lists {"text": [...], "label": [...]} (ARC, CommonsenseQA) labels its choices itself."""
  if not spec.choice_keys:
    raise ValueError(f"task {spec.name} is multiple_choice but names no choices: set --config.task.choice_keys to "
                     f"the field holding the list of choices, or to one field per choice (ending0,ending1,...)")
  if len(spec.choice_keys) > 1:
    return [_text(_field(record, k, where, "choice_keys")) for k in spec.choice_keys], None
  value = _field(record, spec.choice_keys[0], where, "choice_keys")
  own_labels = None
  if isinstance(value, dict):
    keys = sorted(map(_text, value))
    value = {_text(k): v for k, v in value.items()}
    if "text" not in value:
      raise ValueError(f"{where}: the choices field is a dict with keys {keys}; a dict of choices needs a 'text' list "
                       f"(and a 'label' list naming them)")
    own_labels = [_text(x) for x in value["label"]] if "label" in value else None
    value = value["text"]
  if isinstance(value, (str, bytes)):
    raise ValueError(f"{where}: the choices are the string {_text(value)[:60]!r}, not a list; give a .jsonl list "
                     f"field, or one field per choice in task.choice_keys (ending0,ending1,...)")
  choices = [_text(c) for c in value]
  if len(choices) < 2:
    raise ValueError(f"{where}: {len(choices)} choice(s); a multiple-choice example needs at least 2")
  if own_labels is not None and len(own_labels) != len(choices):
    raise ValueError(f"{where}: {len(choices)} choices but {len(own_labels)} choice labels")
  return choices, own_labels


def _choice_index(spec: TaskSpec, value, num_choices: int, where: str, own_labels: list[str] | None = None) -> int:
  """The right choice's position: one of the example's own choice labels, else a name of task.label_names
  (A,B,C,D), else an integer index."""
  if own_labels is not None:
    if _text(value) not in own_labels:
      raise ValueError(f"{where}: label {value!r} is none of its choices' labels {own_labels}")
    return own_labels.index(_text(value))
  if spec.label_names:
    if _text(value) not in spec.label_names[:num_choices]:
      raise ValueError(f"{where}: label {value!r} names none of its {num_choices} choices "
                       f"{list(spec.label_names[:num_choices])} (task.label_names)")
    return spec.label_names.index(_text(value))
  text = _text(value).strip()
  if isinstance(value, bool) or not re.fullmatch(r"\d+", text) or int(text) >= num_choices:
    raise ValueError(f"{where}: label {value!r} is not the index of one of its {num_choices} choices (0 to "
                     f"{num_choices - 1}); for labels such as A,B,C,D set task.label_names to them in choice order")
  return int(text)


def _to_example(spec: TaskSpec, record: dict, where: str) -> dict:
  field = lambda i: _field(record, spec.text_keys[i], where, "text_keys")
  label = lambda: _field(record, spec.label_key, where, "label_key")
  if spec.kind == "multiple_choice":
    question = field(1) if len(spec.text_keys) > 1 else None
    choices, own_labels = _choices(spec, record, where)
    return {"context": _text(field(0)), "question": None if question in (None, "", b"") else _text(question),
            "choices": choices, "label": _choice_index(spec, label(), len(choices), where, own_labels)}
  if spec.kind in ("classification", "regression"):
    a = field(0)
    b = field(1) if len(spec.text_keys) > 1 else None
    return {"text_a": _text(a), "text_b": None if b in (None, "", b"") else _text(b),
            "label": _label_index(spec, label(), where)}
  if spec.kind == "tagging":
    words = [_text(w) for w in _words(field(0), where, "words")]
    labels = [_label_index(spec, t, f"{where} word {i}") for i, t in enumerate(_words(label(), where, "labels"))]
    if len(words) != len(labels):
      raise ValueError(f"{where}: {len(words)} words but {len(labels)} labels")
    return {"words": words, "labels": labels}
  answers = label() or {}
  texts = answers.get("text", []) if isinstance(answers, dict) else answers
  starts = answers.get("answer_start", []) if isinstance(answers, dict) else record.get("answer_start", [])
  starts = list(np.atleast_1d(starts)) if starts is not None else []
  texts = [_text(t) for t in np.atleast_1d(texts)]
  if not texts and spec.metric != "squad_v2":
    raise ValueError(f"{where}: question without an answer; for data with unanswerable questions (SQuAD 2.0) "
                     f"set task.metric=squad_v2, which answers them with an empty string")
  return {"id": _text(record.get("id", where)), "question": _text(field(0)), "context": _text(field(1)),
          "answers": texts, "answer_start": int(starts[0]) if len(starts) and texts else -1}


def read_tfds(spec: TaskSpec, split: str, data_dir: str | None) -> list[dict]:
  import tensorflow_datasets as tfds
  try:
    ds = tfds.load(spec.name, split=split, data_dir=data_dir, download=False)
  except AssertionError as e:  # TFDS's advice, download=True, is no flag of ours, and runs are offline
    if "could not find data" not in str(e):
      raise
    where = data_dir or "TFDS's default data_dir (~/tensorflow_datasets or $TFDS_DATA_DIR)"
    raise FileNotFoundError(
        f"TFDS task {spec.name} is not prepared in {where}. Prepare it once where there is internet access: "
        f"python -c \"import tensorflow_datasets as tfds; tfds.builder('{spec.name}', data_dir='DIR')"
        f".download_and_prepare()\", then pass --config.task.data_dir=DIR; or give the examples as .jsonl/.tsv "
        f"files (--config.task.name=files)") from None
  where = f"{spec.name}[{split}]"
  return _unique_ids([_to_example(spec, item, f"{where} example {i}{suffix}")
                      for i, r in enumerate(tfds.as_numpy(ds)) for suffix, item in _items(spec, r)], where)


def _items(spec: TaskSpec, record: dict):
  """(where suffix, record) per example a record holds: itself, or one per question (spec.per_item)."""
  if not spec.per_item:
    yield "", record
    return
  # a ragged field (RACE's options of several lengths) comes out of tfds.as_numpy as a RaggedTensor: listed
  record = {_text(k): v.to_list() if hasattr(v, "to_list") else v for k, v in record.items()}
  counts = {k: len(record[k]) for k in spec.per_item if k in record}
  if len(set(counts.values())) > 1:
    raise ValueError(f"{spec.name}: the per-question fields hold different counts {counts}")
  for j in range(next(iter(counts.values()), 0)):
    yield f" question {j}", {**record, **{k: record[k][j] for k in counts}}


def read_file(spec: TaskSpec, path: str) -> list[dict]:
  """Examples from a .jsonl (one object per line) or .tsv (header row) file."""
  return _unique_ids([_to_example(spec, item, f"{path} example {i}{suffix}")
                      for i, r in enumerate(_read_records(path)) for suffix, item in _items(spec, r)], path)


def _unique_ids(examples: list[dict], where: str) -> list[dict]:
  """QA examples as read, failing on a repeated id: answers are keyed by id, so a repeat would be scored once."""
  first = {}
  for i, ex in enumerate(examples):
    if "id" in ex and first.setdefault(ex["id"], i) != i:
      raise ValueError(f"{where} example {i}: id {ex['id']!r} is also example {first[ex['id']]}'s; QA questions "
                       f"need unique ids (leave the id field out to number them)")
  return examples


def _read_records(path: str) -> list[dict]:
  """The raw records of a .jsonl (one object per line) or .tsv (header row) file."""
  import tensorflow as tf
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"task file {path} does not exist")
  with tf.io.gfile.GFile(path) as f:
    if path.endswith(".jsonl"):
      records = []
      for n, line in enumerate(f, 1):
        if line.strip():
          try:
            records.append(json.loads(line))
          except json.JSONDecodeError as e:
            raise ValueError(f"{path} line {n}: not JSON ({e.msg})") from None
      return records
    if path.endswith(".tsv"):
      return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
  raise ValueError(f"task file {path}: use a .jsonl or .tsv file")


def file_spec(name: str, kind: str, text_keys: str, label_key: str, label_names: str, metric: str,
              train_file: str, choice_keys: str = "") -> TaskSpec:
  """A TaskSpec for local files; empty label_names are collected (sorted) from the train file, except for
  multiple_choice, whose labels are choice indices unless label_names names the positions."""
  if kind not in KINDS:
    raise ValueError(f"task.kind {kind!r} is not one of {KINDS}")
  keys = tuple(k for k in text_keys.split(",") if k)
  names = tuple(n for n in label_names.split(",") if n)
  choices = tuple(k for k in choice_keys.split(",") if k)
  if kind == "multiple_choice":
    if not choices:
      raise ValueError("task.kind=multiple_choice needs task.choice_keys: the field holding the list of choices, "
                       "or one field per choice (ending0,ending1,...)")
    if not 1 <= len(keys) <= 2:
      raise ValueError(f"task.text_keys={text_keys!r}: multiple_choice reads a context and, optionally, a question "
                       f"put before each choice (context or context,question)")
  elif choices:
    raise ValueError(f"task.choice_keys={choice_keys!r} applies to task.kind=multiple_choice, not {kind}; leave it empty")
  if not names and kind in ("classification", "tagging"):
    labels = [_field(r, label_key, f"{train_file} example {i}", "label_key")
              for i, r in enumerate(_read_records(train_file))]
    values = ({str(v) for i, r in enumerate(labels) for v in _words(r, f"{train_file} example {i}", "labels")}
              if kind == "tagging" else {str(r) for r in labels})
    numeric = all(re.fullmatch(r"-?\d+", v) for v in values)
    names = tuple(sorted(values, key=int) if numeric else sorted(values))  # 2 before 10
  if kind in ("classification", "tagging") and len(names) < 2:  # a softmax over one logit learns nothing
    raise ValueError(f"task {name} ({kind}) has {len(names)} label ({list(names)}) but needs at least 2: list "
                     f"the whole label set in task.label_names")
  if metric and metric not in METRICS[kind]:
    raise ValueError(f"task.metric={metric!r} does not score a {kind} task; use one of {METRICS[kind]}")
  return TaskSpec(name, kind, keys, label_key, names, metric or METRICS[kind][0], choice_keys=choices)


# ---- features -------------------------------------------------------------------------------------------


def _pad(ids, length, value=0):
  return ids + [value] * (length - len(ids))


def _truncate_pair(a, b, max_tokens):
  """Both segments cut to fit max_tokens as HF tokenizers' longest_first cuts them, so an exported tokenizer gives
  the features fine-tuning trained on: the shorter kept whole when the longer can take the cut, else half each,
  the odd token to the longer (to the second at a tie). Popping from the longer one token at a time
  (google-research/bert's _truncate_seq_pair) gives the odd token to the other segment."""
  a, b = list(a), list(b or [])
  if len(a) + len(b) <= max_tokens:
    return a, b
  shorter, longer = sorted((len(a), len(b)))
  keep_short = min(shorter, max_tokens)
  keep_long = max(keep_short, max_tokens - keep_short)
  if keep_short + keep_long > max_tokens:
    keep_short, keep_long = max_tokens // 2, max_tokens // 2 + max_tokens % 2
  keep_a, keep_b = (keep_long, keep_short) if len(a) > len(b) else (keep_short, keep_long)
  return a[:keep_a], b[:keep_b]


def pair_separator(tok) -> list[int]:
  """Ids between two segments: [SEP], or RoBERTa's </s></s> for byte-level BPE (what its HF tokenizer writes,
  so the exported model sees at inference the layout it was fine-tuned on)."""
  return [tok.sep_id, tok.sep_id] if tok.kind == "bpe" else [tok.sep_id]


def encode_word(tok, word: str) -> list[int]:
  """A pre-split word's pieces. Byte-level BPE marks a word start with a leading space (HF's
  add_prefix_space for pre-split words); without it every word would be encoded as a sentence start."""
  return tok.encode(" " + word if tok.kind == "bpe" else word) or [tok.unk_id]


def classification_features(examples, tok, max_seq_length: int, regression: bool) -> dict:
  rows = {"input_ids": [], "input_mask": [], "segment_ids": [], "label": []}
  for ex in examples:
    b = tok.encode(ex["text_b"]) if ex["text_b"] is not None else None
    between = pair_separator(tok)
    a, b = _truncate_pair(tok.encode(ex["text_a"]), b,
                          max_seq_length - (2 + len(between) if b is not None else 2))
    ids = [tok.cls_id] + a + (between + b + [tok.sep_id] if ex["text_b"] is not None else [tok.sep_id])
    seg = [0] * (len(a) + 2) + [1] * (len(ids) - len(a) - 2)
    rows["input_ids"].append(_pad(ids, max_seq_length))
    rows["input_mask"].append(_pad([1] * len(ids), max_seq_length))
    rows["segment_ids"].append(_pad(seg, max_seq_length))
    rows["label"].append(ex["label"])
  out = {k: np.asarray(v, np.int32) for k, v in rows.items() if k != "label"}
  out["label"] = np.asarray(rows["label"], np.float32 if regression else np.int32)
  return out


_BLANK = re.compile(r"(?<!\w)_+(?!\w)")  # RACE's cloze blank: underscores that touch no word character


def choice_segment(question: str | None, choice: str) -> str:
  """A choice's second segment: the choice alone, the question's blank filled with it (RACE's "_"), or the
  question then the choice (SWAG's sent2 and ending)."""
  if question is None:
    return choice
  return _BLANK.sub(lambda _: choice, question, count=1) if _BLANK.search(question) else f"{question} {choice}"


def multiple_choice_features(examples, tok, max_seq_length: int) -> dict:
  """One pair row per choice, [CLS] context [SEP] choice_segment [SEP], cut as classification pairs are. C is
  the most choices of any example; an example with fewer gets [CLS][SEP] rows with choice_mask 0, which the
  loss and the predictions never pick."""
  num_choices = max(len(ex["choices"]) for ex in examples)
  pairs = []
  for ex in examples:
    for choice in ex["choices"]:
      second = choice_segment(ex["question"], choice)
      pairs.append({"text_a": ex["context"], "text_b": second, "label": 0})
    pairs += [{"text_a": "", "text_b": None, "label": 0}] * (num_choices - len(ex["choices"]))
  rows = classification_features(pairs, tok, max_seq_length, regression=False)
  out = {k: rows[k].reshape(len(examples), num_choices, max_seq_length)
         for k in ("input_ids", "input_mask", "segment_ids")}
  out["label"] = np.asarray([ex["label"] for ex in examples], np.int32)
  out["choice_mask"] = np.asarray([[1] * len(ex["choices"]) + [0] * (num_choices - len(ex["choices"]))
                                   for ex in examples], np.int32)
  return out


def tagging_features(examples, tok, max_seq_length: int) -> dict:
  """Label on each word's first sub-token; a sentence too long for one row continues in the next row."""
  rows = {"input_ids": [], "input_mask": [], "segment_ids": [], "labels": [], "label_weights": [],
          "example_index": []}

  def emit(ids, labels, weights):
    ids, labels, weights = [tok.cls_id] + ids + [tok.sep_id], [0] + labels + [0], [0] + weights + [0]
    rows["example_index"].append(index)
    rows["input_ids"].append(_pad(ids, max_seq_length))
    rows["input_mask"].append(_pad([1] * len(ids), max_seq_length))
    rows["segment_ids"].append([0] * max_seq_length)
    rows["labels"].append(_pad(labels, max_seq_length))
    rows["label_weights"].append(_pad(weights, max_seq_length))

  room = max_seq_length - 2
  for index, ex in enumerate(examples):
    ids, labels, weights = [], [], []
    for word, label in zip(ex["words"], ex["labels"]):
      pieces = encode_word(tok, word)
      if len(pieces) > room:
        pieces = pieces[:room]  # one word longer than a row keeps its first sub-tokens (its label is kept)
      if len(ids) + len(pieces) > room:
        emit(ids, labels, weights)
        ids, labels, weights = [], [], []
      ids += pieces
      labels += [label] + [0] * (len(pieces) - 1)
      weights += [1] + [0] * (len(pieces) - 1)
    emit(ids, labels, weights)
  return {k: np.asarray(v, np.float32 if k == "label_weights" else np.int32) for k, v in rows.items()}


def _context_words(context: str):
  """Whitespace words of the context with their character spans (as google-research/bert's run_squad)."""
  words, spans, start = [], [], None
  for i, ch in enumerate(context + " "):
    if ch.isspace():
      if start is not None:
        words.append(context[start:i])
        spans.append((start, i))
        start = None
    elif start is None:
      start = i
  return words, spans


def encode_word_with_offsets(tok, word: str) -> tuple[list[int], list[tuple[int, int]]]:
  """encode_word's pieces and each one's (start, end) characters in `word`."""
  if tok.kind == "bpe":
    ids, offsets = tok.encode_with_offsets(" " + word)
    offsets = [(s - 1, e - 1) for s, e in offsets]  # the added space is not in the word
  else:
    ids, offsets = tok.encode_with_offsets(word)
  if not ids:
    return [tok.unk_id], [(0, len(word))]
  clip = lambda x: min(max(x, 0), len(word))
  return ids, [(clip(s), clip(e)) for s, e in offsets]


def _context_tokens(tok, context: str) -> tuple[list[int], list[tuple[int, int]]]:
  """The context's token ids, word by word, and each token's (start, end) characters in the context."""
  ids, chars = [], []
  for word, (w0, _) in zip(*_context_words(context)):
    pieces, offsets = encode_word_with_offsets(tok, word)
    ids += pieces
    chars += [(w0 + s, w0 + e) for s, e in offsets]
  return ids, chars


def _answer_tokens(example: dict, token_chars) -> tuple[int, int] | None:
  """(first, last) context tokens overlapping the first answer's characters, or None (no answer, or none
  overlapping): the answer's own sub-tokens, so "Tesla" in "Tesla's" is labelled without the "'s"."""
  if example["answer_start"] < 0 or not example["answers"]:
    return None
  a0 = example["answer_start"]
  a1 = a0 + len(example["answers"][0])
  hit = [t for t, (s, e) in enumerate(token_chars) if s < a1 and e > a0]
  return (hit[0], hit[-1]) if hit else None


def _windows(num_tokens: int, window: int, doc_stride: int) -> list[range]:
  """Context windows of at most `window` tokens, starting min(doc_stride, window) tokens apart, so no token is
  left out (run_squad's rule) and the last ends at the context's end."""
  chunks, start = [], 0
  while True:
    chunks.append(range(start, min(start + window, num_tokens)))
    if start + window >= num_tokens:
      return chunks
    start += min(doc_stride, window)


def _max_context_window(chunks: list[range], num_tokens: int) -> np.ndarray:
  """For each token, the window giving it the most context: the largest min(left, right) context, plus 0.01 per
  window token, the first window on a tie (run_squad's _check_is_max_context)."""
  best, best_score = np.zeros(num_tokens, np.int64), np.full(num_tokens, -np.inf)
  for c, chunk in enumerate(chunks):
    t = np.arange(chunk.start, chunk.stop)
    score = np.minimum(t - chunk.start, chunk.stop - 1 - t) + 0.01 * len(chunk)
    better = score > best_score[t]
    best[t[better]], best_score[t[better]] = c, score[better]
  return best


def qa_features(examples, tok, max_seq_length: int, doc_stride: int, max_query_length: int) -> dict:
  """Windows of the context (_windows); each window is [CLS] question [SEP] window [SEP]."""
  rows = {k: [] for k in ("input_ids", "input_mask", "segment_ids", "start_positions", "end_positions",
                          "example_index", "token_start", "token_end", "max_context")}
  for index, ex in enumerate(examples):
    question = tok.encode(ex["question"])[:max_query_length]
    token_ids, token_chars = _context_tokens(tok, ex["context"])
    answer_tokens = _answer_tokens(ex, token_chars)
    between = pair_separator(tok)
    window = max_seq_length - len(question) - 2 - len(between)
    if window < 1:
      raise ValueError(f"max_seq_length {max_seq_length} leaves no room for the context after a "
                       f"{len(question)}-token question; raise it or lower max_query_length")
    chunks = _windows(len(token_ids), window, doc_stride)
    best = _max_context_window(chunks, len(token_ids))
    offset = len(question) + 1 + len(between)
    for c, chunk in enumerate(chunks):
      ids = [tok.cls_id] + question + between + token_ids[chunk.start:chunk.stop] + [tok.sep_id]
      seg = [0] * offset + [1] * (len(ids) - offset)
      starts = [-1] * offset + [token_chars[t][0] for t in chunk] + [-1]
      ends = [-1] * offset + [token_chars[t][1] for t in chunk] + [-1]
      max_context = [0] * offset + [int(best[t] == c) for t in chunk] + [0]
      s = e = 0
      if answer_tokens and chunk.start <= answer_tokens[0] and answer_tokens[1] < chunk.stop:
        s, e = answer_tokens[0] - chunk.start + offset, answer_tokens[1] - chunk.start + offset
      for key, value in (("input_ids", _pad(ids, max_seq_length)), ("input_mask", _pad([1] * len(ids), max_seq_length)),
                         ("segment_ids", _pad(seg, max_seq_length)), ("start_positions", s), ("end_positions", e),
                         ("example_index", index), ("token_start", _pad(starts, max_seq_length, -1)),
                         ("token_end", _pad(ends, max_seq_length, -1)),
                         ("max_context", _pad(max_context, max_seq_length))):
        rows[key].append(value)
  return {k: np.asarray(v, np.int32) for k, v in rows.items()}


def qa_decode(examples, features, start_logits, end_logits, max_answer_tokens: int = 30,
              null_answers: bool = False) -> dict:
  """Best span over all windows of each example -> {id: answer text from the original context}, as run_squad:
  a span starts at a token in the window that gives it the most context, ends at or after its start, within
  max_answer_tokens. null_answers (SQuAD 2.0): "" wherever [CLS]'s score (start + end logit; the lowest over
  the example's windows) beats the best span's."""
  best, null = {}, {}
  for f in range(len(start_logits)):
    ex = int(features["example_index"][f])
    null[ex] = min(null.get(ex, np.inf), float(start_logits[f][0] + end_logits[f][0]))
    context = features["token_start"][f] >= 0
    starts, ends = np.flatnonzero(context & (features["max_context"][f] > 0)), np.flatnonzero(context)
    s_top = starts[np.argsort(start_logits[f][starts])[::-1][:20]]
    e_top = ends[np.argsort(end_logits[f][ends])[::-1][:20]]
    for s in s_top:
      for e in e_top:
        if s <= e < s + max_answer_tokens:
          score = float(start_logits[f][s] + end_logits[f][e])
          if ex not in best or score > best[ex][0]:
            best[ex] = (score, int(features["token_start"][f][s]), int(features["token_end"][f][e]))
  out = {}
  for i, ex in enumerate(examples):
    if i not in best or (null_answers and null[i] > best[i][0]):
      out[ex["id"]] = ""
    else:
      out[ex["id"]] = ex["context"][best[i][1]:best[i][2]]
  return out


class TrainOrder:
  """Which feature rows make the global batch of each train step: a pure function of (seed, step).

  Epoch e shuffles the rows with a generator seeded by (seed, e) and takes full batches in that order (the
  remainder is dropped), so step s reads epoch s // steps_per_epoch at position s % steps_per_epoch. The
  iterator's whole state is therefore the step the train state already checkpoints: a resume at step s
  reads exactly the batches the uninterrupted run read, with nothing else to save.
  """

  def __init__(self, num_rows: int, batch_size: int, seed: int):
    if num_rows < batch_size:
      raise ValueError(f"{num_rows} train rows make no batch of {batch_size}; lower train.batch_size")
    self.num_rows, self.batch_size, self.seed = num_rows, batch_size, seed
    self.steps_per_epoch = num_rows // batch_size
    self._epoch, self._order = None, None

  def position(self, step: int) -> dict:
    """The iterator state at a step, as a checkpoint would record it."""
    return {"seed": self.seed, "epoch": step // self.steps_per_epoch, "batch": step % self.steps_per_epoch}

  def rows(self, step: int) -> np.ndarray:
    """Row indices of the global batch that train step `step` (0-based) reads."""
    where = self.position(step)
    if where["epoch"] != self._epoch:
      self._epoch = where["epoch"]
      self._order = np.random.default_rng((self.seed, self._epoch)).permutation(self.num_rows)
    start = where["batch"] * self.batch_size
    return self._order[start:start + self.batch_size]


# Feature keys that decoding and metrics read, never the model.
DECODE_KEYS = ("example_index", "token_start", "token_end", "max_context")


def featurize(spec: TaskSpec, examples, tok, max_seq_length: int, doc_stride: int = 128,
              max_query_length: int = 64) -> dict:
  if spec.kind in ("classification", "regression"):
    return classification_features(examples, tok, max_seq_length, spec.kind == "regression")
  if spec.kind == "tagging":
    return tagging_features(examples, tok, max_seq_length)
  if spec.kind == "multiple_choice":
    return multiple_choice_features(examples, tok, max_seq_length)
  return qa_features(examples, tok, max_seq_length, doc_stride, max_query_length)


# ---- the offline demo task ------------------------------------------------------------------------------

DEMO_FAMILIES = ("asyncio", "email", "multiprocessing", "unittest", "xml", "importlib", "concurrent", "http",
                 "urllib", "json", "logging", "sqlite3", "ctypes", "tkinter", "curses", "encodings")


def make_pydocs_family_task(output_dir: str, eval_fraction: float = 0.2, seed: int = 0,
                            min_examples: int = 40) -> dict:
  """Writes train.jsonl / eval.jsonl: a stdlib docstring paragraph -> the package it comes from.

  Real text, offline: prose paragraphs of the docstrings in the standard library's packages (the same
  prose filter as the pydocs corpus). Whole modules go to eval by a hash of their path, so no module
  has paragraphs on both sides. Packages with fewer than min_examples paragraphs are left out.
  """
  root = Path(sysconfig.get_paths()["stdlib"])
  by_family = {}
  for family in DEMO_FAMILIES:
    for path in sorted((root / family).rglob("*.py")) if (root / family).is_dir() else []:
      if "test" in path.relative_to(root).parts[1:-1] or "tests" in path.relative_to(root).parts:
        continue
      try:
        tree = ast.parse(path.read_bytes())
      except (SyntaxError, ValueError):
        continue
      nodes = [n for n in ast.walk(tree) if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                                            ast.AsyncFunctionDef))]
      module = str(path.relative_to(root))
      for n in nodes:
        doc = ast.get_docstring(n, clean=False)
        for para in corpora._prose_paragraphs(doc or ""):
          by_family.setdefault(family, []).append((module, para))
  families = sorted(f for f, rows in by_family.items() if len(rows) >= min_examples)
  os.makedirs(output_dir, exist_ok=True)
  counts = {"train": 0, "eval": 0}
  with open(os.path.join(output_dir, "train.jsonl"), "w") as train, open(os.path.join(output_dir, "eval.jsonl"),
                                                                         "w") as evals:
    for family in families:
      for module, para in by_family[family]:
        h = int.from_bytes(hashlib.blake2b(f"{seed}:{module}".encode(), digest_size=8).digest(), "little") / 2**64
        split = "eval" if h < eval_fraction else "train"
        (evals if split == "eval" else train).write(json.dumps({"text": para, "label": family}) + "\n")
        counts[split] += 1
  info = {"families": families, **counts}
  with open(os.path.join(output_dir, "task.json"), "w") as f:
    json.dump(info, f, indent=2)
  return info
