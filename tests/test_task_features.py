"""Fine-tuning features, decoding and scoring without a pretrained model: QA windows and spans (run_squad's rules,
SQuAD 2.0's empty answers), integer label sets, entities per sentence, and an eval loss free of padding rows."""
import dataclasses
import functools
import json

import flax.linen as nn
import jax
import numpy as np
import pytest

from bert_jax.core import configlib, sharding
from bert_jax.data import tokenizer as tokenizer_lib
from bert_jax.finetune import heads, task_metrics, tasks
from bert_jax.trainers import finetune
from train_helpers import SMALL

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


class WordTok:
  """One piece per whitespace word (its id from the word), with character offsets: long contexts made cheaply."""
  cls_id, sep_id, unk_id, kind = 2, 3, 1, "wordpiece"

  def encode(self, text):
    return self.encode_with_offsets(text)[0]

  def encode_with_offsets(self, text):
    words = text.split()
    offsets, at = [], 0
    for w in words:
      at = text.index(w, at)
      offsets.append((at, at + len(w)))
      at += len(w)
    return [5 + int(w[1:]) % 50 if w[1:].isdigit() else 4 for w in words], offsets


@pytest.fixture(scope="module")
def wordpiece(tmp_path_factory):
  """A real WordPiece tokenizer (HF tokenizers, BERT's normalizer and punctuation split) over a small vocab.txt."""
  words = ("the engineer tesla lab burned down in it was an anglo saxon kingdom war lasted from 1850 1855 total "
           "he born paris france ' s - , . what who when where").split()
  path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
  path.write_text("\n".join(SPECIALS + words) + "\n")
  return tokenizer_lib.load(str(path), True)


def _oracle_logits(features):
  """Start/end logits peaked on each row's labelled span."""
  start = np.full(features["input_ids"].shape, -10.0)
  end = np.full(features["input_ids"].shape, -10.0)
  rows = np.arange(len(start))
  start[rows, features["start_positions"]] = 10.0
  end[rows, features["end_positions"]] = 10.0
  return start, end


def test_qa_windows_keep_every_token_when_the_stride_is_longer_than_a_window():
  context = " ".join(f"w{i}" for i in range(300))
  answer_start = context.index("w97 ")
  ex = {"id": "x", "question": "w1 w2", "context": context, "answers": ["w97 w98"], "answer_start": answer_start}
  # window: 32 - 2 question tokens - [CLS] [SEP] [SEP] = 27 context tokens, each start min(128, 27) after the last
  feats = tasks.qa_features([ex], WordTok(), max_seq_length=32, doc_stride=128, max_query_length=8)
  covered = set()
  for starts in feats["token_start"]:
    covered |= {int(s) for s in starts if s >= 0}
  word_starts = _word_starts(context)
  assert covered == set(word_starts)
  assert len(feats["input_ids"]) == -(-300 // 27)
  labelled = np.flatnonzero(feats["start_positions"] > 0)
  assert len(labelled) == 1
  f = labelled[0]
  s, e = feats["token_start"][f][feats["start_positions"][f]], feats["token_end"][f][feats["end_positions"][f]]
  assert context[s:e] == "w97 w98"
  assert sorted(_max_context_starts(feats)) == word_starts  # each token has one window of most context


def _word_starts(text):
  return [i for i, ch in enumerate(text) if ch != " " and (i == 0 or text[i - 1] == " ")]


def _max_context_starts(feats):
  """The first character of every token flagged max_context, over all windows."""
  return [int(s) for starts, flags in zip(feats["token_start"], feats["max_context"])
          for s, m in zip(starts, flags) if s >= 0 and m]


def test_qa_overlapping_windows_label_the_answer_and_flag_the_middle_window():
  context = " ".join(f"w{i}" for i in range(40))
  ex = {"id": "x", "question": "where", "context": context, "answers": ["w25 w26"],
        "answer_start": context.index("w25")}
  feats = tasks.qa_features([ex], WordTok(), max_seq_length=16, doc_stride=6, max_query_length=4)
  assert len(feats["input_ids"]) > 3  # windows of 12 tokens, 6 apart: every token in two
  for f in np.flatnonzero(feats["start_positions"] > 0):
    s, e = feats["token_start"][f][feats["start_positions"][f]], feats["token_end"][f][feats["end_positions"][f]]
    assert context[s:e] == "w25 w26"
  # w15 sits in windows [6, 18) (left 9, right 2) and [12, 24) (left 3, right 8): its max context is the second
  where = context.index("w15")
  flagged = [f for f in range(len(feats["input_ids"]))
             if any(s == where and m for s, m in zip(feats["token_start"][f], feats["max_context"][f]))]
  assert flagged == [2] and sorted(_max_context_starts(feats)) == _word_starts(context)


def test_qa_decode_starts_only_where_the_window_gives_the_most_context():
  context = " ".join(f"w{i}" for i in range(40))
  ex = {"id": "x", "question": "where", "context": context, "answers": ["w19"], "answer_start": context.index("w19")}
  feats = tasks.qa_features([ex], WordTok(), max_seq_length=16, doc_stride=6, max_query_length=4)
  start, end = np.full(feats["input_ids"].shape, -10.0), np.full(feats["input_ids"].shape, -10.0)
  column = lambda f, word: list(feats["token_start"][f]).index(context.index(word))
  # Windows of 12 tokens, 6 apart. Window 1 ([6, 18)) holds w17 at its right edge, window 2 ([12, 24)) holds w17
  # and w19 with context on both sides. w17 alone in window 1 scores highest, but its most context is in window 2,
  # so no span may start there in window 1 (run_squad); w19 in window 2 wins.
  start[1, column(1, "w17")] = end[1, column(1, "w17")] = 9.0
  start[2, column(2, "w19")] = end[2, column(2, "w19")] = 5.0
  assert tasks.qa_decode([ex], feats, start, end) == {"x": "w19"}


def test_qa_answers_inside_words_are_their_own_subtokens(wordpiece):
  cases = [("The engineer Tesla's lab burned down.", "Tesla"), ("It was an Anglo-Saxon kingdom.", "Saxon"),
           ("The war lasted from 1850-1855 in total.", "1855"), ("He was born in Paris, France.", "Paris")]
  examples = [{"id": str(i), "question": "what", "context": c, "answers": [a], "answer_start": c.index(a)}
              for i, (c, a) in enumerate(cases)]
  feats = tasks.qa_features(examples, wordpiece, max_seq_length=32, doc_stride=16, max_query_length=8)
  answers = tasks.qa_decode(examples, feats, *_oracle_logits(feats))
  assert answers == {str(i): a for i, (_, a) in enumerate(cases)}
  assert task_metrics.squad_scores(answers, {e["id"]: e["answers"] for e in examples})["exact_match"] == 100.0


def test_squad_v2_answers_unanswerable_questions_with_the_empty_string():
  context = "w1 w2 w3 w4"
  examples = [{"id": "a", "question": "w1", "context": context, "answers": ["w3"], "answer_start": 6},
              {"id": "b", "question": "w2", "context": context, "answers": [], "answer_start": -1}]
  feats = tasks.qa_features(examples, WordTok(), max_seq_length=16, doc_stride=8, max_query_length=4)
  assert (feats["start_positions"][1], feats["end_positions"][1]) == (0, 0)  # trained to point at [CLS]
  start, end = _oracle_logits(feats)
  start[1, 0] = end[1, 0] = 12.0  # [CLS] beats every span of b; a's span beats its [CLS]
  assert tasks.qa_decode(examples, feats, start, end, null_answers=True) == {"a": "w3", "b": ""}
  v1 = tasks.qa_decode(examples, feats, start, end)
  assert v1["a"] == "w3" and v1["b"] != ""  # SQuAD 1.1 always answers with a span
  golds = {"a": ["w3"], "b": []}
  assert task_metrics.squad_scores({"a": "w3", "b": ""}, golds) == {"exact_match": 100.0, "f1": 100.0}
  assert task_metrics.squad_scores({"a": "w3", "b": "w1"}, golds) == {"exact_match": 50.0, "f1": 50.0}


def test_a_question_without_an_answer_needs_squad_v2(tmp_path):
  path = tmp_path / "qa.jsonl"
  path.write_text(json.dumps({"id": "q", "question": "who", "context": "nobody here",
                              "answers": {"text": [], "answer_start": []}}) + "\n")
  spec = tasks.file_spec("f", "qa", "question,context", "answers", "", "", str(path))
  with pytest.raises(ValueError, match=r"qa.jsonl example 0: question without an answer; .* task.metric=squad_v2"):
    tasks.read_file(spec, str(path))
  v2 = tasks.file_spec("f", "qa", "question,context", "answers", "", "squad_v2", str(path))
  assert tasks.read_file(v2, str(path))[0]["answers"] == []
  with pytest.raises(ValueError, match=r"task.metric='mcc' does not score a qa task"):
    tasks.file_spec("f", "qa", "question,context", "answers", "", "mcc", str(path))


def test_a_field_the_config_names_but_a_file_lacks_is_refused_naming_the_config_key(tmp_path):
  pairs = tmp_path / "pairs.jsonl"
  pairs.write_text(json.dumps({"sentence1": "a b", "sentence_2": "c d", "label": "yes", "id": 0}) + "\n")
  # was a KeyError: 'lab' from collecting the label set
  with pytest.raises(ValueError, match=r"pairs.jsonl example 0: no 'lab' field \(it has \['id', 'label', 'sentence1', "
                                       r"'sentence_2'\]\); set --config.task.label_key to the field that holds it"):
    tasks.file_spec("f", "classification", "sentence1,sentence2", "lab", "", "", str(pairs))
  # was label None "not in the label set", naming the wrong fix
  spec = tasks.file_spec("f", "classification", "sentence1", "lab", "yes,no", "", str(pairs))
  with pytest.raises(ValueError, match=r"no 'lab' field .* set --config.task.label_key"):
    tasks.read_file(spec, str(pairs))
  # a misspelled second text field silently made every pair a single sentence
  spec = tasks.file_spec("f", "classification", "sentence1,sentence2", "label", "yes,no", "", str(pairs))
  with pytest.raises(ValueError, match=r"no 'sentence2' field .* set --config.task.text_keys to the field"):
    tasks.read_file(spec, str(pairs))
  qa = tmp_path / "qa.jsonl"
  qa.write_text(json.dumps({"id": "q", "query": "who", "context": "w1 w2", "answers": ["w1"]}) + "\n")
  spec = tasks.file_spec("f", "qa", "question,context", "answers", "", "", str(qa))
  with pytest.raises(ValueError, match=r"qa.jsonl example 0: no 'question' field"):  # was the question "None"
    tasks.read_file(spec, str(qa))
  spec = tasks.file_spec("f", "qa", "query,context", "answer", "", "squad_v2", str(qa))
  with pytest.raises(ValueError, match=r"no 'answer' field .* set --config.task.label_key"):  # was unanswerable
    tasks.read_file(spec, str(qa))


def test_tagging_from_a_tsv_cell_is_refused_instead_of_tagging_its_characters(tmp_path):
  tsv = tmp_path / "ner.tsv"
  tsv.write_text("words\ttags\nEU\tB-ORG\n")  # one word whose letters would each be tagged
  with pytest.raises(ValueError, match=r"ner.tsv example 0: the labels are the string 'B-ORG', not a list; tagging "
                                       r"reads .jsonl files whose fields hold lists"):
    tasks.file_spec("f", "tagging", "words", "tags", "", "", str(tsv))
  spec = tasks.file_spec("f", "tagging", "words", "tags", "B-ORG,O", "", str(tsv))
  with pytest.raises(ValueError, match=r"the words are the string 'EU', not a list"):
    tasks.read_file(spec, str(tsv))


def test_a_tfds_task_without_prepared_data_names_how_to_prepare_it(tmp_path):
  # was TFDS's AssertionError, whose advice (tfds.load(download=True)) no flag can follow
  with pytest.raises(FileNotFoundError, match=rf"TFDS task glue/sst2 is not prepared in {tmp_path}\. Prepare it "
                                              r"once .*tfds.builder\('glue/sst2', data_dir='DIR'\)\.download_and_"
                                              r"prepare\(\)\", then pass --config.task.data_dir=DIR"):
    tasks.read_tfds(tasks.TFDS_TASKS["glue/sst2"], "train", str(tmp_path))


def test_integer_labels_are_named_in_numeric_order(tmp_path):
  path = tmp_path / "train.jsonl"
  path.write_text("".join(json.dumps({"text": f"t{i}", "label": i + 1}) + "\n" for i in range(11)))  # 1..11
  spec = tasks.file_spec("f", "classification", "text", "label", "", "", str(path))
  assert spec.label_names == tuple(str(i) for i in range(1, 12))
  examples = tasks.read_file(spec, str(path))
  assert [spec.label_names[e["label"]] for e in examples] == [str(i) for i in range(1, 12)]


def test_entities_end_where_their_sentence_ends():
  names = ("O", "B-PER", "I-PER")
  gold = [0, 1, 1, 2]  # sentence 0: O B-PER | sentence 1: B-PER I-PER
  pred = [0, 1, 2, 2]  # sentence 1 starts with I-PER: an entity of its own, not the end of sentence 0's
  sentences = [0, 0, 1, 1]
  assert task_metrics.tagging_scores(pred, gold, names, sentences)["f1"] == 1.0
  assert task_metrics.tagging_scores(pred, gold, names)["f1"] == 0.0  # as one sentence the spans differ
  feats = tasks.tagging_features([{"words": ["w1", "w2"], "labels": [0, 1]}, {"words": ["w3"], "labels": [1]}],
                                 WordTok(), 8)
  assert list(feats["example_index"]) == [0, 1]


def test_eval_loss_counts_each_row_once_whatever_the_batch_size():
  spec = tasks.TaskSpec("t", "classification", label_names=("a", "b"))
  model = heads.MODELS["classification"](SMALL, num_labels=2)
  rng = np.random.default_rng(0)
  n = 65
  features = {"input_ids": rng.integers(5, 1024, (n, 16)).astype(np.int32),
              "input_mask": np.ones((n, 16), np.int32), "segment_ids": np.zeros((n, 16), np.int32),
              "label": rng.integers(0, 2, n).astype(np.int32)}
  params = jax.jit(model.init)(jax.random.key(0), *(features[k][:1] for k in ("input_ids", "input_mask",
                                                                                "segment_ids")))["params"]
  mesh = sharding.create_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
  predict_fn = jax.jit(functools.partial(finetune.predict_step, model=model, spec=spec))
  losses = []
  for batch_size in (n, 8, 64):  # no padding, 7 rows of padding, 63
    result, predictions = finetune.evaluate(predict_fn, params, spec, None, features, batch_size, mesh)
    losses.append(result["eval_loss"])
    assert len(predictions) == n
  assert losses[1] == pytest.approx(losses[0], rel=1e-5) and losses[2] == pytest.approx(losses[0], rel=1e-5)


def test_batch_sizes_must_split_over_the_batch_devices():
  mesh = sharding.create_mesh({"data": 4, "fsdp": 2, "tensor": 1}, devices=jax.devices())
  train = {"batch_size": 32, "eval_batch_size": 12}
  with pytest.raises(ValueError, match=r"train.eval_batch_size=12 must divide by the batch-parallel devices "
                                       r"\(data x fsdp = 8\)"):
    finetune.check_batch_sizes(train, mesh)
  finetune.check_batch_sizes({"batch_size": 32, "eval_batch_size": 16}, mesh)


def test_classify_keeps_a_tab_inside_the_text_of_a_single_text_task(wordpiece):
  """`predict classify` splits a line at its tab into a pair only for pair tasks: a single-text task never saw
  a second segment, so its lines are whole texts (a tab is whitespace to the tokenizer, as in its JSONL texts)."""
  from bert_jax.finetune import predict
  spec = tasks.TaskSpec("t", "classification", ("text",), label_names=("a", "b"))
  model = heads.MODELS["classification"](SMALL, num_labels=2)
  ids = np.zeros((1, 16), np.int32)
  params = jax.jit(model.init)(jax.random.key(0), ids, ids, ids)["params"]
  info = {"spec": spec, "model_config": SMALL, "max_seq_length": 16}
  tabbed, spaced = predict.classify(params, info, wordpiece, ["the engineer\twas born in paris",
                                                              "the engineer was born in paris"])
  assert tabbed["text"] == "the engineer\twas born in paris"
  np.testing.assert_allclose(list(tabbed["scores"].values()), list(spaced["scores"].values()), rtol=1e-6)
  pair = dataclasses.replace(spec, text_keys=("text_a", "text_b"))
  tabbed, spaced = predict.classify(params, {**info, "spec": pair}, wordpiece, ["the engineer\twas born in paris",
                                                                                "the engineer was born in paris"])
  assert tabbed["scores"] != spaced["scores"]  # a pair task reads the tab as the segment boundary


@pytest.mark.parametrize("kind", ["classification", "tagging"])
def test_a_label_set_of_one_fails_naming_the_fix(tmp_path, kind):
  """One class trains a softmax over one logit: zero loss, perfect accuracy, and an HF export that transformers
  reads as regression (num_labels 1)."""
  path = tmp_path / "train.jsonl"
  label = ["O", "O"] if kind == "tagging" else "spam"
  path.write_text("".join(json.dumps({"text": ["w1", "w2"] if kind == "tagging" else "w1", "label": label}) + "\n"
                          for _ in range(3)))
  with pytest.raises(ValueError, match=r"1 label \(\['(O|spam)'\]\) but needs at least 2: list the whole label set "
                                       r"in task.label_names"):
    tasks.file_spec("f", kind, "text", "label", "", "", str(path))
  with pytest.raises(ValueError, match=r"1 label"):
    tasks.file_spec("f", kind, "text", "label", "spam", "", str(path))
  assert tasks.file_spec("f", kind, "text", "label", "spam,ham", "", str(path)).num_labels == 2


def _finetuned_workdir(path, tok, spec, max_seq_length=16):
  """A fine-tuning workdir as the trainer leaves it (finetuned_model.json and params/), with a SMALL model's
  fresh params: enough for `predict` to run."""
  import types
  from bert_jax.core import checkpoint as checkpoint_lib
  from bert_jax.finetune import predict
  model = heads.MODELS[spec.kind](SMALL, num_labels=spec.num_labels)
  ids = np.zeros((1, max_seq_length), np.int32)
  params = nn.unbox(jax.jit(model.init)(jax.random.key(0), ids, ids, ids)["params"])
  data = types.SimpleNamespace(max_seq_length=max_seq_length, doc_stride=8, max_query_length=4)
  predict.write_model_info(str(path), SMALL, spec, tok.vocab_file, tok.lower_case, data)
  checkpoint_lib.save_params(str(path / "params"), jax.device_get(params))
  return str(path)


def test_predict_refuses_a_batch_size_below_one(tmp_path, wordpiece):
  from bert_jax.finetune import predict
  workdir = _finetuned_workdir(tmp_path / "run", wordpiece, tasks.TaskSpec("t", "classification", ("text",),
                                                                           label_names=("a", "b")))
  lines = tmp_path / "lines.txt"
  lines.write_text("the engineer\n")
  for batch_size in (0, -4):  # else range()'s "arg 3 must not be zero", or a tree_map of no batches
    with pytest.raises(ValueError, match=rf"--batch_size={batch_size} must be at least 1"):
      predict.run("classify", workdir, str(lines), str(tmp_path / "out.jsonl"), batch_size=batch_size)


def test_qa_questions_sharing_an_id_fail_naming_it(tmp_path):
  """Answers and gold answers are keyed by id: a repeated id would score (and write) only the last of its questions."""
  path = tmp_path / "qa.jsonl"
  rows = [{"id": i, "question": q, "context": "w1 w2 w3", "answers": {"text": [a], "answer_start": [s]}}
          for i, q, a, s in (("p1", "first?", "w1", 0), ("p1", "second?", "w3", 6), ("p2", "third?", "w2", 3))]
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  spec = tasks.file_spec("f", "qa", "question,context", "answers", "", "", str(path))
  with pytest.raises(ValueError, match=r"qa.jsonl example 1: id 'p1' is also example 0's; .* unique"):
    tasks.read_file(spec, str(path))


def test_pairs_are_cut_as_the_exported_hf_tokenizer_cuts_them(wordpiece, tmp_path):
  """Segments too long together are cut as HF's longest_first cuts them (the odd token of an odd budget to the
  longer segment, to the second at a tie), so an exported tokenizer gives the features fine-tuning trained on.
  Popping from the longer one token at a time gave the odd token to the other segment."""
  import transformers
  from bert_jax.data import hf_tokenizer
  hf_tokenizer.save_hf_tokenizer(wordpiece.vocab_file, True, str(tmp_path), 64)
  hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
  pairs = [("the engineer tesla lab burned down", "it was an anglo saxon kingdom"),  # 6 and 6 words: a tie
           ("the war lasted from 1850", "what who when where he born paris france"),
           ("he was born in paris , france .", "the lab"),
           ("he was born in paris , france .", "the war lasted from 1850")]  # 8 and 5: the first is longer
  for max_len in (9, 10, 11, 12, 64):
    features = tasks.classification_features([{"text_a": a, "text_b": b, "label": 0} for a, b in pairs], wordpiece,
                                             max_len, False)
    for row, (a, b) in enumerate(pairs):
      want = hf(a, b, truncation="longest_first", max_length=max_len)["input_ids"]
      assert features["input_ids"][row][:len(want)].tolist() == want, (max_len, a, b)
      assert features["input_mask"][row].sum() == len(want)


@pytest.mark.parametrize("field, size", [("batch_size", 0), ("eval_batch_size", -1)])
def test_a_batch_size_below_one_is_refused_before_anything_is_read(tmp_path, field, size):
  # It used to pass the device check (0 divides by anything), then fail in TrainOrder's division or, for the eval
  # batch, after all the training, in a tree_map over no eval batches.
  config = configlib.load("finetune", {f"train.{field}": size, "init_checkpoint": str(tmp_path / "no_such_run"),
                                       "task.name": "files", "task.train_file": str(tmp_path / "train.jsonl"),
                                       "task.eval_file": str(tmp_path / "eval.jsonl")})
  with pytest.raises(ValueError, match=rf"train.{field}={size} must be at least 1"):
    finetune.finetune(config, str(tmp_path / "ft"))


# ---- multiple choice ------------------------------------------------------------------------------------------

def test_each_choice_is_the_pair_the_exported_hf_tokenizer_makes(wordpiece, tmp_path):
  """A choice's row is [CLS] context [SEP] question choice [SEP], cut as HF cuts the pair, so the exported
  tokenizer's pairs give an HF ForMultipleChoice the rows fine-tuning trained on; an example with fewer choices
  than the most gets [CLS][SEP] rows that choice_mask marks as no choice."""
  import transformers
  from bert_jax.data import hf_tokenizer
  hf_tokenizer.save_hf_tokenizer(wordpiece.vocab_file, True, str(tmp_path), 64)
  hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
  examples = [{"context": "the engineer tesla was born in paris , france .", "question": "he was",
               "choices": ["born in 1850", "an anglo saxon kingdom", "the lab"], "label": 0},
              {"context": "the war lasted from 1850", "question": None, "choices": ["to 1855", "it burned down"],
               "label": 1}]
  for max_len in (10, 64):
    features = tasks.multiple_choice_features(examples, wordpiece, max_len)
    assert features["input_ids"].shape == (2, 3, max_len) and features["segment_ids"].shape == (2, 3, max_len)
    assert features["choice_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert features["label"].tolist() == [0, 1]
    for i, ex in enumerate(examples):
      for j, choice in enumerate(ex["choices"]):
        second = f"{ex['question']} {choice}" if ex["question"] else choice
        want = hf(ex["context"], second, truncation="longest_first", max_length=max_len)
        n = len(want["input_ids"])
        assert features["input_ids"][i, j, :n].tolist() == want["input_ids"], (max_len, i, j)
        assert features["segment_ids"][i, j, :n].tolist() == want["token_type_ids"]
        assert features["input_mask"][i, j].sum() == n
    assert features["input_ids"][1, 2, :3].tolist() == [wordpiece.cls_id, wordpiece.sep_id, 0]


def test_a_choice_fills_the_questions_blank_or_follows_it():
  """RACE's cloze questions mark the answer's place with underscores; other questions (SWAG's sent2) are followed
  by the choice. Underscores inside a word (an identifier) are no blank."""
  assert tasks.choice_segment("The passage mainly tells us _ .", "a story") == "The passage mainly tells us a story ."
  assert tasks.choice_segment("He left because ___.", "rain") == "He left because rain."
  assert tasks.choice_segment("A man sits on a roof. He", "starts pulling.") == "A man sits on a roof. He starts pulling."
  assert tasks.choice_segment("What does __init__ do?", "builds it") == "What does __init__ do? builds it"
  assert tasks.choice_segment(None, "builds it") == "builds it"


def test_choices_come_from_a_list_field_or_one_field_each_and_labels_from_indices_or_named_positions(tmp_path):
  listed = tmp_path / "listed.jsonl"
  listed.write_text(json.dumps({"ctx": "a b", "q": "c", "options": ["d", "e", "f"], "answer": 2}) + "\n" +
                    json.dumps({"ctx": "g", "q": "", "options": ["h", "i"], "answer": "1"}) + "\n")
  spec = tasks.file_spec("f", "multiple_choice", "ctx,q", "answer", "", "", str(listed), "options")
  assert spec.num_labels == 1 and spec.metric == "accuracy"
  assert tasks.read_file(spec, str(listed)) == [
      {"context": "a b", "question": "c", "choices": ["d", "e", "f"], "label": 2},
      {"context": "g", "question": None, "choices": ["h", "i"], "label": 1}]
  columns = tmp_path / "swag.tsv"  # SWAG's layout: a column per ending; here labels named as letters
  columns.write_text("sent1\tending0\tending1\tending2\tlabel\nthe war\tended\tbegan\tlasted\tC\n")
  spec = tasks.file_spec("f", "multiple_choice", "sent1", "label", "A,B,C", "", str(columns), "ending0,ending1,ending2")
  assert tasks.read_file(spec, str(columns)) == [
      {"context": "the war", "question": None, "choices": ["ended", "began", "lasted"], "label": 2}]


def test_a_dict_of_choices_labels_them_itself(tmp_path):
  """CommonsenseQA's and ARC's layout: {"label": [...], "text": [...]}, the answer one of those labels."""
  path = tmp_path / "csqa.jsonl"
  path.write_text(json.dumps({"question": "Where is a lab?", "answerKey": "C",
                              "choices": {"label": ["A", "B", "C"], "text": ["sea", "sky", "campus"]}}) + "\n")
  spec = tasks.file_spec("f", "multiple_choice", "question", "answerKey", "", "", str(path), "choices")
  assert tasks.read_file(spec, str(path)) == [
      {"context": "Where is a lab?", "question": None, "choices": ["sea", "sky", "campus"], "label": 2}]
  path.write_text(json.dumps({"question": "q", "answerKey": "D", "choices": {"label": ["A", "B"], "text": ["x", "y"]}})
                  + "\n")
  with pytest.raises(ValueError, match=r"example 0: label 'D' is none of its choices' labels \['A', 'B'\]"):
    tasks.read_file(spec, str(path))
  path.write_text(json.dumps({"question": "q", "answerKey": "A", "choices": {"options": ["x", "y"]}}) + "\n")
  with pytest.raises(ValueError, match=r"a dict with keys \['options'\]; a dict of choices needs a 'text' list"):
    tasks.read_file(spec, str(path))


@pytest.mark.parametrize("row, choice_keys, label_names, error", [
    ({"ctx": "a", "options": ["b", "c"], "answer": 2}, "options", "",
     r"example 0: label 2 is not the index of one of its 2 choices \(0 to 1\); for labels such as A,B,C,D set "
     r"task.label_names"),
    ({"ctx": "a", "options": ["b", "c"], "answer": "C"}, "options", "A,B,C,D",
     r"example 0: label 'C' names none of its 2 choices \['A', 'B'\]"),
    ({"ctx": "a", "options": "b c", "answer": 0}, "options", "", r"the choices are the string 'b c', not a list"),
    ({"ctx": "a", "options": ["b"], "answer": 0}, "options", "", r"1 choice\(s\); .* needs at least 2"),
    ({"ctx": "a", "choices": ["b", "c"], "answer": 0}, "options", "",
     r"example 0: no 'options' field .* set --config.task.choice_keys"),
])
def test_a_bad_multiple_choice_example_fails_naming_it(tmp_path, row, choice_keys, label_names, error):
  path = tmp_path / "train.jsonl"
  path.write_text(json.dumps(row) + "\n")
  spec = tasks.file_spec("f", "multiple_choice", "ctx", "answer", label_names, "", str(path), choice_keys)
  with pytest.raises(ValueError, match=error):
    tasks.read_file(spec, str(path))


def test_choice_keys_are_asked_for_by_multiple_choice_and_refused_elsewhere(tmp_path):
  path = tmp_path / "train.jsonl"
  path.write_text(json.dumps({"ctx": "a", "options": ["b", "c"], "answer": 0}) + "\n")
  with pytest.raises(ValueError, match=r"multiple_choice needs task.choice_keys"):
    tasks.file_spec("f", "multiple_choice", "ctx", "answer", "", "", str(path))
  with pytest.raises(ValueError, match=r"task.choice_keys='options' applies to task.kind=multiple_choice, not "
                                       r"classification"):
    tasks.file_spec("f", "classification", "ctx", "answer", "", "", str(path), "options")
  with pytest.raises(ValueError, match=r"task.text_keys='a,b,c': multiple_choice reads a context and, optionally"):
    tasks.file_spec("f", "multiple_choice", "a,b,c", "answer", "", "", str(path), "options")


def test_a_choice_slot_past_an_examples_choices_is_never_picked():
  spec = tasks.TaskSpec("t", "multiple_choice", ("context",), choice_keys=("choices",))
  logits = np.array([[0.5, 1.0, 9.0], [2.0, 0.0, 0.0]], np.float32)  # row 0's best score is in its empty slot
  batch = {"label": np.array([1, 0]), "choice_mask": np.array([[1, 1, 0], [1, 1, 1]])}
  loss, weight, preds = finetune.task_losses(spec, {"logits": logits}, batch)
  assert preds.tolist() == [1, 0] and weight.tolist() == [1, 1]
  real = np.log(np.exp(0.5) + np.exp(1.0)) - 1.0  # cross-entropy over row 0's two real choices
  np.testing.assert_allclose(loss, [real, np.log(np.exp(2.0) + 2.0) - 2.0], rtol=1e-6)
