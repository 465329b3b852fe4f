"""Sequence packing: several short pretraining instances share one row.

  python -m bert_jax.data.packing --input_dir=data/pydocs-512 --output_dir=data/pydocs-512-packed3 \
      --max_instances=3

Google's algorithm makes 10% of instances short on purpose and many documents end early, so a
fixed-length batch is partly padding (about half of it at seq 512 on real corpora; bench/RESULTS.md
has the figure for pydocs). Packing concatenates whole instances into one row; the model keeps them
apart with a block-diagonal attention mask (`attention_segments`), positions that restart at 0 for
each instance (`position_ids`), and an NSP prediction per instance read at its own [CLS]
(`nsp_positions`). Nothing is cut: every instance lands whole in exactly one row.

Packed record (extra keys beside the google schema; K = max_instances, P = predictions_per_row):
  input_ids, input_mask, segment_ids, position_ids, attention_segments  int64[max_seq_length]
      attention_segments: 1..K for instance k of the row, 0 for padding
  masked_lm_positions, masked_lm_ids   int64[P]   positions within the row
  masked_lm_weights                    float[P]
  next_sentence_labels, nsp_positions  int64[K]   nsp_positions: the row offset of each [CLS]
  nsp_weights                          float[K]   1 for a real instance, 0 for an empty slot

Rows are planned by best-fit decreasing over windows of `window` instances: take the longest
instance first and put it in the row with the least room that still fits its tokens and its
masked positions.
"""

import bisect
import dataclasses
import glob
import json
import os
import sys

import numpy as np
import tqdm

from bert_jax.data import array_record_io, schema

PACKED_INT_KEYS = ("position_ids", "attention_segments", "nsp_positions")


@dataclasses.dataclass(frozen=True)
class PackingSpec:
  max_seq_length: int
  max_predictions_per_seq: int      # of the unpacked instances
  max_instances: int                # K: instances per row at most
  predictions_per_row: int = 0      # P (0: max_predictions_per_seq + max_instances)

  def __post_init__(self):
    if self.max_instances < 1:
      raise ValueError(f"max_instances must be >= 1, got {self.max_instances}")
    if self.predictions_per_row and self.predictions_per_row < self.max_predictions_per_seq:
      raise ValueError(f"predictions_per_row ({self.predictions_per_row}) must be at least "
                       f"max_predictions_per_seq ({self.max_predictions_per_seq}) so every instance fits")

  @property
  def row_predictions(self) -> int:
    return self.predictions_per_row or self.max_predictions_per_seq + self.max_instances


def plan_rows(lengths, predictions, spec: PackingSpec) -> list[list[int]]:
  """Instance indices grouped into rows (best-fit decreasing on tokens, also respecting P and K)."""
  order = sorted(range(len(lengths)), key=lambda i: (-int(lengths[i]), i))
  rows, room, pred_room = [], [], []
  open_by_room = []  # sorted (room, row) for rows that can still take an instance
  for i in order:
    n, p = int(lengths[i]), int(predictions[i])
    if n > spec.max_seq_length or p > spec.row_predictions:
      raise ValueError(f"instance {i} has {n} tokens and {p} predictions; a row holds "
                       f"{spec.max_seq_length} and {spec.row_predictions}")
    k = bisect.bisect_left(open_by_room, (n, -1))
    while k < len(open_by_room) and pred_room[open_by_room[k][1]] < p:
      k += 1
    if k < len(open_by_room):
      _, r = open_by_room.pop(k)
      rows[r].append(i)
      room[r] -= n
      pred_room[r] -= p
    else:
      r = len(rows)
      rows.append([i])
      room.append(spec.max_seq_length - n)
      pred_room.append(spec.row_predictions - p)
    if len(rows[r]) < spec.max_instances and room[r] > 0:
      bisect.insort(open_by_room, (room[r], r))
  return rows


def pack_features(features: dict, rows: list[list[int]], spec: PackingSpec) -> dict:
  """Padded google-schema features [N, ...] and a row plan -> packed features [len(rows), ...]."""
  T, P, K = spec.max_seq_length, spec.row_predictions, spec.max_instances
  R = len(rows)
  out = {k: np.zeros((R, T), np.int64) for k in ("input_ids", "input_mask", "segment_ids") + PACKED_INT_KEYS[:2]}
  out.update(masked_lm_positions=np.zeros((R, P), np.int64), masked_lm_ids=np.zeros((R, P), np.int64),
             masked_lm_weights=np.zeros((R, P), np.float32), next_sentence_labels=np.zeros((R, K), np.int64),
             nsp_positions=np.zeros((R, K), np.int64), nsp_weights=np.zeros((R, K), np.float32))
  lengths = features["input_mask"].sum(axis=1)
  labels = features["next_sentence_labels"].reshape(len(lengths))
  for r, members in enumerate(rows):
    offset = pred = 0
    for k, i in enumerate(members):
      n = int(lengths[i])
      span = slice(offset, offset + n)
      for key in ("input_ids", "input_mask", "segment_ids"):
        out[key][r, span] = features[key][i, :n]
      out["position_ids"][r, span] = np.arange(n)
      out["attention_segments"][r, span] = k + 1
      real = features["masked_lm_weights"][i] > 0
      p = int(real.sum())
      out["masked_lm_positions"][r, pred:pred + p] = features["masked_lm_positions"][i][real] + offset
      out["masked_lm_ids"][r, pred:pred + p] = features["masked_lm_ids"][i][real]
      out["masked_lm_weights"][r, pred:pred + p] = features["masked_lm_weights"][i][real]
      out["next_sentence_labels"][r, k] = labels[i]
      out["nsp_positions"][r, k] = offset
      out["nsp_weights"][r, k] = 1.0
      offset += n
      pred += p
  return out


def pack(features: dict, spec: PackingSpec) -> dict:
  """Packs one window of padded instances."""
  predictions = (features["masked_lm_weights"] > 0).sum(axis=1)
  return pack_features(features, plan_rows(features["input_mask"].sum(axis=1), predictions, spec), spec)


# What packing reads of an instance (a record's other features, e.g. masking.UNIT_FEATURE, are not packed).
_INSTANCE_KEYS = ("input_ids", "input_mask", "segment_ids", "masked_lm_positions", "masked_lm_ids",
                  "masked_lm_weights", "next_sentence_labels")


def _read_windows(files, window: int):
  """Stacked instance features [<=window, ...] of TFRecord or ArrayRecord files, in order, read without
  TensorFlow (Grain's TFRecord reader; array_record_io's parser)."""
  stack = lambda rows: {k: np.stack([r[k] for r in rows]) for k in _INSTANCE_KEYS}
  rows = []
  for path in files:
    for record in array_record_io.iter_records(path):
      rows.append(array_record_io.parse(record))
      if len(rows) == window:
        yield stack(rows)
        rows = []
  if rows:
    yield stack(rows)


def pack_split(files, out_dir: str, spec: PackingSpec, *, window: int = 20_000, num_shards: int = 8,
               total: int | None = None, formats: tuple[str, ...] = ("tfrecord",)) -> dict:
  """Packs TFRecord or ArrayRecord files into num_shards packed files under out_dir, in each of `formats`
  (tfrecord needs TensorFlow; array_record does not); returns counts."""
  formats = array_record_io.check_formats(formats)
  os.makedirs(out_dir, exist_ok=True)
  writers = [array_record_io.open_writers(os.path.join(out_dir, f"packed-{s:05d}-of-{num_shards:05d}.tfrecord"),
                                          formats) for s in range(num_shards)]
  stats = {"instances": 0, "rows": 0, "real_tokens": 0, "predictions": 0}
  try:
    with tqdm.tqdm(total=total, unit="inst", desc=f"packing {os.path.basename(out_dir)}", file=sys.stderr) as bar:
      for batch in _read_windows(files, window):
        packed = pack(batch, spec)
        for r in range(len(packed["input_ids"])):
          record = array_record_io.serialize(packed, r)
          for writer in writers[(stats["rows"] + r) % num_shards]:
            writer.write(record)
        stats["instances"] += len(batch["input_ids"])
        stats["rows"] += len(packed["input_ids"])
        stats["real_tokens"] += int(batch["input_mask"].sum())
        stats["predictions"] += int((batch["masked_lm_weights"] > 0).sum())
        bar.update(len(batch["input_ids"]))
  finally:
    for shard in writers:
      for w in shard:
        w.close()
  stats["fill_before"] = stats["real_tokens"] / max(1, stats["instances"] * spec.max_seq_length)
  stats["fill_after"] = stats["real_tokens"] / max(1, stats["rows"] * spec.max_seq_length)
  return stats


def pack_prepared(input_dir: str, output_dir: str, max_instances: int, predictions_per_row: int = 0,
                  window: int = 20_000, log=print) -> dict:
  """Packs a prepared dataset (train/ only; eval/ stays unpacked) and writes the packed manifest."""
  with open(os.path.join(input_dir, schema.MANIFEST_NAME)) as f:
    manifest = json.load(f)
  if manifest.get("packed"):
    raise ValueError(f"{input_dir} is already packed; pack the unpacked data it came from")
  spec = PackingSpec(manifest["max_seq_length"], manifest["max_predictions_per_seq"], max_instances,
                     predictions_per_row)
  # The packed split comes in the formats the prepared one has; it is read from ArrayRecord where that exists.
  suffixes = {"tfrecord": ".tfrecord", "array_record": array_record_io.SUFFIX}
  by_format = {fmt: sorted(glob.glob(os.path.join(input_dir, "train", "*" + suffixes[fmt])))
               for fmt in array_record_io.FORMATS}
  formats = tuple(fmt for fmt, files in by_format.items() if files)
  if not formats:
    raise ValueError(f"no train/*.tfrecord or train/*{array_record_io.SUFFIX} under {input_dir}")
  train_files = by_format["array_record"] or by_format["tfrecord"]
  total = manifest.get("splits", {}).get("train", {}).get("instances")
  stats = pack_split(train_files, os.path.join(output_dir, "train"), spec, window=window,
                     num_shards=len(train_files), total=total, formats=formats)
  if total is not None and stats["instances"] != total:
    raise ValueError(f"read {stats['instances']} train instances but the manifest lists {total}")
  packed_manifest = {k: v for k, v in manifest.items() if k != "schema_version"}
  packed_manifest["packed"] = {"max_instances": max_instances, "predictions_per_row": spec.row_predictions,
                               "source": os.path.abspath(input_dir), "window": window, **stats}
  packed_manifest["splits"] = {"train": {"instances": stats["instances"], "rows": stats["rows"]}}
  packed_manifest["eval_files"] = os.path.join(os.path.abspath(input_dir), "eval", "*" + suffixes[formats[0]])
  schema.write_manifest(output_dir, packed_manifest)
  log(f"packed {stats['instances']} instances into {stats['rows']} rows of {spec.max_seq_length}: "
      f"token fill {stats['fill_before']:.1%} -> {stats['fill_after']:.1%}")
  return packed_manifest


def main(argv):
  del argv
  from absl import flags
  f = flags.FLAGS
  pack_prepared(f.input_dir, f.output_dir, f.max_instances, f.predictions_per_row, f.window)


def cli():
  from absl import app, flags
  flags.DEFINE_string("input_dir", None, "a prepared dataset (manifest.json, train/)", required=True)
  flags.DEFINE_string("output_dir", None, "where the packed train/ and manifest.json go", required=True)
  flags.DEFINE_integer("max_instances", 3, "instances per row at most")
  flags.DEFINE_integer("predictions_per_row", 0, "masked positions per row (0: max_predictions_per_seq + K)")
  flags.DEFINE_integer("window", 20_000, "instances planned together")
  app.run(main)


if __name__ == "__main__":
  cli()
