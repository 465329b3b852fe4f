"""tf.data input pipeline: per-process TFRecord shards -> numpy batch dicts.

Batches are host-local numpy dicts (leading dim = per-process batch) with keys
  input_ids, input_mask, segment_ids        int32[B, max_seq_length]
  masked_lm_positions, masked_lm_ids        int32[B, max_predictions_per_seq]
  masked_lm_weights                         float32[B, max_predictions_per_seq]
  next_sentence_labels                      int32[B]

The pipeline knows only its process index and count (process_shares):
  * each process reads every count-th whole file of the first files - files % count, and every count-th
    example of each of the files % count left over, so equally large files give every process an equal share
    (fewer files than processes: every file is split by example);
  * split_records (the eval split): every process reads the one-process stream of all files and keeps every
    count-th example of it, so the processes together read what one process would, whatever their number.
Masking is static (as in the records) or dynamic: the original tokens are restored from
masked_lm_ids and re-masked with stateless RNG keyed by (seed, example counter), so each epoch
sees new masks and the stream stays deterministic. Dynamic masking is masking.tf_remask_fn: every mode
(token, ngram, span, knowledge; whole words too) with the rule prepare masks with. Records may carry the
optional masking.UNIT_FEATURE; it is parsed only when the masking needs it and never reaches the batch.
The iterator position (shuffle buffers included) saves and restores through tf.train.Checkpoint
for exact resume.
"""

import dataclasses
import json
import os

import numpy as np

from bert_jax.data import corpora, masking, schema

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _tf():
  import tensorflow as tf
  # tf.data runs on the host; keep TF away from accelerators JAX owns.
  try:
    tf.config.set_visible_devices([], "GPU")
    tf.config.set_visible_devices([], "TPU")
  except (RuntimeError, ValueError):
    pass  # already initialised, or no such device type
  return tf


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  files: tuple[str, ...]
  batch_size: int                  # per process
  max_seq_length: int
  max_predictions_per_seq: int
  seed: int = 0
  shuffle: bool = True
  repeat: bool = True
  shuffle_buffer: int = 10_000
  cycle_length: int = 8
  dynamic_masking: masking.DynamicMasking | None = None
  drop_remainder: bool = True
  packed_instances: int = 0        # K of packed records (packing.py); 0: the google schema
  packed_predictions: int = 0      # P of packed records
  split_records: bool = False      # processes split the one-process stream by example, not the files (eval)

  def __post_init__(self):
    if self.packed_instances and self.dynamic_masking is not None:
      raise ValueError("dynamic masking of packed rows is not supported: pack statically masked data, "
                       "or train unpacked with data.dynamic_masking")


def _parse(cfg: PipelineConfig):
  tf = _tf()
  if cfg.packed_instances:
    spec = schema.packed_feature_spec(cfg.max_seq_length, cfg.packed_predictions, cfg.packed_instances)
  else:
    unit_feature = cfg.dynamic_masking is not None and cfg.dynamic_masking.options.unit_feature
    spec = schema.feature_spec(cfg.max_seq_length, cfg.max_predictions_per_seq, unit_feature=unit_feature)

  def parse(serialized):
    ex = tf.io.parse_single_example(serialized, spec)
    out = {k: tf.cast(v, tf.int32) if v.dtype == tf.int64 else v for k, v in ex.items()}
    if not cfg.packed_instances:
      out["next_sentence_labels"] = tf.reshape(out["next_sentence_labels"], [])
    return out
  return parse


def process_shares(files, process_index: int, process_count: int) -> list[tuple[str, int, int]]:
  """What one process reads, as (file, stride, offset): the file's examples offset, offset + stride, ...
  Every count-th whole file (stride 1) of the first files - files % count, then every count-th example of each
  file left over (all files when there are fewer than processes), so equally large files give the processes
  shares that differ by at most one example per file left over: the offsets rotate from file to file, so the
  extra examples of a file that the count does not divide go to different processes. Whole files alone gave
  shares of unequal size when the count did not divide the files, and each process repeats its own share, so
  the smaller shares' examples were trained on more often."""
  files = list(files)
  whole = len(files) - len(files) % process_count
  return ([(f, 1, 0) for f in files[:whole][process_index::process_count]]
          + [(f, process_count, (process_index + j) % process_count) for j, f in enumerate(files[whole:])])


def share_count(total: int, stride: int, offset: int) -> int:
  """How many examples of a file of `total` the share (stride, offset) holds."""
  return max(0, -(-(total - offset) // stride))


def build_dataset(cfg: PipelineConfig, process_index: int = 0, process_count: int = 1):
  """The per-process tf.data.Dataset of batches (tensors; see BatchIterator for numpy)."""
  tf = _tf()
  if not cfg.files:
    raise ValueError("no input files given")
  files = list(cfg.files)
  options = tf.data.Options()
  options.deterministic = True
  options.experimental_optimization.map_parallelization = True
  autotune = tf.data.AUTOTUNE
  mine = process_shares(files, 0, 1) if cfg.split_records else process_shares(files, process_index, process_count)
  paths, strides, offsets = zip(*mine)
  whole_files = all(stride == 1 for stride in strides)
  # Whole files keep the graph of file names alone, which positions saved before left-over files were split by
  # record were saved in: such a resume continues instead of starting the stream afresh.
  ds = tf.data.Dataset.from_tensor_slices(list(paths) if whole_files else
                                          (list(paths), np.asarray(strides, np.int64), np.asarray(offsets, np.int64)))
  if cfg.shuffle:
    ds = ds.shuffle(len(mine), seed=cfg.seed, reshuffle_each_iteration=True)
  if cfg.repeat:
    ds = ds.repeat()
  read = tf.data.TFRecordDataset if whole_files else (
      lambda path, stride, offset: tf.data.TFRecordDataset(path).shard(stride, offset))
  ds = ds.interleave(read, cycle_length=min(cfg.cycle_length, len(mine)), num_parallel_calls=autotune,
                     deterministic=True)
  if cfg.split_records:
    ds = ds.shard(process_count, process_index)
  if cfg.shuffle:
    ds = ds.shuffle(cfg.shuffle_buffer, seed=cfg.seed + 1, reshuffle_each_iteration=True)
  ds = ds.map(_parse(cfg), num_parallel_calls=autotune, deterministic=True)
  if cfg.dynamic_masking is not None:
    remask = masking.tf_remask_fn(cfg.dynamic_masking, cfg.max_seq_length, cfg.max_predictions_per_seq,
                                  masking.process_seed(cfg.seed, process_index))
    ds = ds.enumerate().map(remask, num_parallel_calls=autotune, deterministic=True)
  ds = ds.batch(cfg.batch_size, drop_remainder=cfg.drop_remainder, num_parallel_calls=autotune, deterministic=True)
  return ds.prefetch(autotune).with_options(options)


def _corrupt_files(files) -> list[str]:
  tf = _tf()
  bad = []
  for f in files:
    try:
      for _ in tf.data.TFRecordDataset(f):
        pass
    except tf.errors.DataLossError:
      bad.append(f)
  return bad


class BatchIterator:
  """Numpy batches from build_dataset, with save/restore of the exact position."""

  def __init__(self, cfg: PipelineConfig, process_index: int = 0, process_count: int = 1):
    tf = _tf()
    self.cfg, self.process_index, self.process_count = cfg, process_index, process_count
    self._iterator = iter(build_dataset(cfg, process_index, process_count))
    self._checkpoint = tf.train.Checkpoint(iterator=self._iterator)

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    tf = _tf()
    try:
      batch = next(self._iterator)
    except tf.errors.DataLossError as e:
      bad = _corrupt_files(self.cfg.files)
      raise ValueError(f"corrupt TFRecord file(s): {bad or list(self.cfg.files)}; re-create or remove them "
                       f"({e.message.splitlines()[0]})") from None
    except tf.errors.InvalidArgumentError as e:
      raise ValueError(f"records in {list(self.cfg.files)[:3]}... do not parse with max_seq_length="
                       f"{self.cfg.max_seq_length}, max_predictions_per_seq={self.cfg.max_predictions_per_seq}, "
                       f"packed_instances={self.cfg.packed_instances}: "
                       f"{e.message.splitlines()[0]}") from None
    return {k: v.numpy() for k, v in batch.items()}

  def stream_settings(self) -> dict:
    """The settings a saved position belongs to that tf.data would restore into another pipeline without a word
    and fail on at the next batch (the batch and record shapes); saved beside the position."""
    c = self.cfg
    return {"batch_size": c.batch_size, "max_seq_length": c.max_seq_length,
            "max_predictions_per_seq": c.max_predictions_per_seq, "packed_instances": c.packed_instances,
            "packed_predictions": c.packed_predictions}

  def save(self, path_prefix: str) -> str:
    """Writes the iterator state (shuffle buffers included) and its stream_settings; returns the checkpoint path."""
    tf = _tf()
    path = self._checkpoint.write(path_prefix)
    with tf.io.gfile.GFile(path_prefix + ".settings.json", "w") as f:
      json.dump(self.stream_settings(), f)
    return path

  def restore(self, path: str) -> str | None:
    """Restores the position saved at `path`. Returns None, or why it is not this pipeline's position (the data
    settings changed since: shuffling, dynamic masking, the files, the batch or record shapes); the iterator then
    starts afresh. A missing or damaged state raises."""
    tf = _tf()
    settings = path + ".settings.json"
    if tf.io.gfile.exists(settings):
      with tf.io.gfile.GFile(settings) as f:
        saved = json.load(f)
      changed = [f"{k} {saved[k]} -> {v}" for k, v in self.stream_settings().items() if k in saved and saved[k] != v]
      if changed:
        return f"the input pipeline changed since ({', '.join(changed)})"
    try:
      self._checkpoint.read(path).assert_consumed()
    except (tf.errors.NotFoundError, tf.errors.FailedPreconditionError, tf.errors.InvalidArgumentError) as e:
      if "dataset definition has not changed" not in e.message:
        raise
      self._iterator = iter(build_dataset(self.cfg, self.process_index, self.process_count))
      self._checkpoint = tf.train.Checkpoint(iterator=self._iterator)
      return ("the input pipeline changed since (data.shuffle, data.dynamic_masking, the number of files or "
              "another setting that shapes the tf.data pipeline)")
    return None


def resolve_files(patterns) -> tuple[str, ...]:
  return tuple(corpora.expand_globs(patterns))


def check_files_match(files, *, max_seq_length: int, max_predictions_per_seq: int, vocab_size: int | None = None,
                      vocab_sha256: str | None = None, process_count: int = 1, what: str = "train",
                      dynamic_masking: masking.MaskingOptions | None = None,
                      static_masking: masking.MaskingOptions | None = None) -> dict | None:
  """Start-up check of the data against the config: the manifest if there is one, else the first record.

  Also fails when the files (or one process's share of them) hold no examples: the repeating pipeline would
  otherwise spin forever looking for a first batch.
  """
  tf = _tf()
  manifest = schema.find_manifest(list(files))
  if manifest is not None:
    schema.check_manifest(manifest, max_seq_length=max_seq_length, max_predictions_per_seq=max_predictions_per_seq,
                          vocab_size=vocab_size, vocab_sha256=vocab_sha256, dynamic_masking=dynamic_masking,
                          static_masking=static_masking)
  counts = manifest_counts(files, manifest)
  first_record = {}

  def has_examples(f):
    if counts is not None:
      return counts[f] > 0
    if f not in first_record:
      try:
        first_record[f] = next(iter(tf.data.TFRecordDataset(f).take(1)), None)
      except tf.errors.DataLossError:
        raise ValueError(f"{f} is not a TFRecord file, or a corrupt one (its first record does not read); raw "
                         f"text goes in data.corpus, which prepares it, not in data.{what}_files") from None
    return first_record[f] is not None

  check_not_empty(files, has_examples, process_count=process_count, what=what,
                  source="manifest.json lists 0 instances for them" if counts is not None else "none holds a record",
                  count_of=None if counts is None else counts.__getitem__)
  if manifest is None:
    first = next(r for r in first_record.values() if r is not None)
    source = next(f for f, r in first_record.items() if r is not None)
    schema.check_record_lengths(schema.record_lengths(first.numpy()), max_seq_length=max_seq_length,
                                max_predictions_per_seq=max_predictions_per_seq, source=source,
                                dynamic_masking=dynamic_masking)
  return manifest


def manifest_counts(files, manifest: dict | None) -> dict[str, int] | None:
  """File -> examples, from the manifest of the split the files sit in, or None where it does not say.

  Prepared data lists every shard's count; packed data only the split's total, which answers only when it is 0.
  """
  if manifest is None:
    return None
  split = manifest.get("splits", {}).get(os.path.basename(os.path.dirname(list(files)[0])))
  if split is None:
    return None
  shards = split.get("shards") or {}
  if all(os.path.basename(f) in shards for f in files):
    return {f: int(shards[os.path.basename(f)]) for f in files}
  if split.get("instances") == 0 or split.get("rows") == 0:
    return {f: 0 for f in files}
  return None


def check_not_empty(files, has_examples, *, process_count: int = 1, what: str = "train", source: str = "",
                    count_of=None) -> None:
  """Fails naming the files when they, or the share of them one process reads, hold no examples. count_of(f), the
  examples of a file where they are known cheaply (a manifest, ArrayRecord's index), tells whether a process's
  share of a file split by record is empty; without it such a file counts as giving every process some."""
  files = list(files)
  if not any(has_examples(f) for f in files):
    raise ValueError(
        f"the {what} files hold no examples ({source}): {_names(files)}; the input pipeline would wait forever "
        f"for a first batch. Fix: re-prepare from a corpus that yields instances (python -m bert_jax.data.prepare "
        f"prints how many), or point data.{what}_files at TFRecords that hold examples"
        + ("; data.eval_files='' skips evaluation, and with data.corpus a larger data.eval_fraction gives eval "
           "instances" if what == "eval" else ""))
  for index in range(process_count):
    shares = process_shares(files, index, process_count)
    share = [f for f, _, _ in shares]
    if not any(has_examples(f) if stride == 1 or count_of is None else share_count(count_of(f), stride, offset) > 0
               for f, stride, offset in shares):
      raise ValueError(
          f"process {index} of {process_count} would read only {what} files that hold no examples ({source}): "
          f"{_names(share)}; each process reads every {process_count}-th file (and a share of the examples of "
          f"the {len(files) % process_count} left over), and this one would wait forever. "
          f"Fix: leave the empty files out of data.{what}_files, or re-prepare with fewer, fuller shards "
          f"(--num_train_shards / --num_eval_shards)")


def _names(files, limit: int = 5) -> str:
  files = list(files)
  more = f" and {len(files) - limit} more" if len(files) > limit else ""
  return str(files[:limit]) + more
