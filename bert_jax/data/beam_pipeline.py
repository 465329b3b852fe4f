"""Pretraining data on Apache Beam: prepare.py's work, distributed by an engine (DirectRunner or Prism on one
machine; Dataflow, Spark or Flink on a cluster), with a shuffle at corpus scale.

  corpus parts ─Reshuffle─> read: chunks of documents (prepare.part_chunks) ─Reshuffle─>
  instances (prepare._process_chunk) ─> ((split, shard), records of this chunk packed in one blob) ─GroupByKey─>
  one shard, sorted by hash ─> TFRecord file          counts ─CombineGlobally─> manifest.json (one worker)

The pipeline runs the local path's own functions, handed over in a `Job` by prepare.prepare_beam (this module
imports nothing of prepare, so that prepare's CLI can dispatch here):
  * the same chunks: a document is named by (corpus part, ordinal within the part), so reading parts in
    parallel chunks the corpus as the local path does, and chunk (part, split, n) seeds the same RNG: the
    instances are the local path's, whatever the runner or number of workers;
  * shard and order: instance (chunk key, row) gets h = blake2b(seed, chunk key, row); it goes to shard
    h % num_shards and shards are written sorted by h. Every shard thus holds a uniform sample of the whole
    corpus, shuffled by the engine's GroupByKey, not in one worker's memory (one shard must fit a worker's
    memory: pick num_train_shards so that a shard is a few hundred MB). The local path writes chunk by chunk,
    so its shards hold the same instances split and ordered differently;
  * the shuffle moves one element per (chunk, shard): the chunk's records for that shard packed into one bytes
    blob (hash, length, record)..., not one element per instance, so an engine shuffles and encodes a few
    elements per chunk instead of thousands;
  * where the shuffle runs (Job.scratch_dir): on a cluster engine (Dataflow, Spark, Flink) the blobs themselves
    go through its GroupByKey, whose shuffle spills to disk. The DirectRunner and Prism keep every stage's output
    in memory, so there each chunk's blobs are written once to a scratch file beside the output (one file per
    chunk, the shards' blobs one after another) and the GroupByKey moves (file, offset, length) references; the
    writer of a shard reads its ranges back. A chunk's documents wait for their worker the same way. The engine
    still decides which shard goes where and when; the memory it holds is a few references per chunk
    (bench/RESULTS.md: peak memory flat from 1x to 16x), as MapReduce's shuffle keeps map outputs on disk. The
    scratch directory is removed once the manifest is written;
  * a shard is written to a temporary name and renamed, so a retried bundle rewrites the same bytes;
  * counts: Beam counters (namespace bert_jax) for parts, documents, skipped ones by reason, chunks and
    instances, reported at the end; the manifest gets the same numbers combined from all workers.
apache-beam is an extra (`pip install 'bert-jax[beam]'`): it is imported where the pipeline is built and run,
so that prepare (which imports this module for --runner) works without it. The steps are plain callables
(beam.FlatMap), which pickle by reference to this module.
"""

import collections
import dataclasses
import hashlib
import os
import pickle
import re
import struct
import uuid
from typing import Any, Callable

NAMESPACE = "bert_jax"
# corpus statistic (corpora.py) -> counter name; other statistics keep their names
READ_COUNTERS = {"documents_read": "documents", "empty_lines": "skipped_empty_lines",
                 "empty_documents": "skipped_empty_documents"}
CHUNK_COUNTERS = ("instances", "documents_without_tokens", "sentences", "tokens")
_RECORD_HEADER = struct.Struct("<QI")  # a packed record's 64-bit hash and byte length
_REFERENCE_HEADER = struct.Struct("<QQ")  # a scratch-file range: offset and length, then the file's path
# Runners whose shuffle holds everything in memory: they shuffle references to scratch files (Job.scratch_dir).
IN_MEMORY_RUNNERS = ("DirectRunner", "PrismRunner")
SHUFFLES = ("auto", "engine", "files")


@dataclasses.dataclass(frozen=True)
class Job:
  """What the pipeline makes; every callable is a picklable module-level function (or partial of one)."""
  parts: list                                   # corpus parts, each read by one worker
  splits: tuple[str, ...]                       # split names; a chunk key's second field indexes them
  num_shards: tuple[int, ...]                   # per split
  seed: int
  output_dirs: tuple[str, ...]                  # per split
  shard_file_name: Callable[[int, int], str]    # (shard, num_shards) -> file name
  read_part: Callable[..., Any]                 # (part index, part, stats=Counter) -> (chunk key, split, documents)...
  init_worker: Callable[[], None]               # loads the tokenizer etc. once per worker process
  process_chunk: Callable[..., Any]             # (chunk key, documents) -> (chunk key, features, stats)
  serialize: Callable[[dict, int], bytes]       # (features, row) -> serialized example
  finish: Callable[..., dict]                   # (corpus_stats=, totals=, split_instances=, shard_counts=) -> manifest
  scratch_dir: str = ""                         # "": blobs go through the engine's shuffle; else their files' dir


def instance_hash(seed: int, chunk_key, row: int) -> int:
  """The 64-bit hash that places instance `row` of chunk `chunk_key` (its shard and its place there)."""
  text = ":".join(map(str, (seed, *chunk_key, row)))
  return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def pack_records(records) -> bytes:
  """[(hash, record bytes)] -> one blob; unpack_records inverts it."""
  return b"".join(_RECORD_HEADER.pack(h, len(record)) + record for h, record in records)


def unpack_records(blob: bytes) -> list[tuple[int, bytes]]:
  records, at = [], 0
  while at < len(blob):
    h, size = _RECORD_HEADER.unpack_from(blob, at)
    at += _RECORD_HEADER.size
    records.append((h, blob[at:at + size]))
    at += size
  return records


def shuffle_kind(runner: str, shuffle: str) -> str:
  """'engine' or 'files' for --beam_shuffle=auto|engine|files on this runner (auto: files where the runner holds
  its shuffle in memory)."""
  if shuffle not in SHUFFLES:
    raise ValueError(f"--beam_shuffle={shuffle!r} is not one of {SHUFFLES}")
  if shuffle != "auto":
    return shuffle
  name = runner.split(".")[-1].lower().removesuffix("runner")  # Beam takes "direct", "DirectRunner", ...
  in_memory = {r.lower().removesuffix("runner") for r in IN_MEMORY_RUNNERS} | {"switchingdirect"}
  return "files" if name in in_memory else "engine"


def _write_scratch(scratch_dir: str, name: str, blobs: list[bytes]) -> list[bytes]:
  """Writes blobs to one scratch file (the same bytes again if a bundle is retried); returns a reference
  (offset, length, path) per blob."""
  import tensorflow as tf  # gfile reaches the cluster's filesystem (gs://, hdfs://) as the shards do
  path = os.path.join(scratch_dir, name)
  tmp = f"{path}.tmp-{uuid.uuid4().hex}"
  references, offset = [], 0
  with tf.io.gfile.GFile(tmp, "wb") as f:
    for blob in blobs:
      f.write(blob)
      references.append(_REFERENCE_HEADER.pack(offset, len(blob)) + path.encode())
      offset += len(blob)
  tf.io.gfile.rename(tmp, path, overwrite=True)
  return references


def _scratch_name(what: str, chunk_key) -> str:
  return f"{what}-" + "-".join(map(str, chunk_key))


def _read_reference(reference: bytes) -> bytes:
  import tensorflow as tf
  offset, length = _REFERENCE_HEADER.unpack_from(reference)
  with tf.io.gfile.GFile(reference[_REFERENCE_HEADER.size:].decode(), "rb") as f:
    f.seek(offset)
    blob = f.read(length)
  if len(blob) != length:
    raise IOError(f"scratch file {reference[_REFERENCE_HEADER.size:].decode()} ends before byte {offset + length}")
  return blob


def sum_counts(dicts) -> dict:
  """Sums dicts of counts key by key (keeping zero counts, so every key the workers report is there)."""
  total = collections.Counter()
  for d in dicts:
    total.update(d)
  return dict(total)


def _counter(name: str):
  from apache_beam.metrics.metric import Metrics
  return Metrics.counter(NAMESPACE, name)


def _tagged(tag: str, value):
  from apache_beam import pvalue
  return pvalue.TaggedOutput(tag, value)


class _ReadPart:
  """(part index, part) -> (chunk key, documents)... and its read statistics, tagged read_stats."""

  def __init__(self, job: Job):
    self.job = job

  def __call__(self, element):
    part_index, part = element
    stats = collections.Counter()
    for key, _, documents in self.job.read_part(part_index, part, stats=stats):
      _counter("chunks").inc()
      if self.job.scratch_dir:  # the chunk's text waits on disk, not in an in-memory runner, for its worker
        (documents,) = _write_scratch(self.job.scratch_dir, _scratch_name("documents", key),
                                      [pickle.dumps(documents, protocol=pickle.HIGHEST_PROTOCOL)])
      yield key, documents
    _counter("parts").inc()
    for name, count in stats.items():
      _counter(READ_COUNTERS.get(name, name)).inc(count)
    yield _tagged("read_stats", dict(stats))


class _MakeInstances:
  """(chunk key, documents) -> ((split, shard), packed records) per shard the chunk reaches, and (split, stats)
  tagged chunk_stats."""

  def __init__(self, job: Job):
    self.job = job
    self._ready = False

  def __getstate__(self):
    return {"job": self.job, "_ready": False}

  def __call__(self, element):
    if not self._ready:  # once per worker copy: load the tokenizer
      self.job.init_worker()
      self._ready = True
    if self.job.scratch_dir:
      element = element[0], pickle.loads(_read_reference(element[1]))  # our own scratch file
    key, features, stats = self.job.process_chunk(element)
    split = key[1]
    by_shard = collections.defaultdict(list)
    for row in range(len(features["input_ids"])):
      h = instance_hash(self.job.seed, key, row)
      by_shard[h % self.job.num_shards[split]].append((h, self.job.serialize(features, row)))
    shards = sorted(by_shard)
    blobs = [pack_records(by_shard[shard]) for shard in shards]
    if self.job.scratch_dir and blobs:
      blobs = _write_scratch(self.job.scratch_dir, _scratch_name("records", key), blobs)
    yield from zip(((split, shard) for shard in shards), blobs)
    for name in CHUNK_COUNTERS:
      _counter(name).inc(stats.get(name, 0))
    yield _tagged("chunk_stats", (split, stats))


class _WriteShard:
  """((split, shard), packed records (or references to them in scratch files), b"" for the every-shard marker) ->
  the shard file, sorted by hash; yields (split, name, count)."""

  def __init__(self, job: Job):
    self.job = job

  def __call__(self, element):
    import tensorflow as tf  # as the local path writes them (data modules import TF only where they use it)
    (split, shard), values = element
    if self.job.scratch_dir:
      values = [_read_reference(value) for value in values if value]
    # By hash; the record bytes break (improbable) ties. One shard is in memory here, as num_train_shards plans.
    records = sorted(record for blob in values for record in unpack_records(blob))
    name = self.job.shard_file_name(shard, self.job.num_shards[split])
    path = os.path.join(self.job.output_dirs[split], name)
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    with tf.io.TFRecordWriter(tmp) as writer:
      for _, record in records:
        writer.write(record)
    tf.io.gfile.rename(tmp, path, overwrite=True)
    _counter("shards_written").inc()
    yield self.job.splits[split], name, len(records)


def _finish(_, job: Job, corpus_stats, split_stats, written):
  """split_stats: [(split index, its chunks' summed statistics)] for the splits that have chunks."""
  totals = sum_counts(stats for _, stats in split_stats)
  split_instances = {name: sum(stats["instances"] for split, stats in split_stats if split == index)
                     for index, name in enumerate(job.splits)}
  shard_counts = {name: {} for name in job.splits}
  for split, name, count in sorted(written):
    shard_counts[split][name] = count
  job.finish(corpus_stats=corpus_stats, totals=totals, split_instances=split_instances, shard_counts=shard_counts)
  if job.scratch_dir:  # every shard is written (the side inputs are complete): the scratch files are spent
    import tensorflow as tf
    if tf.io.gfile.exists(job.scratch_dir):
      tf.io.gfile.rmtree(job.scratch_dir)


def _import_beam():
  try:
    import apache_beam
  except ModuleNotFoundError as e:
    raise ModuleNotFoundError(f"--runner needs Apache Beam ({e}): pip install 'bert-jax[beam]' (or apache-beam); "
                              f"without --runner, prepare runs the local path") from e
  return apache_beam


def build(pipeline, job: Job) -> None:
  """Adds the preparation to `pipeline` (a beam.Pipeline)."""
  beam = _import_beam()
  read = (pipeline
          | "Parts" >> beam.Create(list(enumerate(job.parts)))
          | "SpreadParts" >> beam.Reshuffle()
          | "Read" >> beam.FlatMap(_ReadPart(job)).with_outputs("read_stats", main="chunks"))
  made = (read.chunks
          | "SpreadChunks" >> beam.Reshuffle()
          | "Instances" >> beam.FlatMap(_MakeInstances(job)).with_output_types(tuple[tuple[int, int], bytes])
          .with_outputs("chunk_stats", main="records"))
  every_shard = [((split, shard), b"") for split, n in enumerate(job.num_shards) for shard in range(n)]
  written = ((made.records, pipeline | "EveryShard" >> beam.Create(every_shard))  # empty shards get a file too
             | "WithEmptyShards" >> beam.Flatten()
             | "Shuffle" >> beam.GroupByKey()
             | "Write" >> beam.FlatMap(_WriteShard(job)))
  corpus_stats = read.read_stats | "SumRead" >> beam.CombineGlobally(sum_counts)
  split_stats = (made.chunk_stats
                 | "SumChunks" >> beam.CombinePerKey(sum_counts)
                 | "SplitStats" >> beam.combiners.ToList())
  written_list = written | "Written" >> beam.combiners.ToList()
  _ = (pipeline
       | "One" >> beam.Create([None])
       | "Manifest" >> beam.Map(_finish, job, beam.pvalue.AsSingleton(corpus_stats),
                                beam.pvalue.AsSingleton(split_stats), beam.pvalue.AsSingleton(written_list)))


def pipeline_options(runner: str, pipeline_args: list[str]):
  """Beam's PipelineOptions from --runner and the flags prepare did not know; an option no Beam runner knows
  fails."""
  from apache_beam.options.pipeline_options import PipelineOptions
  _import_beam()
  options = PipelineOptions([f"--runner={runner}", *pipeline_args])
  unknown = sorted(set(options.get_all_options(retain_unknown_options=True)) - set(options.get_all_options()))
  if unknown:
    raise ValueError(f"flags {['--' + name for name in unknown]} are neither prepare's nor Beam pipeline options "
                     f"(python -m bert_jax.data.prepare --helpfull lists prepare's; Beam's are in "
                     f"apache_beam.options.pipeline_options)")
  return options


def run(job: Job, runner: str, pipeline_args: list[str]) -> dict[str, int]:
  """Runs the job to the end; returns the bert_jax counters (name -> count)."""
  import tensorflow as tf
  beam = _import_beam()
  from apache_beam.metrics.metric import MetricsFilter
  options = pipeline_options(runner, pipeline_args)
  if job.scratch_dir:  # a failed earlier run's scratch files: nothing reads them again
    parent, name = os.path.split(job.scratch_dir.rstrip("/"))
    pattern = re.compile(re.escape(name.rsplit("-", 1)[0]) + r"-[0-9a-f]{12}/?")
    for entry in tf.io.gfile.listdir(parent) if tf.io.gfile.isdir(parent) else ():
      if pattern.fullmatch(entry):
        tf.io.gfile.rmtree(os.path.join(parent, entry.rstrip("/")))
  for directory in job.output_dirs + ((job.scratch_dir,) if job.scratch_dir else ()):
    tf.io.gfile.makedirs(directory)
  pipeline = beam.Pipeline(options=options)
  build(pipeline, job)
  try:
    result = pipeline.run()
    state = result.wait_until_finish()
  finally:  # _finish removes the scratch files after a good run; a failed one must not leave them either
    if job.scratch_dir and tf.io.gfile.exists(job.scratch_dir):
      tf.io.gfile.rmtree(job.scratch_dir)
  if state != beam.runners.runner.PipelineState.DONE:
    raise RuntimeError(f"the Beam pipeline on {runner} ended {state}")
  counters = collections.Counter()
  for metric in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
    value = metric.committed if metric.committed is not None else metric.attempted
    counters[metric.key.metric.name] += value
  return dict(counters)
