"""The pretraining TFRecord schema (exactly google-research/bert's) and manifest.json.

One tf.train.Example per instance:
  input_ids, input_mask, segment_ids          int64[max_seq_length]
  masked_lm_positions, masked_lm_ids          int64[max_predictions_per_seq]
  masked_lm_weights                           float[max_predictions_per_seq]
  next_sentence_labels                        int64[1]   0 = B follows A, 1 = B is random
and, only where the masking needs unit boundaries the ids cannot tell (a segmenter, knowledge masking):
  mask_unit_start                             int64[max_seq_length]  masking.py's unit bits
which readers that do not ask for it never see (tf.io.parse_single_example reads only the spec's features), so
the records stay readable by google-research/bert and every reader of that schema.
"""

import json
import os

from etils import epath

from bert_jax.data import masking

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"


def feature_spec(max_seq_length: int, max_predictions_per_seq: int, unit_feature: bool = False):
  """The FixedLenFeature spec run_pretraining.py parses with (and masking.UNIT_FEATURE when asked for)."""
  import tensorflow as tf
  seq = lambda n: tf.io.FixedLenFeature([n], tf.int64)
  extra = {masking.UNIT_FEATURE: seq(max_seq_length)} if unit_feature else {}
  return {**extra,
      "input_ids": seq(max_seq_length),
      "input_mask": seq(max_seq_length),
      "segment_ids": seq(max_seq_length),
      "masked_lm_positions": seq(max_predictions_per_seq),
      "masked_lm_ids": seq(max_predictions_per_seq),
      "masked_lm_weights": tf.io.FixedLenFeature([max_predictions_per_seq], tf.float32),
      "next_sentence_labels": tf.io.FixedLenFeature([1], tf.int64),
  }


def packed_feature_spec(max_seq_length: int, predictions_per_row: int, max_instances: int):
  """The spec of packed rows (bert_jax/data/packing.py documents the extra keys)."""
  import tensorflow as tf
  spec = feature_spec(max_seq_length, predictions_per_row)
  spec.update(position_ids=spec["input_ids"], attention_segments=spec["input_ids"],
              next_sentence_labels=tf.io.FixedLenFeature([max_instances], tf.int64),
              nsp_positions=tf.io.FixedLenFeature([max_instances], tf.int64),
              nsp_weights=tf.io.FixedLenFeature([max_instances], tf.float32))
  return spec


FLOAT_KEYS = ("masked_lm_weights", "nsp_weights")


def serialize(features: dict, row: int) -> bytes:
  """Row `row` of stacked instance features -> serialized tf.train.Example."""
  import tensorflow as tf
  def ints(v):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=v.tolist()))
  def floats(v):
    return tf.train.Feature(float_list=tf.train.FloatList(value=v.tolist()))
  feature = {k: (floats if k in FLOAT_KEYS else ints)(v[row]) for k, v in features.items()}
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(deterministic=True)


def record_lengths(serialized: bytes) -> dict[str, int]:
  """Feature name -> length, read from one serialized example (for data without a manifest)."""
  import tensorflow as tf
  example = tf.train.Example.FromString(serialized)
  out = {}
  for name, f in example.features.feature.items():
    kind = f.WhichOneof("kind")
    out[name] = len(getattr(f, kind).value)
  return out


def write_manifest(directory: str, manifest: dict) -> str:
  path = os.path.join(directory, MANIFEST_NAME)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump({"schema_version": SCHEMA_VERSION, **manifest}, f, indent=2, sort_keys=True)
  os.replace(tmp, path)
  return path


def find_manifest(files: list[str]) -> dict | None:
  """The manifest.json beside the shards (or one level up, for train/ and eval/ subdirs)."""
  if not files:
    return None
  here = os.path.dirname(files[0])
  for directory in (here, os.path.dirname(here)):
    path = epath.Path(directory) / MANIFEST_NAME  # epath: local or gs://, without importing TF for local files
    if path.exists():
      manifest = json.loads(path.read_text())
      if manifest.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{path}: schema_version {manifest.get('schema_version')} is not {SCHEMA_VERSION}")
      return _follow_moved_vocab(manifest, epath.Path(directory))
  return None


def _follow_moved_vocab(manifest: dict, data_dir: epath.Path) -> dict:
  """The manifest records its trained vocabulary by absolute path; a prepared directory that was copied or moved
  (to another machine, say) still holds it under vocab/, so point there when the recorded path is gone."""
  vocab = manifest.get("vocab") or {}
  recorded = vocab.get("file")
  if not recorded or epath.Path(recorded).exists():
    return manifest
  moved = data_dir / "vocab" / os.path.basename(recorded)
  if moved.exists():
    return {**manifest, "vocab": {**vocab, "file": str(moved)}}
  return manifest


def check_manifest(manifest: dict, *, max_seq_length: int, max_predictions_per_seq: int,
                   vocab_size: int | None = None, vocab_sha256: str | None = None, where: str = "data",
                   dynamic_masking: masking.MaskingOptions | None = None,
                   static_masking: masking.MaskingOptions | None = None) -> None:
  """Fails at start-up, naming both values, when the run's settings differ from the data's. The masking too: with
  dynamic masking the records' unit bits and layout were made for the data's masking; with static masks
  (`static_masking`: the config's masking) the records carry the data's masks, and a config that asks for other
  ones (span masking for SpanBERT's SBO head, say) would otherwise train on them without a word."""
  problems = []
  def compare(name, config_value, data_value):
    if config_value is not None and data_value is not None and config_value != data_value:
      problems.append(f"{name}: config has {config_value}, {where} manifest has {data_value}")
  compare("max_seq_length", max_seq_length, manifest.get("max_seq_length"))
  compare("max_predictions_per_seq", max_predictions_per_seq, manifest.get("max_predictions_per_seq"))
  vocab = manifest.get("vocab", {})
  compare("vocab size", vocab_size, vocab.get("size"))
  compare("vocab sha256", vocab_sha256, vocab.get("sha256"))
  config_masking = dynamic_masking or static_masking
  if config_masking is not None and manifest.get("masking") is not None:
    hint = "" if dynamic_masking else (" (static masks: the records hold the data's; set the config's data.masking "
                                       "fields to match, or prepare again)")
    problems += [p + hint for p in masking.check_settings(config_masking.settings(), manifest["masking"],
                                                          f"{where} manifest")]
  if problems:
    raise ValueError("training settings do not match the data:\n  " + "\n  ".join(problems) +
                     "\nFix the config (e.g. --config.data.max_seq_length=...) or re-prepare the data.")


def check_record_lengths(lengths: dict[str, int], *, max_seq_length: int, max_predictions_per_seq: int,
                         source: str, dynamic_masking: masking.MaskingOptions | None = None) -> None:
  """Without a manifest: compare the first record's feature lengths with the config."""
  expected = {"input_ids": max_seq_length, "input_mask": max_seq_length, "segment_ids": max_seq_length,
              "masked_lm_positions": max_predictions_per_seq, "masked_lm_ids": max_predictions_per_seq,
              "masked_lm_weights": max_predictions_per_seq, "next_sentence_labels": 1}
  if dynamic_masking is not None and dynamic_masking.unit_feature:
    expected[masking.UNIT_FEATURE] = max_seq_length  # the masking's unit bits: only prepare can write them
  problems = [f"{k}: config needs length {n}, {source} has {lengths.get(k, 'no such feature')}"
              for k, n in expected.items() if lengths.get(k) != n]
  if problems:
    if all(k in lengths for k in expected):  # BERT records of other lengths: the config can follow them
      seq, pred = lengths["input_ids"], lengths["masked_lm_positions"]
      fix = (f"--config.data.max_seq_length={seq} --config.data.max_predictions_per_seq={pred} (the records' "
             f"lengths), or prepare the data again at the config's")
    else:
      fix = "prepare the data with bert_jax.data.prepare, which writes every feature the config reads"
    raise ValueError("records do not match the config:\n  " + "\n  ".join(problems) + f"\nFix: {fix}")
