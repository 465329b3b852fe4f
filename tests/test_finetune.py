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
from bert_jax.finetune import predict as predict_lib
from bert_jax.finetune import task_metrics, tasks
from bert_jax.models.bert import BertConfig
from bert_jax.trainers import finetune
from train_helpers import pretrained_tiny
from cli_helpers import cli_env



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
def pretrained():
  """A tiny model pretrained on pydocs through the CLI (vocabulary 8000); 120 steps teach it the commonest words."""
  return pretrained_tiny()


@pytest.fixture(scope="module")
def sentences(pretrained):
  docs = corpora.from_spec("pydocs", cache_dir=corpora.run_cache_dir(os.path.join(pretrained, "data")))
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
  # `predict classify` on the eval pairs (a tab between the texts) labels them as the run's own eval did
  from bert_jax.finetune import predict
  (tmp_path / "pairs.txt").write_text("".join(f"{r['a']}\t{r['b']}\n" for r in rows[40:]))
  predict.run("classify", str(tmp_path / "run"), str(tmp_path / "pairs.txt"), str(tmp_path / "labels.jsonl"))
  labelled = [json.loads(line) for line in open(tmp_path / "labels.jsonl")]
  assert [("none", "digit").index(r["label"]) for r in labelled] == list(preds)


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
  sentence = [i for i, r in enumerate(rows[40:]) for _ in r["words"]]  # entities end with their sentence
  assert result["f1"] == pytest.approx(task_metrics.tagging_scores(preds, gold, names, sentence)["f1"])
  assert result["hf_max_logit_diff"] <= 1e-4
  # `predict tag` gives each word the tag the run's eval predicted for it
  from bert_jax.finetune import predict
  (tmp_path / "words.txt").write_text("".join(" ".join(r["words"]) + "\n" for r in rows[40:]))
  predict.run("tag", str(tmp_path / "run"), str(tmp_path / "words.txt"), str(tmp_path / "tags.jsonl"))
  tagged = [json.loads(line) for line in open(tmp_path / "tags.jsonl")]
  assert [names.index(t) for r in tagged for t in r["tags"]] == preds
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
  # `predict qa` finds the answers the run's eval found
  from bert_jax.finetune import predict
  (tmp_path / "questions.txt").write_text("".join(f"{r['question']}\t{r['context']}\n" for r in rows[40:]))
  predict.run("qa", str(tmp_path / "run"), str(tmp_path / "questions.txt"), str(tmp_path / "answers.jsonl"))
  found = [json.loads(line)["answer"] for line in open(tmp_path / "answers.jsonl")]
  assert found == [answers[r["id"]] for r in rows[40:]]


def test_multiple_choice_learns_its_train_set_exports_and_predicts_end_to_end(pretrained, sentences, tmp_path):
  """Which of 3 or 4 halves (the others from other sentences) ends a sentence's first half: memorised in 40 steps
  (eval on the train file), scored from the predictions, exported with the same scores, and `predict choose`
  picks what the eval picked."""
  rng = np.random.default_rng(0)
  rows = []
  for i, s in enumerate(sentences[:24]):
    words = s.split()
    others = [sentences[j].split() for j in rng.choice(np.delete(np.arange(200), i), 3, replace=False)]
    choices = [" ".join(o[len(o) // 2:]) for o in others[:2 + i % 2]]  # 3 or 4 choices: masked slots in a batch
    label = int(rng.integers(len(choices) + 1))
    choices.insert(label, " ".join(words[len(words) // 2:]))
    rows.append({"start": " ".join(words[:len(words) // 2]), "hint": "then", "endings": choices, "label": label})
  train = _write_jsonl(tmp_path / "train.jsonl", rows)
  result, preds = _run(pretrained, tmp_path / "run", **{
      "task.name": "files", "task.kind": "multiple_choice", "task.train_file": train, "task.eval_file": train,
      "task.text_keys": "start,hint", "task.choice_keys": "endings", "train.max_steps": 40,
      "train.learning_rate": 1e-3})
  labels = np.array([r["label"] for r in rows])
  assert len(preds) == 24 and all(0 <= p < len(r["endings"]) for p, r in zip(preds, rows))
  assert result["accuracy"] == pytest.approx(np.mean(np.array(preds) == labels))
  assert result["accuracy"] >= 0.9  # chance is 0.29
  assert result["hf_max_logit_diff"] <= 1e-4  # BertForMultipleChoice
  from bert_jax.finetune import predict
  (tmp_path / "choices.txt").write_text("".join("\t".join([r["start"], r["hint"], *r["endings"]]) + "\n"
                                                for r in rows))
  predict.run("choose", str(tmp_path / "run"), str(tmp_path / "choices.txt"), str(tmp_path / "chosen.jsonl"))
  chosen = [json.loads(line) for line in open(tmp_path / "chosen.jsonl")]
  assert [c["choice"] for c in chosen] == list(preds)
  assert [c["answer"] for c in chosen] == [r["endings"][p] for r, p in zip(rows, preds)]
  assert all(len(c["scores"]) == len(r["endings"]) and sum(c["scores"]) == pytest.approx(1.0, abs=1e-5)
             for c, r in zip(chosen, rows))


@pytest.mark.parametrize("kind", ["classification", "tagging", "qa"])
def test_distilbert_task_export_is_checked_without_token_types(tmp_path, monkeypatch, kind):
  """transformers 4.x (pyproject allows >=4.45) gives DistilBERT's task classes no token_type_ids argument: the
  export check must call them as the family's HF classes take it, not fail with a TypeError after training."""
  import flax.linen as nn
  import jax
  import transformers
  import hf_helpers
  from bert_jax.convert import hf_dir
  from bert_jax.finetune import heads, task_export
  from bert_jax.models.distilbert import DistilBertConfig
  config = DistilBertConfig(vocab_size=128, hidden_size=64, num_layers=2, num_heads=8, intermediate_size=128,
                            max_position_embeddings=64, hidden_dropout=0.0, attention_dropout=0.0)
  spec = tasks.TaskSpec("t", kind, label_names=() if kind == "qa" else ("a", "b", "c"))
  model = heads.MODELS[kind](config, num_labels=spec.num_labels)
  ids, mask, segments = hf_dir.probe_batch(config)
  params = hf_helpers.perturb_params(nn.unbox(jax.jit(model.init)(jax.random.key(0), ids, mask, segments)["params"]))
  task_export.write_hf_dir(params, config, spec, str(tmp_path))
  hf_helpers.refuse_token_type_ids(monkeypatch, getattr(transformers, task_export.hf_class(config, kind)))
  assert task_export.check_hf_dir(model, params, spec, str(tmp_path)) < 1e-4


def test_tfds_tasks_read_by_name_from_mock_data():
  with tfds.testing.mock_data(num_examples=5):
    mrpc = tasks.read_tfds(tasks.TFDS_TASKS["glue/mrpc"], "train", None)
    squad = tasks.read_tfds(tasks.TFDS_TASKS["squad"], "train", None)
  assert len(mrpc) == 5 and {"text_a", "text_b", "label"} <= set(mrpc[0]) and mrpc[0]["label"] in (0, 1)
  assert len(squad) == 5 and squad[0]["answers"] and isinstance(squad[0]["context"], str)
  with tfds.testing.mock_data(num_examples=5):
    piqa = tasks.read_tfds(tasks.TFDS_TASKS["piqa"], "train", None)
  assert len(piqa) == 5 and len(piqa[0]["choices"]) == 2 and piqa[0]["label"] in (0, 1)


def test_arc_reads_its_answer_key_among_its_own_choice_labels():
  import tensorflow as tf
  # TFDS's ai2_arc: ClassLabel ints over A-E for the answer and each choice; this question's choices are B, C, D
  record = {"id": ["q1"], "question": ["Which gas do plants take in?"], "answerKey": [2],
            "choices": {"text": [["oxygen", "carbon dioxide", "helium"]], "label": [[1, 2, 3]]}}
  with tfds.testing.mock_data(as_dataset_fn=lambda *_, **__: tf.data.Dataset.from_tensor_slices(record)):
    (example,) = tasks.read_tfds(tasks.TFDS_TASKS["ai2_arc/ARC-Challenge"], "test", None)
  assert example == {"context": "Which gas do plants take in?", "question": None,
                     "choices": ["oxygen", "carbon dioxide", "helium"], "label": 1}


def test_race_reads_one_example_per_question_of_an_article():
  import tensorflow as tf
  article = "Tom went to the market. He bought apples and went home."
  record = {"article": [article], "example_id": ["high1.txt"],
            "questions": [["Where did Tom go?", "Tom bought _ ."]], "answers": [["B", "A"]],
            "options": tf.ragged.constant([[["home", "the market", "school", "a park"], ["apples", "pears", "milk"]]])}
  with tfds.testing.mock_data(as_dataset_fn=lambda *_, **__: tf.data.Dataset.from_tensor_slices(record)):
    examples = tasks.read_tfds(tasks.TFDS_TASKS["race/high"], "validation", None)
  assert examples == [
      {"context": article, "question": "Where did Tom go?", "choices": ["home", "the market", "school", "a park"],
       "label": 1},
      {"context": article, "question": "Tom bought _ .", "choices": ["apples", "pears", "milk"], "label": 0}]
  assert tasks.choice_segment(examples[1]["question"], "apples") == "Tom bought apples ."


def test_hellaswag_reads_its_endings_as_the_choices():
  import tensorflow as tf
  endings = ["is using wrap.", "is ripping shingles.", "is holding a rubik's cube.", "starts pulling."]
  record = {"context": ["A man is sitting on a roof. He"], "endings": [endings], "activity_label": ["Roof shingle"],
            "label": [3], "split_type": ["indomain"], "source_id": ["x"]}
  with tfds.testing.mock_data(as_dataset_fn=lambda *_, **__: tf.data.Dataset.from_tensor_slices(record)):
    (example,) = tasks.read_tfds(tasks.TFDS_TASKS["hellaswag"], "validation", None)
  assert example == {"context": "A man is sitting on a roof. He", "question": None, "choices": endings, "label": 3}


# ---- bad input ------------------------------------------------------------------------------------------

def test_label_outside_the_label_set_names_the_example(tmp_path):
  path = _write_jsonl(tmp_path / "t.jsonl", [{"text": "a b", "label": "yes"}, {"text": "c d", "label": "maybe"}])
  spec = tasks.file_spec("t", "classification", "text", "label", "yes,no", "", path)
  with pytest.raises(ValueError, match=r"t.jsonl example 1: label 'maybe' is not in the label set \['yes', 'no'\]"):
    tasks.read_file(spec, path)


@pytest.mark.parametrize("empty", ["train", "eval"])
def test_a_task_file_without_examples_fails_naming_it_before_training(tmp_path, empty):
  """An eval file of blank lines would otherwise train to the end and then fail inside the eval's concatenate; an
  empty train file would be blamed on train.batch_size."""
  rows = [{"text": f"line {i}", "label": "a" if i % 2 else "b"} for i in range(4)]
  files = {split: _write_jsonl(tmp_path / f"{split}.jsonl", [] if split == empty else rows) for split in ("train",
                                                                                                         "eval")}
  (tmp_path / f"{empty}.jsonl").write_text("\n\n")
  config = configlib.load("finetune", {"task.name": "files", "task.train_file": files["train"],
                                       "task.eval_file": files["eval"], "task.label_names": "a,b"})
  spec = finetune.task_spec(config)
  with pytest.raises(ValueError, match=rf"{empty}.jsonl holds no examples"):
    finetune.load_examples(config, spec, str(tmp_path))


def test_checkpoint_without_an_encoder_fails_clearly(tmp_path):
  with pytest.raises(ValueError, match=r"has no encoder: it lacks \['encoder'\]"):
    finetune.check_encoder({"pooler": {}, "classifier": {}}, "checkpoint x")
  with pytest.raises(FileNotFoundError, match="is not a pretraining workdir"):
    finetune.load_encoder(str(tmp_path))


def test_predict_refuses_a_missing_vocab_file_and_counts_below_one_before_loading(tmp_path):
  from bert_jax.finetune import predict
  lines = tmp_path / "lines.txt"
  lines.write_text("the [MASK] of it\n")
  # a --vocab_file that does not exist was reported as the workdir's own vocabulary not found, "pass --vocab_file"
  with pytest.raises(FileNotFoundError, match=rf"--vocab_file {tmp_path}/vocab.txt does not exist; leave it out"):
    predict.run("fill-mask", str(tmp_path), str(lines), vocab_file=str(tmp_path / "vocab.txt"))
  for flag in ("top_k", "batch_size"):  # top_k=0 wrote no predictions at all; batch_size=0 failed in range()
    with pytest.raises(ValueError, match=rf"--{flag}=0 must be at least 1"):
      predict.run("fill-mask", str(tmp_path), str(lines), **{flag: 0})


def test_vocabulary_not_matching_the_checkpoint_fails_clearly(pretrained, tmp_path):
  pydocs = corpora.from_spec("pydocs", cache_dir=corpora.run_cache_dir(str(pretrained / "data")))
  small = tokenizer_lib.train_sentencepiece(pydocs, str(tmp_path / "small"), 500, max_sentences=3000)
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


# ---- what trains, and fine-tuning that survives kills, SIGTERM, and stops early ---------------------------------

@pytest.fixture(scope="module")
def digit_task(sentences, tmp_path_factory):
  """A classification task from real sentences: does the sentence contain a digit?"""
  root = tmp_path_factory.mktemp("digit_task")
  rows = [{"text": s, "label": "digit" if re.search(r"\d", s) else "none"} for s in sentences[:48]]
  return {"task.name": "files", "task.train_file": _write_jsonl(root / "train.jsonl", rows[:32]),
          "task.eval_file": _write_jsonl(root / "eval.jsonl", rows[32:]), "train.export_hf": False}


# The user's rule freezes the embeddings (the method, full, trains the rest); dropout is on, so a resumed run
# must also draw the same dropout masks; checkpoints every 4 steps, evals every 8.
ROBUST = {"train.max_steps": 24, "train.batch_size": 8, "train.eval_batch_size": 16, "data.max_seq_length": 64,
          "train.log_every": 1, "train.eval_every": 8, "checkpoint.every_steps": 4, "model.hidden_dropout": 0.1,
          "train.learning_rate": 1e-3, "train.param_rules": "^encoder/embeddings/:freeze"}


@pytest.fixture(scope="module")
def robust_run(pretrained, digit_task, tmp_path_factory):
  """(workdir, result) of an uninterrupted ROBUST run."""
  workdir = tmp_path_factory.mktemp("robust") / "whole"
  return workdir, _run(pretrained, workdir, **digit_task, **ROBUST)[0]


def _flat(tree, prefix=""):
  out = {}
  for k, v in tree.items():
    path = f"{prefix}/{k}" if prefix else str(k)
    out.update(_flat(v, path) if isinstance(v, dict) else {path: np.asarray(v)})
  return out


def _saved_state_paths(workdir):
  """'/'-joined path -> metadata of the arrays in the newest train-state checkpoint (Orbax metadata)."""
  import jax
  import orbax.checkpoint as ocp
  from bert_jax.core import checkpoint as checkpoint_lib
  from bert_jax.core import param_rules
  _, step = checkpoint_lib.latest_step(os.path.join(workdir, "checkpoints"))
  with ocp.PyTreeCheckpointer() as ckptr:
    metadata = ckptr.metadata(os.path.join(workdir, "checkpoints", str(step), "state"))
  tree = getattr(getattr(metadata, "item_metadata", metadata), "tree", metadata)
  return {param_rules.path_of(p): m for p, m in jax.tree_util.tree_leaves_with_path(
      tree, is_leaf=lambda m: hasattr(m, "shape"))}


def test_frozen_params_stay_bit_identical_and_get_no_optimizer_state(pretrained, robust_run):
  from bert_jax.convert import workdir
  from bert_jax.core import checkpoint as checkpoint_lib
  run, _ = robust_run
  trained = _flat(checkpoint_lib.load_params(str(run / "params")))
  original = _flat(workdir.load_workdir_params(str(pretrained))[0]["encoder"], "encoder")
  frozen = [p for p in trained if p.startswith("encoder/embeddings/")]
  assert len(frozen) >= 4
  for p in frozen:  # (the word table's padding rows past the vocabulary start fresh: compare the real rows)
    rows = slice(8000) if p.endswith("word_embeddings/embedding") else slice(None)
    np.testing.assert_array_equal(trained[p][rows], original[p][rows], err_msg=p)
  moved = [p for p in trained if p.startswith("encoder/layer_") and not np.array_equal(trained[p], original[p])]
  assert len(moved) > 10  # the rest of the encoder trained
  sizes = {p: int(np.prod(v.shape)) for p, v in trained.items()}
  with open(run / "result.json") as f:
    summary = json.load(f)
  assert summary["trainable_params"] == sum(s for p, s in sizes.items() if p not in frozen)
  assert summary["total_params"] == sum(sizes.values())
  assert summary["batch_size"] == ROBUST["train.batch_size"]  # bench/peft_demo.sh times steps with it
  # Adam's two moments exist for exactly the trainable leaves: none for the frozen embeddings
  saved = _saved_state_paths(str(run))
  moments = [p for p in saved if p.startswith("opt_state/") and p.endswith(tuple(sizes))]
  assert moments and not any("embeddings" in p for p in moments)
  assert sum(int(np.prod(saved[p].shape)) for p in moments) == 2 * summary["trainable_params"]


def test_mean_pooling_trains_and_predicts_from_its_workdir(pretrained, digit_task, sentences, tmp_path):
  """model.pooling=mean: the head reads the tokens' mean (no pooler in the params), and `predict classify` on
  the workdir rebuilds that head: its labels are the run's own eval predictions."""
  run = tmp_path / "run"
  result, predictions = _run(pretrained, run, **digit_task, **{"model.pooling": "mean", "train.method": "frozen",
                                                                "train.learning_rate": 1e-2})
  info = predict_lib.read_model_info(str(run))
  assert info["model_config"].classifier_pooling == "mean"
  params, _, tok, info = predict_lib.load(str(run))
  assert "pooler" not in params["encoder"]
  eval_texts = [json.loads(line)["text"] for line in open(digit_task["task.eval_file"])]
  labels = [row["label"] for row in predict_lib.classify(params, info, tok, eval_texts)]
  assert labels == [info["spec"].label_names[p] for p in predictions]
  assert 0.0 <= result["accuracy"] <= 1.0


def test_mean_pooling_without_a_transformers_class_is_refused_up_front(pretrained, digit_task, tmp_path):
  with pytest.raises(ValueError, match=r"model.pooling='mean' has no transformers .*Set train.export_hf=False"):
    _run(pretrained, tmp_path / "a", **{**digit_task, "train.export_hf": True, "model.pooling": "mean"})
  with pytest.raises(ValueError, match=r"model.pooling='max' is not one of \('cls', 'mean'\)"):
    _run(pretrained, tmp_path / "b", **digit_task, **{"model.pooling": "max"})
  assert not os.path.exists(tmp_path / "a" / "checkpoints")  # refused before any training


def test_a_batch_size_that_does_not_split_is_refused_before_the_data_is_read(pretrained, tmp_path):
  """The check needs only the mesh: it comes before the checkpoint, the task files and featurization (minutes for
  SQuAD-sized data), so a task file that does not exist yet is not what the run reports."""
  config = configlib.load("finetune", {"task.name": "files", "task.kind": "classification", "task.label_names": "a,b",
                                       "task.train_file": str(tmp_path / "missing.jsonl"),
                                       "task.eval_file": str(tmp_path / "missing.jsonl"), "train.batch_size": 12})
  with pytest.raises(ValueError, match=r"train.batch_size=12 must divide by the batch-parallel devices"):
    finetune.finetune(config, str(tmp_path / "run"), str(pretrained))


def test_a_rule_that_matches_no_parameter_fails_naming_it(pretrained, digit_task, tmp_path):
  with pytest.raises(ValueError, match=r"parameter rule '\^encodr/' matches no parameter"):
    _run(pretrained, tmp_path / "run", **digit_task, **{"train.param_rules": "^encodr/:freeze"})


def test_train_order_is_a_function_of_the_step():
  order = tasks.TrainOrder(num_rows=10, batch_size=3, seed=7)
  assert order.steps_per_epoch == 3
  epoch0 = np.concatenate([order.rows(s) for s in range(3)])
  assert len(set(epoch0)) == 9  # each row at most once per epoch, the remainder dropped
  assert not np.array_equal(order.rows(0), order.rows(3))  # another epoch, another order
  fresh = tasks.TrainOrder(10, 3, 7)
  np.testing.assert_array_equal(fresh.rows(4), order.rows(4))  # a resumed iterator at step 4 reads the same rows
  assert order.position(4) == {"seed": 7, "epoch": 1, "batch": 1}


def _lines(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_resume_after_sigkill_equals_the_uninterrupted_run(pretrained, digit_task, robust_run, tmp_path, capsys):
  import signal
  import subprocess
  import sys
  import time
  from bert_jax.core import checkpoint as checkpoint_lib
  whole_dir, whole = robust_run
  killed = tmp_path / "killed"
  overrides = {**digit_task, **ROBUST}
  args = [sys.executable, "-m", "bert_jax.finetune", "--config=finetune", f"--workdir={killed}",
          f"--init_checkpoint={pretrained}"] + [f"--config.{k}={v}" for k, v in overrides.items()]
  # on this process's 8 devices and compiled as its programs are, as the whole and the resumed runs (in-process) are
  env = cli_env(8, compiled_as_tests=True, JAX_DEFAULT_MATMUL_PRECISION="highest")
  proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
  deadline = time.time() + 300
  while not (killed / "checkpoints" / "4").is_dir() and not (killed / "checkpoints" / "8").is_dir():
    assert proc.poll() is None, f"the run ended before its first checkpoint: {proc.stderr.read()[-2000:]}"
    assert time.time() < deadline, "no checkpoint appeared"
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (killed / "result.json").exists(), "the kill must land mid-run"

  capsys.readouterr()
  resumed, _ = _run(pretrained, killed, **overrides)
  out = capsys.readouterr().out
  resumed_from = int(out.split("resumed from checkpoint at step ")[1].split()[0])
  assert 0 < resumed_from < 24
  assert resumed == whole
  a = _flat(checkpoint_lib.load_params(str(whole_dir / "params")))
  b = _flat(checkpoint_lib.load_params(str(killed / "params")))
  for p in a:
    np.testing.assert_array_equal(a[p], b[p], err_msg=p)
  # metrics.jsonl: every step once (lines past the checkpoint dropped and written again), losses as uninterrupted
  got = _lines(killed)
  assert [l["step"] for l in got if l["split"] == "train"] == list(range(1, 25))
  assert [l["step"] for l in got if l["split"] == "eval"] == [8, 16, 24]
  strip = lambda lines: [{k: v for k, v in l.items() if k != "seq_per_sec"} for l in lines]
  assert strip(got) == strip(_lines(whole_dir))


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(pretrained, digit_task, tmp_path):
  import signal
  import threading
  import time
  run = tmp_path / "run"
  overrides = {**digit_task, **ROBUST, "train.max_steps": 400, "checkpoint.every_steps": 1000, "train.eval_every": 0}

  def send_sigterm_after_step_2():
    deadline = time.time() + 300
    while time.time() < deadline:
      try:
        if (run / "metrics.jsonl").exists() and any(l["step"] >= 2 for l in _lines(run)):
          os.kill(os.getpid(), signal.SIGTERM)
          return
      except json.JSONDecodeError:
        pass  # a line half written
      time.sleep(0.005)

  previous = signal.signal(signal.SIGTERM, lambda *_: None)  # a late signal must not end the test runner
  try:
    sender = threading.Thread(target=send_sigterm_after_step_2)
    sender.start()
    out = finetune.finetune(configlib.load("finetune", overrides), str(run), str(pretrained))
    sender.join()
  finally:
    signal.signal(signal.SIGTERM, previous)
  assert out["preempted"] and 2 <= out["step"] < 400
  assert os.listdir(run / "checkpoints") == [str(out["step"])]  # saved at once, not at every_steps
  assert not (run / "result.json").exists()
  assert [l["step"] for l in _lines(run)] == list(range(1, out["step"] + 1))


def test_early_stopping_exports_the_best_evals_params(pretrained, digit_task, tmp_path):
  from bert_jax.core import checkpoint as checkpoint_lib
  result, _ = _run(pretrained, tmp_path / "run", **digit_task, **{
      "train.max_steps": 40, "train.eval_every": 2, "train.early_stop_metric": "eval_loss",
      "train.early_stop_patience": 2, "train.learning_rate": 3e-2})
  with open(tmp_path / "run" / "result.json") as f:
    summary = json.load(f)
  evals = {l["step"]: l for l in _lines(tmp_path / "run") if l["split"] == "eval"}
  assert summary["stopped_early"] and summary["steps"] < 40
  best = min(evals, key=lambda s: evals[s]["eval_loss"])
  assert summary["best_step"] == best
  assert sorted(evals)[-3] == best  # stopped after two evals without improvement
  assert result["eval_loss"] == evals[best]["eval_loss"]  # what was exported is the best eval's model
  exported = _flat(checkpoint_lib.load_params(str(tmp_path / "run" / "params")))
  kept = _flat(checkpoint_lib.load_params(str(tmp_path / "run" / "best_params")))
  for p in exported:
    np.testing.assert_array_equal(exported[p], kept[p], err_msg=p)


# ---- inference: python -m bert_jax.predict ----------------------------------------------------------------------

def test_fill_mask_cli_ranks_a_word_the_model_learned_in_its_top_5(pretrained, sentences):
  """`the` is the commonest word of pydocs: 120 steps teach it, an untrained model ranks it at chance."""
  import subprocess
  import sys
  import jax
  from bert_jax.finetune import predict
  from bert_jax.models.pretraining import EncoderWithHeads
  lines = [s.replace(" the ", " [MASK] ", 1) for s in sentences if " the " in s][:3]
  result = subprocess.run([sys.executable, "-m", "bert_jax.predict", "fill-mask", f"--workdir={pretrained}",
                           "--top_k=5"], input="\n".join(lines) + "\n", capture_output=True, text=True,
                          timeout=300, env=cli_env())
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Finished load" not in result.stderr, "Orbax's INFO lines about the restore are noise here"
  records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
  assert [r["text"] for r in records] == lines
  for r in records:
    (mask,) = r["masks"]
    tokens = [p["token"] for p in mask["predictions"]]
    assert len(tokens) == 5 and "the" in tokens, (r["text"], tokens)
    scores = [p["score"] for p in mask["predictions"]]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1
  # the same lines on an untrained model of the same shape: `the` is not among its top 5
  params, model_config, tok, _ = predict.load(str(pretrained))
  ids = np.zeros((1, 8), np.int32)
  fresh = jax.jit(EncoderWithHeads(model_config, heads=("mlm",)).init)(jax.random.key(0), ids, ids, ids)["params"]
  fresh = jax.tree_util.tree_map(np.asarray, __import__("flax").linen.meta.unbox(fresh))
  for r in predict.fill_mask(fresh, model_config, tok, lines, top_k=5):
    assert "the" not in [p["token"] for p in r["masks"][0]["predictions"]]


def test_embed_writes_vectors_that_do_not_depend_on_the_batch(pretrained, sentences, tmp_path):
  from bert_jax.finetune import predict
  lines = tmp_path / "lines.txt"
  lines.write_text("\n".join(sentences[:5]) + "\n\n")  # a blank line carries no example
  assert predict.run("embed", str(pretrained), str(lines), str(tmp_path / "mean.npy"), batch_size=2) == 5
  predict.run("embed", str(pretrained), str(lines), str(tmp_path / "pooled.jsonl"), pooling="pooled")
  mean = np.load(tmp_path / "mean.npy")
  pooled = [json.loads(line) for line in open(tmp_path / "pooled.jsonl")]
  assert mean.shape == (5, 128) and [p["text"] for p in pooled] == sentences[:5]
  params, model_config, tok, _ = predict.load(str(pretrained))
  one_by_one = np.concatenate([predict.embed(params, model_config, tok, [s], "mean", 1) for s in sentences[:5]])
  np.testing.assert_allclose(mean, one_by_one, atol=1e-5)  # padding rows and lengths change nothing
  assert np.all(np.abs(np.array([p["embedding"] for p in pooled])) <= 1)  # tanh pooler
  with pytest.raises(ValueError, match="line 1 has no mask"):
    predict.fill_mask(params, model_config, tok, ["no mask here"])
  with pytest.raises(ValueError, match="classify needs a fine-tuning workdir"):
    predict.run("classify", str(pretrained), str(lines), str(tmp_path / "x.jsonl"))


@pytest.mark.parametrize("kind", ["sentencepiece", "bpe", "wordpiece"])
def test_masks_are_encoded_as_the_exported_hf_tokenizer_encodes_them(sentences, tmp_path, kind):
  import transformers
  from bert_jax.data import hf_tokenizer
  from bert_jax.finetune import predict
  from data_helpers import ListCorpus
  corpus = ListCorpus([sentences[:300]])
  if kind == "wordpiece":
    from tokenizers import BertWordPieceTokenizer
    trainer = BertWordPieceTokenizer(lowercase=True)
    trainer.train_from_iterator(sentences[:300], vocab_size=600, special_tokens=list(tokenizer_lib.SPECIAL_TOKENS))
    vocab = trainer.get_vocab()
    vocab_file = tmp_path / "vocab.txt"
    vocab_file.write_text("\n".join(sorted(vocab, key=vocab.get)) + "\n", encoding="utf-8")
    vocab_file = str(vocab_file)
  else:
    vocab_file = tokenizer_lib.train_vocab(corpus, kind, str(tmp_path / "v"), 600)
  tok = tokenizer_lib.load(vocab_file, kind == "wordpiece")
  hf_tokenizer.save_hf_tokenizer(vocab_file, tok.lower_case, str(tmp_path / "hf"), model_max_length=512)
  hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"), local_files_only=True)
  for s in sentences[:20]:
    words = s.split()
    text = " ".join(words[:2] + [tok.token("mask")] + words[3:-1] + [tok.token("mask")])
    ours = predict.encode_with_masks(tok, text)
    assert ours.count(tok.mask_id) == 2
    assert [tok.cls_id] + ours + [tok.sep_id] == hf(text)["input_ids"], text
