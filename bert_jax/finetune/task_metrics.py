"""Fine-tuning metrics on numpy predictions: accuracy/F1, Matthews, Pearson/Spearman, tagging F1, SQuAD EM/F1."""

import collections
import re
import string

import numpy as np


def accuracy(predictions, labels) -> float:
  return float(np.mean(np.asarray(predictions) == np.asarray(labels)))


def f1(predictions, labels, num_labels: int) -> float:
  """Binary F1 of class 1 for two classes; macro F1 over classes otherwise."""
  p, y = np.asarray(predictions), np.asarray(labels)
  classes = [1] if num_labels == 2 else range(num_labels)
  scores = []
  for c in classes:
    tp = np.sum((p == c) & (y == c))
    fp = np.sum((p == c) & (y != c))
    fn = np.sum((p != c) & (y == c))
    scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
  return float(np.mean(scores))


def matthews(predictions, labels) -> float:
  """Matthews correlation (binary or multiclass, Gorodkin's generalisation); 0 when undefined."""
  p, y = np.asarray(predictions), np.asarray(labels)
  classes = np.union1d(p, y)
  confusion = np.array([[np.sum((y == a) & (p == b)) for b in classes] for a in classes], np.float64)
  t, q = confusion.sum(1), confusion.sum(0)
  c, s = np.trace(confusion), confusion.sum()
  denom = np.sqrt(s * s - q @ q) * np.sqrt(s * s - t @ t)
  return float((c * s - t @ q) / denom) if denom else 0.0


def pearson_spearman(predictions, labels) -> dict:
  from scipy import stats
  p, y = np.asarray(predictions, np.float64), np.asarray(labels, np.float64)
  return {"pearson": float(stats.pearsonr(p, y)[0]), "spearman": float(stats.spearmanr(p, y)[0])}


def tagging_scores(predictions, labels, label_names, sentence_ids=None) -> dict:
  """Token accuracy over labelled first sub-tokens, and entity-level F1 (exact span and type; BIO or IO tags).
  sentence_ids: each word's sentence, so that no entity runs across two sentences (as seqeval and conlleval,
  which score sentence by sentence); None: one sentence."""
  p, y = list(predictions), list(labels)
  out = {"accuracy": accuracy(p, y)}
  gold, pred = _entities(y, label_names, sentence_ids), _entities(p, label_names, sentence_ids)
  tp = len(gold & pred)
  out["f1"] = 0.0 if tp == 0 else 2 * tp / (len(gold) + len(pred))
  return out


def _entities(tag_ids, label_names, sentence_ids=None) -> set:
  """{(start, end, type)} from a flat tag sequence; 'O' (or a name without a type) is outside, and so is every
  change of sentence id."""
  spans, start, kind = set(), None, None
  sentence = list(sentence_ids) if sentence_ids is not None else [0] * len(tag_ids)
  for i, t in enumerate(list(tag_ids) + [None]):
    name = label_names[t] if t is not None else "O"
    prefix, _, typ = name.partition("-") if "-" in name else ("I" if name != "O" else "O", "", name)
    if start is not None and 0 < i < len(sentence) and sentence[i] != sentence[i - 1]:
      spans.add((start, i, kind))  # the sentence ended
      start = None
    if start is not None and (prefix != "I" or typ != kind):
      spans.add((start, i, kind))
      start = None
    if prefix in ("B", "I") and start is None and name != "O":
      start, kind = i, typ
  return spans


def normalize_answer(text: str) -> str:
  """SQuAD v1.1's normalisation: lower case, no punctuation, no articles, single spaces."""
  text = text.lower()
  text = "".join(ch for ch in text if ch not in set(string.punctuation))
  text = re.sub(r"\b(a|an|the)\b", " ", text)
  return " ".join(text.split())


def squad_scores(predictions: dict, gold_answers: dict) -> dict:
  """predictions: id -> text; gold_answers: id -> [texts]. Percent exact match and token F1 (max over golds).
  A question without gold answers (SQuAD 2.0) scores 1 only for the empty answer, as SQuAD 2.0's script."""
  missing = sorted(set(gold_answers) - set(predictions))
  if missing:
    raise ValueError(f"no prediction for {len(missing)} question(s), e.g. {missing[:3]}")
  em = f = 0.0
  for qid, golds in gold_answers.items():
    golds = golds or [""]
    guess = normalize_answer(predictions[qid])
    em += max(float(guess == normalize_answer(g)) for g in golds)
    f += max(_token_f1(guess, normalize_answer(g)) for g in golds)
  n = max(1, len(gold_answers))
  return {"exact_match": 100.0 * em / n, "f1": 100.0 * f / n}


def _token_f1(guess: str, gold: str) -> float:
  g, t = guess.split(), gold.split()
  common = sum((collections.Counter(g) & collections.Counter(t)).values())
  if common == 0:
    return float(g == t)
  precision, recall = common / len(g), common / len(t)
  return 2 * precision * recall / (precision + recall)
