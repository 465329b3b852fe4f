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
    elements per chunk instead of thousands. (The DirectRunner still holds every stage's output in memory, in
    the runner and in its workers: its peak memory grows with the output, see bench/RESULTS.md.)
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
import struct
import uuid
from typing import Any, Callable

NAMESPACE = "bert_jax"
# corpus statistic (corpora.py) -> counter name; other statistics keep their names
READ_COUNTERS = {"documents_read": "documents", "empty_lines": "skipped_empty_lines",
                 "empty_documents": "skipped_empty_documents"}
CHUNK_COUNTERS = ("instances", "documents_without_tokens", "sentences", "tokens")
_RECORD_HEADER = struct.Struct("<QI")  # a packed record's 64-bit hash and byte length


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
    key, features, stats = self.job.process_chunk(element)
    split = key[1]
    by_shard = collections.defaultdict(list)
    for row in range(len(features["input_ids"])):
      h = instance_hash(self.job.seed, key, row)
      by_shard[h % self.job.num_shards[split]].append((h, self.job.serialize(features, row)))
    for shard, records in sorted(by_shard.items()):
      yield (split, shard), pack_records(records)
    for name in CHUNK_COUNTERS:
      _counter(name).inc(stats.get(name, 0))
    yield _tagged("chunk_stats", (split, stats))


class _WriteShard:
  """((split, shard), packed records, b"" for the every-shard marker) -> the shard file, sorted by hash; yields
  (split, name, count)."""

  def __init__(self, job: Job):
    self.job = job

  def __call__(self, element):
    import tensorflow as tf  # as the local path writes them (data modules import TF only where they use it)
    (split, shard), values = element
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
  for directory in job.output_dirs:
    tf.io.gfile.makedirs(directory)
  pipeline = beam.Pipeline(options=options)
  build(pipeline, job)
  result = pipeline.run()
  state = result.wait_until_finish()
  if state != beam.runners.runner.PipelineState.DONE:
    raise RuntimeError(f"the Beam pipeline on {runner} ended {state}")
  counters = collections.Counter()
  for metric in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
    value = metric.committed if metric.committed is not None else metric.attempted
    counters[metric.key.metric.name] += value
  return dict(counters)
