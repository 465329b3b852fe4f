"""The manifest.json of prepared data: what the local path and the Beam pipeline record beside the shards
(settings, masking, vocabulary, shard counts, statistics), merging the partial manifests of --num_tasks runs,
its console summary, and the check that a corpus gave train instances."""

import dataclasses
import glob
import json
import os
import sys

from bert_jax.data import instances, schema
from bert_jax.data import tokenizer as tokenizer_lib

SPLITS = ("train", "eval")  # a chunk key's split index is the position here


class EmptyCorpusError(ValueError):
  """The corpus gives no train instances; data made from it would leave training waiting for a first batch."""


def check_train_instances(name: str, train: int, eval_: int, stats: dict, eval_fraction: float | None = None) -> None:
  """Fails, saying why, when the corpus gave no train instances (empty shards beside full ones are fine)."""
  if train:
    return
  documents = stats.get("documents")
  if documents == 0:
    why = "it holds no documents: every line is empty or whitespace"
  elif eval_:
    why = (f"all its documents went to eval{f' (eval_fraction={eval_fraction})' if eval_fraction is not None else ''}"
           f"; lower --eval_fraction or use a larger corpus")
  else:
    why = (f"its {documents} documents ({stats.get('sentences', 0)} sentences, {stats.get('tokens', 0)} tokens) "
           f"made no instance; are the lines text the vocabulary encodes?")
  raise EmptyCorpusError(f"corpus {name} gives 0 train instances: {why}. No manifest was written, so nothing "
                         f"will train on this output")


SENTENCE_LABELS = {  # what next_sentence_labels mean, per mode (recorded in the manifest)
    "nsp": "0 = B follows A, 1 = B is from a random document",
    "sop": "0 = A and B in document order, 1 = swapped",
    "full_sentences": "always 0 (no sentence task)",
}


def masking_settings(opts: instances.InstanceOptions) -> dict:
  """The manifest's description of how the records were masked (masking.MaskingOptions.settings, plus the
  entity list's hash: the units depend on its content)."""
  settings = opts.masking_options.settings()
  if settings["mode"] == "knowledge" and opts.entity_file:
    settings["entity_file_sha256"] = tokenizer_lib.file_sha256(opts.entity_file)
  return settings


def read_manifest(output_dir):
  """manifest.json of output_dir, local or remote (gs://)."""
  path = os.path.join(output_dir, schema.MANIFEST_NAME)
  if "://" in path:
    import tensorflow as tf
    return json.loads(tf.io.gfile.GFile(path).read())
  with open(path) as f:
    return json.load(f)


def build_manifest(opts: instances.InstanceOptions, *, seed: int, tok, corpus_description: str, parts: int,
                   shard_counts: dict, split_instances: dict, corpus_stats: dict, totals: dict, seconds: float,
                   workers, task_index: int = 0, num_tasks: int = 1, formats=("tfrecord",),
                   engine: str = "local") -> dict:
  """The manifest of prepared data (the local path and the Beam pipeline write the same keys): settings,
  shard counts, what was read and skipped (corpus_stats, from corpora.py) and the summed chunk statistics
  (totals, from _process_chunk)."""
  stats = {
      "documents": corpus_stats["documents_read"],
      "skipped_empty_lines": corpus_stats["empty_lines"], "skipped_empty_documents": corpus_stats["empty_documents"],
      "invalid_utf8_lines": corpus_stats["invalid_utf8_lines"], **dict(totals),
      "avg_real_tokens_per_instance": totals["real_tokens"] / max(totals["instances"], 1),
      "masked_fraction": totals["masked_tokens"] / max(totals["maskable_tokens"], 1),
      "random_next_fraction": totals["random_next"] / max(totals["instances"], 1),  # label-1 fraction
      "seconds": round(seconds, 2), "workers": workers,
      "instances_per_second": totals["instances"] / max(seconds, 1e-9),
      "tokens_per_second": totals["real_tokens"] / max(seconds, 1e-9), "corpus_parts": parts,
  }
  manifest = {
      "format": "google-research/bert pretraining tf.train.Example",
      "max_seq_length": opts.max_seq_length, "max_predictions_per_seq": opts.max_predictions_per_seq,
      "masking": masking_settings(opts), "mode": opts.mode, "next_sentence_labels": SENTENCE_LABELS[opts.mode],
      "instances": dataclasses.asdict(opts), "seed": seed, "vocab": tok.describe(), "vocab_type": tok.kind,
      "lower_case": tok.lower_case,
      "corpus": corpus_description, "python": sys.version.split()[0],
      "splits": {name: {"shards": shard_counts[name], "instances": split_instances[name]} for name in SPLITS},
      "stats": stats, "task": {"index": task_index, "count": num_tasks}, "engine": engine,
  }
  if formats != ("tfrecord",):  # shard names stay the .tfrecord ones; an ArrayRecord shard has the same count
    manifest["formats"] = list(formats)
  return manifest


def merge_manifests(output_dir: str) -> dict:
  """Combines the partial manifests of all tasks into manifest.json (fails if one is missing)."""
  parts = sorted(glob.glob(os.path.join(output_dir, "manifest.task-*.json")))
  if not parts:
    raise FileNotFoundError(f"no manifest.task-*.json in {output_dir}")
  loaded = [json.load(open(p)) for p in parts]
  count = loaded[0]["task"]["count"]
  have = sorted(m["task"]["index"] for m in loaded)
  if have != list(range(count)):
    raise ValueError(f"partial manifests for tasks {have}, expected 0..{count - 1}: some tasks have not finished")
  merged = dict(loaded[0])
  for name in merged["splits"]:
    shards = {k: v for m in loaded for k, v in m["splits"][name]["shards"].items()}
    merged["splits"][name] = {"shards": dict(sorted(shards.items())), "instances": sum(shards.values())}
  summed = ("instances", "real_tokens", "maskable_tokens", "masked_tokens", "random_next", "sentences", "tokens",
            "documents_without_tokens")
  merged["stats"] = {k: sum(m["stats"].get(k, 0) for m in loaded) for k in summed}
  merged["task"] = {"index": None, "count": count}
  check_train_instances(merged.get("corpus") or output_dir, merged["splits"]["train"]["instances"],
                        merged["splits"]["eval"]["instances"],
                        {**merged["stats"], "documents": loaded[0]["stats"].get("documents")})  # every task reads all
  schema.write_manifest(output_dir, merged)
  return merged


def format_stats(manifest: dict) -> str:
  s = manifest["stats"]
  label_one = {"sop": "swapped", "full_sentences": "label 1"}.get(manifest.get("mode"), "random-next")
  lines = [f"documents {s.get('documents', 0):,}  sentences {s.get('sentences', 0):,}  "
           f"instances {s.get('instances', 0):,} (train {manifest['splits']['train']['instances']:,}, "
           f"eval {manifest['splits']['eval']['instances']:,})",
           f"avg real tokens/instance {s.get('avg_real_tokens_per_instance', 0):.1f}  "
           f"masked fraction {s.get('masked_fraction', 0):.4f}  {label_one} {s.get('random_next_fraction', 0):.3f}",
           f"skipped: empty lines {s.get('skipped_empty_lines', 0)}, empty documents "
           f"{s.get('skipped_empty_documents', 0)}, documents without tokens {s.get('documents_without_tokens', 0)}, "
           f"invalid UTF-8 lines {s.get('invalid_utf8_lines', 0)} (replaced)"]
  if "seconds" in s:
    lines.append(f"{s['seconds']:.1f}s on {s['workers']} workers: {s['instances_per_second']:,.0f} instances/s, "
                 f"{s['tokens_per_second']:,.0f} tokens/s")
  return "\n".join(lines)
