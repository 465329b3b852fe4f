"""Grain input pipeline over ArrayRecord shards: the batches of pipeline.py (tf.data), without TensorFlow.

Batches are the same host-local numpy dicts as pipeline.py's (keys, dtypes, shapes; packed rows too).
How it matches the tf.data pipeline, given the same files, seed and process split:
  * per-process split: the same as pipeline.process_shares (every count-th whole file, and every count-th
    record of each file left over); with split_records (eval) every count-th record of the one-process stream,
    as pipeline.py;
  * shuffle=False: records in the order of tf.data's deterministic interleave (`interleave_order`: cycle
    of min(cycle_length, files) files, one record from each in turn, an exhausted file's slot taking the
    next file at its next turn), so static data gives identical batches in order. tf.data repeats the
    file list before interleaving, so in the last cycle of an epoch it starts the next epoch's files
    early; here each epoch ends before the next begins. The two agree up to that point.
  * shuffle=True: a global shuffle of the process's records, reshuffled every epoch (Grain's index
    shuffle). tf.data shuffles the file order and then a window of shuffle_buffer records, so the orders
    differ, while both are deterministic functions of the seed.
  * dynamic masking: masking.mask_numpy (the code `prepare` masks the records with, every mode) on the
    tokens restored from masked_lm_ids (and the records' masking.UNIT_FEATURE where the mode needs it), with
    a numpy generator Grain seeds from (seed, position in the stream), so every epoch sees new masks. The
    tf.data path (masking.tf_remask_fn) draws its own random numbers, so the masks differ while their
    statistics agree (tests/test_grain_backend.py, tests/test_masking.py). The unit feature never reaches the
    batch.
The iterator's position (batches read) is a small JSON state that the Checkpointer saves inside each Orbax
step through Grain's Orbax handler (orbax_save_args / orbax_restore_args); batch i is a pure function of the
files, the seed and i, so a restore gives exactly the batches an uninterrupted run would have had, under any
number of worker processes. Parsing and masking run in
`worker_count` processes (Grain's mp_prefetch); 0 keeps them in the training process. A worker exits when
the training process dies, even by SIGKILL (otherwise Grain's workers outlive it, holding memory and files).
"""

import hashlib
import json
import os
import threading
import time

import grain
import numpy as np

from bert_jax.data import array_record_io, masking, pipeline, schema


def interleave_order(counts, cycle_length: int) -> np.ndarray:
  """Indices into the concatenated files, in the order tf.data's deterministic interleave (block 1) reads them.

  A slot whose file is exhausted yields nothing on that turn and opens the next file at its next turn."""
  offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
  slots: list[list[int] | None] = [[f, 0] for f in range(min(cycle_length, len(counts)))]
  slots += [None] * (cycle_length - len(slots))
  next_file, order, turn = len([s for s in slots if s is not None]), [], 0
  while next_file < len(counts) or any(s is not None for s in slots):
    slot = slots[turn]
    if slot is None and next_file < len(counts):
      slot = slots[turn] = [next_file, 0]
      next_file += 1
    if slot is not None:
      if slot[1] < counts[slot[0]]:
        order.append(offsets[slot[0]] + slot[1])
        slot[1] += 1
      else:
        slots[turn] = None
    turn = (turn + 1) % cycle_length
  return np.asarray(order, np.int64)


class _Reordered:
  """A random-access source read in a given order."""

  def __init__(self, source, order: np.ndarray):
    self._source, self._order = source, order

  def __len__(self) -> int:
    return len(self._order)

  def __getitem__(self, index: int):
    return self._source[int(self._order[index])]


class _Shares:
  """The records of pipeline.process_shares from the concatenated files, share after share: index i of a share is
  record offset + i * stride of its file. Arithmetic, not a table: a share can hold billions of records."""

  def __init__(self, source, file_counts, shares):
    self._source = source
    self._file_starts = np.concatenate([[0], np.cumsum(file_counts)[:-1]]).astype(np.int64)
    self._strides = np.asarray([stride for _, stride, _ in shares], np.int64)
    self._offsets = np.asarray([offset for _, _, offset in shares], np.int64)
    self.counts = [pipeline.share_count(n, stride, offset) for n, (_, stride, offset) in zip(file_counts, shares)]
    self._share_starts = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)

  def record_index(self, index):
    """Index (or indices) among the shares' records -> index in the concatenated files."""
    share = np.searchsorted(self._share_starts, index, side="right") - 1
    return (self._file_starts[share] + self._offsets[share]
            + (index - self._share_starts[share]) * self._strides[share])

  def __len__(self) -> int:
    return int(self._share_starts[-1])

  def __getitem__(self, index: int):
    return self._source[int(self.record_index(index))]


class _Parse(grain.transforms.Map):
  """Serialized Example -> the feature dict pipeline.py's parse gives (int32/float32; checked lengths)."""

  def __init__(self, expected: dict[str, int], packed: bool, what: str):
    self._expected, self._packed, self._what = expected, packed, what

  def map(self, serialized: bytes) -> dict[str, np.ndarray]:
    # Features outside the schema (the unit bits when masking is static, a field another tool added) are left
    # behind, as tf.io.parse_single_example leaves them: the same records read the same on both backends.
    features = array_record_io.parse(serialized, self._expected)
    lengths = {k: len(v) for k, v in features.items()}
    if lengths != self._expected:
      problems = [f"{k}: needs length {n}, record has {lengths.get(k, 'no such feature')}"
                  for k, n in self._expected.items() if lengths.get(k) != n]
      raise ValueError(f"records in {self._what} do not parse as configured:\n  " + "\n  ".join(problems))
    if not self._packed:
      features["next_sentence_labels"] = features["next_sentence_labels"].reshape(())
    return features


class _DynamicMask(grain.transforms.RandomMap):
  """Puts the recorded masks back and masks anew with masking.mask_numpy."""

  def __init__(self, dynamic: masking.DynamicMasking):
    self._masking = dynamic

  def random_map(self, ex: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    opts = self._masking.options
    ex = dict(ex)
    unit_bits = ex.pop(masking.UNIT_FEATURE, None)
    real = ex["masked_lm_weights"] > 0
    ids = ex["input_ids"].astype(np.int64)
    ids[ex["masked_lm_positions"][real]] = ex["masked_lm_ids"][real]
    length = int(ex["input_mask"].sum())
    masked, positions, labels = masking.mask_numpy(
        ids[:length], None if unit_bits is None else unit_bits[:length].astype(np.int64), opts,
        self._masking.vocab, rng)
    out = ex
    out["input_ids"] = ids.astype(np.int32)
    out["input_ids"][:length] = masked
    out.update(masking.padded_predictions(positions, labels, opts.max_predictions_per_seq, np.int32))
    return out


def _exit_with_parent(worker_index: int, worker_count: int) -> None:
  """Grain worker start-up: watch the training process and exit once it is gone."""
  del worker_index, worker_count
  parent = os.getppid()

  def watch():
    while os.getppid() == parent:
      time.sleep(1.0)
    os._exit(1)
  threading.Thread(target=watch, name="exit_with_parent", daemon=True).start()


def expected_lengths(cfg: pipeline.PipelineConfig) -> dict[str, int]:
  seq = cfg.max_seq_length
  if cfg.packed_instances:
    pred, k = cfg.packed_predictions, cfg.packed_instances
    return dict(input_ids=seq, input_mask=seq, segment_ids=seq, position_ids=seq, attention_segments=seq,
                masked_lm_positions=pred, masked_lm_ids=pred, masked_lm_weights=pred, next_sentence_labels=k,
                nsp_positions=k, nsp_weights=k)
  pred = cfg.max_predictions_per_seq
  out = dict(input_ids=seq, input_mask=seq, segment_ids=seq, masked_lm_positions=pred, masked_lm_ids=pred,
             masked_lm_weights=pred, next_sentence_labels=1)
  if cfg.dynamic_masking is not None and cfg.dynamic_masking.options.unit_feature:
    out[masking.UNIT_FEATURE] = seq
  return out


def record_dataset(files, process_index: int, process_count: int, shuffle: bool, cycle_length: int = 8,
                   split_records: bool = False):
  """This process's serialized records as a grain.MapDataset (one epoch), split and ordered as described above.
  With split_records, all processes' records in one-process order: build_batches splits them."""
  if split_records:
    process_index, process_count = 0, 1
  shares = pipeline.process_shares(files, process_index, process_count)
  source = grain.sources.ArrayRecordDataSource([path for path, _, _ in shares])
  if all(stride == 1 for _, stride, _ in shares) and shuffle:
    return grain.MapDataset.source(source)
  selected = _Shares(source, [array_record_io.num_records(path) for path, _, _ in shares], shares)
  if shuffle:
    return grain.MapDataset.source(selected)
  order = selected.record_index(interleave_order(selected.counts, min(cycle_length, len(shares))))
  return grain.MapDataset.source(_Reordered(source, order))


def build_batches(cfg: pipeline.PipelineConfig, process_index: int = 0, process_count: int = 1,
                  start_example: int = 0) -> grain.MapDataset:
  """The per-process batches as a grain.MapDataset: batch i is a pure function of (files, seed, process, i). With
  start_example, the batches of the same example stream from that example on."""
  if not cfg.files:
    raise ValueError("no input files given")
  if cfg.dynamic_masking is not None and cfg.packed_instances:
    raise ValueError("dynamic masking of packed rows is not supported: pack statically masked data, "
                     "or train unpacked with data.dynamic_masking")
  ds = record_dataset(cfg.files, process_index, process_count, cfg.shuffle, cfg.cycle_length, cfg.split_records)
  if cfg.shuffle:
    ds = ds.shuffle(seed=cfg.seed)
  if cfg.repeat:
    ds = ds.repeat()
  if cfg.split_records:  # after repeat, as tf.data shards the repeated stream
    ds = ds[process_index::process_count]
  what = f"{list(cfg.files)[:2]}{'...' if len(cfg.files) > 2 else ''}"
  ds = ds.map(_Parse(expected_lengths(cfg), bool(cfg.packed_instances), what))
  if cfg.dynamic_masking is not None:
    ds = ds.random_map(_DynamicMask(cfg.dynamic_masking), seed=masking.process_seed(cfg.seed, process_index))
  if start_example:
    ds = ds[start_example:]
  return ds.batch(cfg.batch_size, drop_remainder=cfg.drop_remainder)


def read_batches(batches: grain.MapDataset, start: int = 0, worker_count: int = 0) -> grain.IterDataset:
  """Batches from index `start` on, read ahead in threads or in `worker_count` processes. The order is the
  same for any worker count (workers take batches in turn)."""
  ds = batches[start:] if start else batches
  out = ds.to_iter_dataset(grain.ReadOptions(num_threads=1 if worker_count else 4, prefetch_buffer_size=8))
  if worker_count:
    out = out.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count), worker_init_fn=_exit_with_parent)
  return out


class GrainBatchIterator:
  """Numpy batches from build_batches; its position saves into the Orbax checkpoint step.

  The position is the number of batches read, so a checkpoint restores exactly under any data.grain_workers
  (Grain's own iterator state depends on the worker count). It also holds the examples read, so that a resume with
  another per-process batch size continues the example stream where it stopped (batch i of the old size is
  examples i*B..(i+1)*B-1, masks included). get_state/set_state/start_prefetch are what
  Grain's Orbax handler (grain.checkpoint.CheckpointHandler) calls on the item it saves.
  """

  def __init__(self, cfg: pipeline.PipelineConfig, process_index: int = 0, process_count: int = 1,
               worker_count: int = 0):
    self.cfg, self.process_index, self.process_count = cfg, process_index, process_count
    self.worker_count = worker_count
    self._batches = build_batches(cfg, process_index, process_count)
    self._position = 0
    self._start_example = 0  # where self._batches starts in the example stream
    self.changed_since_saved: str | None = None  # set_state's finding
    self._iterator = iter(read_batches(self._batches, 0, worker_count))

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = next(self._iterator)
    self._position += 1
    return batch

  def stream_settings(self) -> dict:
    """What orders and masks the example stream, saved with the position (files by name, so a moved data
    directory is the same stream). The batch size is not here: a resume under another continues by example."""
    c = self.cfg
    names = [os.path.basename(f) for f in c.files]
    digest = hashlib.sha256("\n".join(names).encode()).hexdigest()[:12]
    return {"files": f"{len(names)} files, names {digest}",
            "data.shuffle": c.shuffle, "data.seed": c.seed, "cycle_length": c.cycle_length if not c.shuffle else None,
            "data.dynamic_masking": None if c.dynamic_masking is None else repr(c.dynamic_masking.options),
            "packed_instances": c.packed_instances, "max_seq_length": c.max_seq_length,
            "max_predictions_per_seq": c.max_predictions_per_seq}

  def get_state(self) -> bytes:
    examples = self._start_example + self._position * self.cfg.batch_size
    return json.dumps({"batches_read": self._position, "examples_read": examples,
                       "batch_size": self.cfg.batch_size, "process_index": self.process_index,
                       "process_count": self.process_count, "stream": self.stream_settings()}).encode()

  def set_state(self, state: bytes) -> None:
    """Continues at the saved example count. When the stream's settings changed since, changed_since_saved says
    which: this run's stream then goes on from that count, which is not where the saved run stopped."""
    saved = json.loads(state)
    if (saved["process_index"], saved["process_count"]) != (self.process_index, self.process_count):
      raise ValueError(f"this iterator position was saved by process {saved['process_index']} of "
                       f"{saved['process_count']}, not {self.process_index} of {self.process_count}")
    stream = saved.get("stream")  # absent in positions saved before it was recorded
    self.changed_since_saved = None if stream is None else (", ".join(
        f"{k} {stream[k]} -> {v}" for k, v in self.stream_settings().items() if k in stream and stream[k] != v)
        or None)
    self.close()
    examples = int(saved.get("examples_read", int(saved["batches_read"]) * self.cfg.batch_size))
    if examples % self.cfg.batch_size:  # saved with another batch size: batches from that example on
      self._batches = build_batches(self.cfg, self.process_index, self.process_count, examples)
      self._start_example, self._position = examples, 0
    else:
      self._batches = build_batches(self.cfg, self.process_index, self.process_count)
      self._start_example, self._position = 0, examples // self.cfg.batch_size
    self._iterator = iter(read_batches(self._batches, self._position, self.worker_count))

  def start_prefetch(self) -> None:
    """Reading ahead starts with the first batch asked for."""

  def close(self) -> None:
    self._iterator.close()

  def orbax_save_args(self):
    """The Orbax args that save the position (grain.checkpoint.CheckpointHandler: one JSON per process)."""
    return grain.checkpoint.CheckpointSave(self)

  def orbax_restore_args(self):
    return grain.checkpoint.CheckpointRestore(self)


def find_files(patterns) -> tuple[str, ...]:
  """ArrayRecord files of a glob; a glob of TFRecords names the ArrayRecord files beside them when all exist."""
  files = pipeline.resolve_files(patterns)
  tfrecords = [f for f in files if f.endswith(".tfrecord")]
  if not tfrecords:
    return files
  beside = [array_record_io.shard_path(f) for f in tfrecords]
  missing = [f for f in beside if not os.path.exists(f)]  # ArrayRecord reads local files only
  if missing:
    raise ValueError(f"data.backend='grain' reads ArrayRecord files, but {tfrecords[:2]} are TFRecords and "
                     f"{missing[:2]} do not exist. Fix: point the glob at .array_record files, write them with "
                     f"`python -m bert_jax.data.prepare ... --formats=tfrecord,array_record`, or convert with "
                     f"`python -m bert_jax.data.array_record_io --input='...tfrecord' --output_dir=...`")
  # In glob order, each ArrayRecord file once: a glob such as 'train/*' matches a shard in both formats, and
  # listing its ArrayRecord file for each would read every example twice an epoch.
  return tuple(dict.fromkeys(array_record_io.shard_path(f) if f.endswith(".tfrecord") else f for f in files))


def check_files_match(files, *, max_seq_length: int, max_predictions_per_seq: int, vocab_size: int | None = None,
                      vocab_sha256: str | None = None, process_count: int = 1, what: str = "train",
                      dynamic_masking: masking.MaskingOptions | None = None,
                      static_masking: masking.MaskingOptions | None = None) -> dict | None:
  """Start-up checks as pipeline.check_files_match: the manifest or the first record, and no empty share."""
  manifest = schema.find_manifest(list(files))
  if manifest is not None:
    schema.check_manifest(manifest, max_seq_length=max_seq_length, max_predictions_per_seq=max_predictions_per_seq,
                          vocab_size=vocab_size, vocab_sha256=vocab_sha256, dynamic_masking=dynamic_masking,
                          static_masking=static_masking)
  counts = {}

  def count_of(f):
    if f not in counts:
      try:
        counts[f] = array_record_io.num_records(f)
      except (OSError, RuntimeError, ValueError) as e:
        raise ValueError(f"corrupt or unreadable ArrayRecord file: {f} ({str(e).splitlines()[0][:200]})") from None
    return counts[f]

  has_examples = lambda f: count_of(f) > 0
  pipeline.check_not_empty(files, has_examples, process_count=process_count, what=what,
                           source="none holds a record", count_of=count_of)
  if manifest is None:
    source = next(f for f in files if has_examples(f))
    first = array_record_io.read_records(source, [0])[0]
    schema.check_record_lengths(array_record_io.record_lengths(first), max_seq_length=max_seq_length,
                                max_predictions_per_seq=max_predictions_per_seq, source=source,
                                dynamic_masking=dynamic_masking)
  return manifest
