"""Fine-tuning: metrics by hand, every task kind end to end from a real pretraining run, HF parity, bad input."""
import collections
import json
import os
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds

from bert_jax.core import configlib
from bert_jax.data import corpora
from bert_jax.data import tokenizer as tokenizer_lib
from bert_jax.finetune import task_metrics, tasks
from bert_jax.models.bert import BertConfig
from bert_jax.trainers import finetune
from train_helpers import pretrain_tiny



# ---- metrics against hand computations -------------------------------------------------------------------

def test_classification_metrics_by_hand():
  # tp=2 fp=1 fn=0: F1 = 2*2 / (2*2 + 1 + 0) = 0.8
  assert task_metrics.accuracy([1, 0, 1, 1], [1, 0, 0, 1]) == 0.75
  assert task_metrics.f1([1, 0, 1, 1], [1, 0, 0, 1], num_labels=2) == pytest.approx(0.8)
  # tp=2 fp=1 tn=2 fn=0: MCC = (2*2 - 1*0) / sqrt(3*2*3*2) = 4/6
  assert task_metrics.matthews([1, 1, 0, 0, 1], [1, 0, 0, 0, 1]) == pytest.approx(4 / 6)
  # three classes, macro F1: class 0: 1.0, class 1: 2/3, class 2: 2/3... computed per class by hand
  # preds [0,1,2,2] labels [0,1,1,2]: c0 tp1 -> 1; c1 tp1 fn1 -> 2/3; c2 tp1 fp1 -> 2/3
  assert task_metrics.f1([0, 1, 2, 2], [0, 1, 1, 2], num_labels=3) == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)


def test_correlation_metrics_by_hand():
  p, y = np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 4.0, 6.0, 9.0])
  pc, yc = p - p.mean(), y - y.mean()
  pearson = (pc @ yc) / np.sqrt((pc @ pc) * (yc @ yc))
  out = task_metrics.pearson_spearman(p, y)
  assert out["pearson"] == pytest.approx(pearson) and out["spearman"] == pytest.approx(1.0)


def test_tagging_and_squad_metrics_by_hand():
  names = ("O", "B-PER", "I-PER", "B-LOC")
  # gold entities: PER[0,2), LOC[3,4); predicted: PER[0,2) -> F1 = 2*1/(2+1)
  out = task_metrics.tagging_scores([1, 2, 0, 0], [1, 2, 0, 3], names)
  assert out["accuracy"] == 0.75 and out["f1"] == pytest.approx(2 / 3)
  # q1: "the Cat sat" normalises to "cat sat": exact. q2: {big, dog} vs {big, red, dog}: P=1, R=2/3, F1=0.8
  scores = task_metrics.squad_scores({"q1": "the Cat sat.", "q2": "a big dog"},
                                     {"q1": ["cat sat", "dog"], "q2": ["big red dog"]})
  assert scores["exact_match"] == pytest.approx(50.0) and scores["f1"] == pytest.approx(90.0)


# ---- task files from real text ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
  """A tiny model pretrained for a few steps on pydocs through the CLI (vocabulary 8000)."""
  return pretrain_tiny(tmp_path_factory.mktemp("pretrain"), steps=3)


@pytest.fixture(scope="module")
def sentences(pretrained):
  docs = corpora.from_spec("pydocs", cache_dir=os.path.join(pretrained, "data"))
  out = []
  for doc in docs.iter_documents(collections.Counter()):
    out += [s for s in doc if 30 < len(s) < 200]
    if len(out) > 400:
      return out
  return out


def _write_jsonl(path, rows):
  with open(path, "w") as f:
    for r in rows:
      f.write(json.dumps(r) + "\n")
  return str(path)


def _run(pretrained, workdir, **overrides):
  base = {"train.max_steps": 3, "train.batch_size": 8, "train.eval_batch_size": 16, "train.log_every": 1,
          "data.max_seq_length": 64, "model.hidden_dropout": 0.0}
  base.update(overrides)
  config = configlib.load("finetune", base)
  result = finetune.finetune(config, str(workdir), str(pretrained))
  with open(os.path.join(workdir, "eval_predictions.json")) as f:
    return result, json.load(f)


def test_sentence_pair_classification_end_to_end(pretrained, sentences, tmp_path):
  rows = [{"a": s, "b": sentences[i + 1], "label": "digit" if re.search(r"\d", s) else "none"}
          for i, s in enumerate(sentences[:60])]
  train, evals = _write_jsonl(tmp_path / "train.jsonl", rows[:40]), _write_jsonl(tmp_path / "eval.jsonl", rows[40:])
  result, preds = _run(pretrained, tmp_path / "run", **{
      "task.name": "files", "task.train_file": train, "task.eval_file": evals, "task.text_keys": "a,b",
      "task.label_names": "none,digit"})
  labels = np.array([0 if r["label"] == "none" else 1 for r in rows[40:]])
  preds = np.array(preds)
  assert len(preds) == 20
  assert result["accuracy"] == pytest.approx(np.mean(preds == labels))
  tp, fp, fn = np.sum((preds == 1) & (labels == 1)), np.sum((preds == 1) & (labels == 0)), np.sum(
      (preds == 0) & (labels == 1))
  assert result["f1"] == pytest.approx(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
  assert result["hf_max_logit_diff"] <= 1e-4  # exported BertForSequenceClassification matches
  assert os.path.exists(tmp_path / "run" / "hf" / "tokenizer.json")


def test_regression_from_tsv_end_to_end(pretrained, sentences, tmp_path):
  def write(path, part):
    with open(path, "w") as f:
      f.write("sentence1\tsentence2\tscore\n")
      for s, t in part:
        f.write(f"{s}\t{t}\t{len(s) / (len(s) + len(t)):.4f}\n")
    return str(path)
  pairs = list(zip(sentences[:60], sentences[60:120]))
  train, evals = write(tmp_path / "train.tsv", pairs[:40]), write(tmp_path / "eval.tsv", pairs[40:])
  result, preds = _run(pretrained, tmp_path / "run", **{
      "task.name": "files", "task.kind": "regression", "task.train_file": train, "task.eval_file": evals,
      "task.text_keys": "sentence1,sentence2", "task.label_key": "score"})
  y = np.array([round(len(s) / (len(s) + len(t)), 4) for s, t in pairs[40:]])
  p = np.array(preds)
  pc, yc = p - p.mean(), y - y.mean()
  assert result["pearson"] == pytest.approx((pc @ yc) / np.sqrt((pc @ pc) * (yc @ yc)), abs=1e-5)
  assert result["hf_max_logit_diff"] <= 1e-4


def _tags(words):
  tags, previous = [], False
  for w in words:
    cap = w[:1].isupper()
    tags.append(("I-CAP" if previous else "B-CAP") if cap else "O")
    previous = cap
  return tags


def test_token_tagging_end_to_end(pretrained, sentences, tmp_path):
  rows = [{"words": s.split(), "tags": _tags(s.split())} for s in sentences[:60]]
  rows[0] = {"words": sentences[0].split() * 12, "tags": _tags(sentences[0].split() * 12)}  # longer than a row
  train, evals = _write_jsonl(tmp_path / "train.jsonl", rows[:40]), _write_jsonl(tmp_path / "eval.jsonl", rows[40:])
  result, preds = _run(pretrained, tmp_path / "run", **{
      "task.name": "files", "task.kind": "tagging", "task.train_file": train, "task.eval_file": evals,
      "task.text_keys": "words", "task.label_key": "tags", "task.label_names": "O,B-CAP,I-CAP"})
  names = ("O", "B-CAP", "I-CAP")
  gold = [names.index(t) for r in rows[40:] for t in r["tags"]]
  assert len(preds) == len(gold)  # every word is scored once, on its first sub-token
  assert result["accuracy"] == pytest.approx(np.mean(np.array(preds) == np.array(gold)))
  assert result["f1"] == pytest.approx(task_metrics.tagging_scores(preds, gold, names)["f1"])
  assert result["hf_max_logit_diff"] <= 1e-4
  # the long first example was split over several rows, none of its words lost
  tok = tokenizer_lib.load(str(next((pretrained / "data").glob("*/vocab/spm.model"))))
  feats = tasks.tagging_features([{"words": rows[0]["words"], "labels": [0] * len(rows[0]["words"])}], tok, 64)
  assert len(feats["input_ids"]) > 1 and feats["label_weights"].sum() == len(rows[0]["words"])


def test_extractive_qa_with_doc_stride_end_to_end(pretrained, sentences, tmp_path):
  rows = []
  for i in range(60):
    context = " ".join(sentences[i:i + 4])
    words, spans = tasks._context_words(context)
    k = len(words) // 2
    rows.append({"id": f"q{i}", "question": f"Which word follows {words[k - 1]}?", "context": context,
                 "answers": {"text": [words[k]], "answer_start": [spans[k][0]]}})
  train, evals = _write_jsonl(tmp_path / "train.jsonl", rows[:40]), _write_jsonl(tmp_path / "eval.jsonl", rows[40:])
  result, answers = _run(pretrained, tmp_path / "run", **{
      "task.name": "files", "task.kind": "qa", "task.train_file": train, "task.eval_file": evals,
      "task.text_keys": "question,context", "task.label_key": "answers", "data.doc_stride": 16})
  assert set(answers) == {r["id"] for r in rows[40:]}
  em = np.mean([task_metrics.normalize_answer(answers[r["id"]]) == task_metrics.normalize_answer(
      r["answers"]["text"][0]) for r in rows[40:]])
  assert result["exact_match"] == pytest.approx(100 * em)
  assert all(answers[r["id"]] in r["context"] for r in rows[40:])  # answers are spans of the original text
  assert result["hf_max_logit_diff"] <= 1e-4


def test_qa_windows_cover_the_answer_once_labelled():
  class Tok:  # one id per character-word piece: a stand-in vocabulary over the real featurizer
    cls_id, sep_id, unk_id, kind = 2, 3, 1, "wordpiece"
    def encode(self, text):
      return [5 + (hash(w) % 50) for w in text.split()]
  context = " ".join(f"w{i}" for i in range(40))
  ex = {"id": "x", "question": "where", "context": context, "answers": ["w25 w26"],
        "answer_start": context.index("w25")}
  feats = tasks.qa_features([ex], Tok(), max_seq_length=16, doc_stride=6, max_query_length=4)
  assert len(feats["input_ids"]) > 3  # several windows
  labelled = np.flatnonzero(feats["start_positions"] > 0)
  assert len(labelled) >= 1
  for f in labelled:
    words = feats["token_word"][f]
    assert (words[feats["start_positions"][f]], words[feats["end_positions"][f]]) == (25, 26)


def test_tfds_tasks_read_by_name_from_mock_data():
  with tfds.testing.mock_data(num_examples=5):
    mrpc = tasks.read_tfds(tasks.TFDS_TASKS["glue/mrpc"], "train", None)
    squad = tasks.read_tfds(tasks.TFDS_TASKS["squad"], "train", None)
  assert len(mrpc) == 5 and {"text_a", "text_b", "label"} <= set(mrpc[0]) and mrpc[0]["label"] in (0, 1)
  assert len(squad) == 5 and squad[0]["answers"] and isinstance(squad[0]["context"], str)


# ---- bad input ------------------------------------------------------------------------------------------

def test_label_outside_the_label_set_names_the_example(tmp_path):
  path = _write_jsonl(tmp_path / "t.jsonl", [{"text": "a b", "label": "yes"}, {"text": "c d", "label": "maybe"}])
  spec = tasks.file_spec("t", "classification", "text", "label", "yes,no", "", path)
  with pytest.raises(ValueError, match=r"t.jsonl example 1: label 'maybe' is not in the label set \['yes', 'no'\]"):
    tasks.read_file(spec, path)


def test_checkpoint_without_an_encoder_fails_clearly(tmp_path):
  with pytest.raises(ValueError, match=r"has no encoder: it lacks \['encoder'\]"):
    finetune.check_encoder({"pooler": {}, "classifier": {}}, "checkpoint x")
  with pytest.raises(FileNotFoundError, match="is not a pretraining workdir"):
    finetune.load_encoder(str(tmp_path))


def test_vocabulary_not_matching_the_checkpoint_fails_clearly(pretrained, tmp_path):
  small = tokenizer_lib.train_sentencepiece(corpora.from_spec("pydocs", cache_dir=str(pretrained / "data")),
                                            str(tmp_path / "small"), 500, max_sentences=3000)
  config = configlib.load("finetune", {"data.vocab_file": small, "train.max_steps": 1})
  with pytest.raises(ValueError, match=r"has \d+ entries but the checkpoint's model has vocab_size 8000"):
    finetune.finetune(config, str(tmp_path / "run"), str(pretrained))
  tok = tokenizer_lib.load(small)
  with pytest.raises(ValueError, match="vocab_size 600"):
    finetune.check_vocab(tok, BertConfig.from_size("tiny", vocab_size=600), small, None)


def test_feature_extraction_trains_the_head_only(pretrained, sentences, tmp_path):
  from safetensors.numpy import load_file
  from bert_jax.convert import hf_params, workdir
  rows = [{"text": s, "label": "digit" if re.search(r"\d", s) else "none"} for s in sentences[:48]]
  train, evals = _write_jsonl(tmp_path / "train.jsonl", rows[:32]), _write_jsonl(tmp_path / "eval.jsonl", rows[32:])
  _run(pretrained, tmp_path / "run", **{"task.name": "files", "task.train_file": train, "task.eval_file": evals,
                                        "train.freeze_encoder": True, "train.learning_rate": 1e-2})
  exported = load_file(str(tmp_path / "run" / "hf" / "model.safetensors"))
  params, model_config, _, _ = workdir.load_workdir_params(str(pretrained))
  original = hf_params.params_to_hf(params, model_config)
  encoder_keys = [k for k in exported if k.startswith("bert.")]
  assert len(encoder_keys) > 20
  for k in encoder_keys:
    np.testing.assert_array_equal(exported[k], original[k], err_msg=k)
  assert "classifier.weight" in exported and np.abs(exported["classifier.weight"]).max() > 0
