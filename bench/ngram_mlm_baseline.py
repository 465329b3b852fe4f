"""What counting neighbours gives on a prepared dataset's eval masks: a reference for a small model's MLM accuracy.

  python bench/ngram_mlm_baseline.py --data_dir=runs/tiny/data/pydocs-<hash> [--workdir=runs/tiny]

Reads TFRecord or ArrayRecord splits without TensorFlow.

Counts bigrams over the train split (its records unmasked), then predicts every masked eval token from the two
tokens beside it in the masked input, as the model sees them: argmax over w of P(w | left) P(right | w), each
bigram interpolated with the unigram (--unigram_weight). It never reads the token at the masked position, so it
forgoes the 10% of positions BERT leaves unchanged, which a model can copy. Prints one JSON line: accuracy and
mean loss (nats) of the bigram and unigram predictors on the same positions, and with --workdir the run's last
eval mlm_accuracy beside them. A model below the bigram line has not yet learnt to use its neighbours.
"""

import argparse
import glob
import json
import os

import numpy as np

from bert_jax.data import array_record_io, schema

FEATURES = ("input_ids", "input_mask", "masked_lm_positions", "masked_lm_ids", "masked_lm_weights")

MAX_VOCAB = 16384  # the two [V, V] float32 tables below must fit in memory


def read_split(data_dir: str, split: str) -> dict[str, np.ndarray]:
  """The split's records (ArrayRecord if prepared so, else TFRecord; no TensorFlow needed) as stacked arrays."""
  files = sorted(glob.glob(os.path.join(data_dir, split, f"*{array_record_io.SUFFIX}")))
  files = files or sorted(glob.glob(os.path.join(data_dir, split, "*.tfrecord")))
  if not files:
    raise SystemExit(f"no {split}/ records under {data_dir}: pass a prepared directory (it holds manifest.json)")
  rows = [array_record_io.parse(r) for f in files for r in array_record_io.iter_records(f)]
  return {k: np.stack([row[k] for row in rows]) for k in FEATURES}


def unmasked(records: dict[str, np.ndarray]) -> np.ndarray:
  """input_ids with the original tokens put back at the masked positions."""
  ids = records["input_ids"].copy()
  rows, slots = np.nonzero(records["masked_lm_weights"] > 0)
  ids[rows, records["masked_lm_positions"][rows, slots]] = records["masked_lm_ids"][rows, slots]
  return ids


def bigram_tables(ids: np.ndarray, mask: np.ndarray, vocab: int, unigram_weight: float):
  """(P(next | this) [V, V] interpolated with the unigram, the unigram [V]) over the real tokens of each row."""
  left, right = ids[:, :-1], ids[:, 1:]
  pair = (mask[:, :-1] > 0) & (mask[:, 1:] > 0)
  counts = np.zeros((vocab, vocab), np.float32)
  np.add.at(counts, (left[pair], right[pair]), 1.0)
  unigram = np.bincount(ids[mask > 0], minlength=vocab).astype(np.float64) + 0.5  # add-half: no zero
  unigram = (unigram / unigram.sum()).astype(np.float32)
  totals = counts.sum(1, keepdims=True)
  conditional = np.divide(counts, totals, out=np.broadcast_to(unigram, counts.shape).copy(), where=totals > 0)
  return (1 - unigram_weight) * conditional + unigram_weight * unigram[None, :], unigram  # unseen: the unigram


def score(records: dict[str, np.ndarray], next_given: np.ndarray, unigram: np.ndarray, chunk: int = 512) -> dict:
  ids, seq = records["input_ids"], records["input_ids"].shape[1]
  rows, slots = np.nonzero(records["masked_lm_weights"] > 0)
  pos = records["masked_lm_positions"][rows, slots]
  target = records["masked_lm_ids"][rows, slots]
  left = ids[rows, np.maximum(pos - 1, 0)]   # position 0 is [CLS], never masked
  right = ids[rows, np.minimum(pos + 1, seq - 1)]
  log_next, log_unigram = np.log(next_given), np.log(unigram)
  hits = nll = 0.0
  for start in range(0, len(target), chunk):
    s = slice(start, start + chunk)
    logits = log_next[left[s]] + log_next[:, right[s]].T        # log P(w | left) + log P(right | w)
    logits -= logits.max(1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    hits += float((logits.argmax(1) == target[s]).sum())
    nll -= float(log_p[np.arange(len(target[s])), target[s]].sum())
  return {"positions": int(len(target)), "bigram_accuracy": hits / len(target), "bigram_loss": nll / len(target),
          "unigram_accuracy": float(np.mean(target == unigram.argmax())),
          "unigram_loss": float(-log_unigram[target].mean())}


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--data_dir", required=True, help="a prepared directory (manifest.json, train/, eval/)")
  parser.add_argument("--workdir", default="", help="a run on that data: its last eval mlm_accuracy is printed too")
  parser.add_argument("--unigram_weight", type=float, default=0.3, help="bigram/unigram interpolation weight")
  args = parser.parse_args()
  with open(os.path.join(args.data_dir, schema.MANIFEST_NAME)) as f:
    manifest = json.load(f)
  vocab = int(manifest["vocab"]["size"])
  if vocab > MAX_VOCAB:
    raise SystemExit(f"vocabulary of {vocab} tokens: the dense [V, V] tables need V <= {MAX_VOCAB}")
  train = read_split(args.data_dir, "train")
  next_given, unigram = bigram_tables(unmasked(train), train["input_mask"], vocab, args.unigram_weight)
  result = {"bench": "ngram_mlm_baseline", "data_dir": args.data_dir, "train_instances": len(train["input_ids"]),
            **score(read_split(args.data_dir, "eval"), next_given, unigram)}
  if args.workdir:
    with open(os.path.join(args.workdir, "metrics.jsonl")) as f:
      evals = [r for r in map(json.loads, f) if r.get("split") == "eval"]
    result.update(model_step=evals[-1]["step"], model_mlm_accuracy=evals[-1]["mlm_accuracy"],
                  model_mlm_loss=evals[-1].get("mlm_loss"))
  print(json.dumps(result))


if __name__ == "__main__":
  main()
