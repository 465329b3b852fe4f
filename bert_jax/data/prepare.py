"""Corpus -> vocabulary -> NSP/MLM instances -> TFRecord and/or ArrayRecord shards + manifest.json.

  python -m bert_jax.data.prepare --corpus=pydocs --output_dir=data/pydocs-128 --vocab_size=8000
  (ALBERT-style: --mode=sop --max_ngram=3; RoBERTa-style: --mode=full_sentences --vocab_type=bpe;
   SpanBERT: --mode=full_sentences --masking=span; Chinese whole-word masking: --vocab_type=wordpiece
   --segmenter=jieba --whole_word_masking; ERNIE: --masking=knowledge --entity_file=entities.txt)

How it scales:
  * Streaming: documents are read one at a time and grouped into chunks of `docs_per_chunk`; at most
    2 x workers chunks are in memory. Each chunk is also the buffer random-next segments come from.
  * Parallel: chunks are tokenized and turned into instances in `workers` processes.
  * Deterministic: the corpus is cut into parts (corpora.py: groups of files, row ranges); each part's
    documents fill chunks per split, and chunk n of split s in part p uses the RNG seeded (seed, p, s, n).
    Its instances go to shard (index of the chunk within its split) % num_shards; a shard holds the first of
    the dupe_factor passes of its chunks in chunk order, then the second pass, and so on (_Shards), so that a
    document's copies are far apart in the stream. The output does not depend on the number of workers. The Beam pipeline (--runner, beam_pipeline.py)
    makes the same chunks with the same functions, so it makes the same instances.
  * Formats: `formats` ("tfrecord", "array_record" or both) picks what each shard is written as; an
    ArrayRecord shard holds the same examples as the TFRecord one of the same name, in the same order
    (for the Grain input backend). Writing only ArrayRecord needs no TensorFlow.
  * Independent shards: with --num_tasks=N --task_index=i, a machine makes only the shards
    s with s % N == i (it reads the corpus but processes only its chunks) and writes a partial
    manifest; `--merge_manifests` combines them.
  * Train/eval: each document goes to eval with probability eval_fraction (a hash of seed, its part and
    its ordinal in the part decides), so the split is the same for any number of workers or tasks.
"""

import collections
import dataclasses
import functools
import hashlib
import json
import multiprocessing
import os
import shutil
import struct
import sys
import time
import uuid

import numpy as np
import tqdm

from bert_jax.data import array_record_io, beam_pipeline, beam_plan, corpora, instances, masking, schema, segmenters
from bert_jax.data import manifest as manifest_lib
from bert_jax.data import tokenizer as tokenizer_lib

_worker_state = {}


def _skipped(corpus, stats) -> str:
  read = f"{stats['bytes_read']:,} bytes read, " if getattr(corpus, "progress_key", "") == "bytes_read" else ""
  return f"{read}{stats['empty_lines']} blank lines and {stats['empty_documents']} empty documents skipped"


def check_has_documents(corpus, name: str) -> None:
  """Fails fast, before a vocabulary is trained on nothing, when the corpus yields no document at all."""
  stats = collections.Counter()
  documents = corpus.iter_documents(stats)
  try:
    first = next(iter(documents), None)
  finally:
    if hasattr(documents, "close"):
      documents.close()
  if first is None:
    raise manifest_lib.EmptyCorpusError(
        f"corpus {name} holds no documents ({_skipped(corpus, stats)}): every line is empty or "
        f"whitespace only, so there is nothing to train on. Check the corpus path (--corpus, "
        f"data.corpus) and its files: one sentence per line, a blank line between documents "
                           f"(or one document per line with --one_doc_per_line)")


def _unit_hash(seed: int, *ordinals: int) -> float:
  """A deterministic number in [0, 1) for (seed, *ordinals)."""
  digest = hashlib.blake2b(":".join(map(str, (seed, *ordinals))).encode(), digest_size=8).digest()
  return int.from_bytes(digest, "little") / 2**64


SPLITS = manifest_lib.SPLITS


def corpus_parts(corpus) -> list:
  """The corpus's parts (corpora.py), or one part (None) for a source that does not cut itself."""
  return list(corpus.parts()) if hasattr(corpus, "parts") else [None]


def part_chunks(corpus, part_index: int, part, *, seed: int, eval_fraction: float, docs_per_chunk: int, stats):
  """((part_index, split index, chunk number in the split), split, documents) of one part, in reading order.

  A document goes to eval when _unit_hash(seed, part_index, ordinal in the part) < eval_fraction; each split
  fills its own chunks of docs_per_chunk documents, the last ones partial (train's, then eval's).
  """
  documents = corpus.iter_documents(stats) if part is None else corpus.iter_part(part, stats)
  buffers, counts = {name: [] for name in SPLITS}, dict.fromkeys(SPLITS, 0)
  for ordinal, doc in enumerate(documents):
    split = "eval" if _unit_hash(seed, part_index, ordinal) < eval_fraction else "train"
    buffers[split].append(doc)
    if len(buffers[split]) == docs_per_chunk:
      yield (part_index, SPLITS.index(split), counts[split]), split, buffers[split]
      buffers[split], counts[split] = [], counts[split] + 1
  for split in SPLITS:
    if buffers[split]:
      yield (part_index, SPLITS.index(split), counts[split]), split, buffers[split]


def _init_worker(vocab_file, lower_case, opts, seed):
  tok = tokenizer_lib.load(vocab_file, lower_case)
  masking_opts = opts.masking_options
  # Unit bits the ids cannot tell (a segmenter's words, phrases, entities) travel with the ids as token keys.
  encode = segmenters.UnitMarker(tok, masking_opts).encode if masking_opts.unit_feature else tok.encode
  _worker_state.update(tok=tok, vocab=instances.VocabIds.from_tokenizer(tok), opts=opts, seed=seed, encode=encode)


def encode_document(encode, vocab_kind: str, sentences: list[str]) -> list[list[int]]:
  """A document's sentences as token ids. Byte-level BPE marks a word start by its leading space, which every
  sentence after the first has in the running text: encoded without it, a sentence's first word would get the
  pieces of a line start, which fine-tuning text (encoded whole, as HF's and fairseq's encoders do) rarely has."""
  if vocab_kind != "bpe":
    return [encode(s) for s in sentences]
  return [encode(" " + s if i else s) for i, s in enumerate(sentences)]


def _chunk_instances(job):
  """(chunk key, documents as sentence lists) -> (chunk key, features of each dupe_factor pass, all of them as one
  features dict, stats); the key seeds the RNG."""
  chunk_key, docs = job
  vocab, opts = _worker_state["vocab"], _worker_state["opts"]
  token_docs = [encode_document(_worker_state["encode"], _worker_state["tok"].kind, doc) for doc in docs]
  rng = np.random.default_rng([_worker_state["seed"], *chunk_key])
  passes = instances.create_instance_passes(token_docs, opts, vocab, rng)
  features = instances.concatenate(passes, opts)
  ids, mask = features["input_ids"], features["input_mask"]
  special = (ids == vocab.cls_id) | (ids == vocab.sep_id)
  stats = {"sentences": sum(len(d) for d in docs), "tokens": sum(len(s) for d in token_docs for s in d),
           "instances": len(ids), "real_tokens": int(mask.sum()),
           "maskable_tokens": int((mask.astype(bool) & ~special).sum()),
           "masked_tokens": int(features["masked_lm_weights"].sum()),
           "random_next": int(features["next_sentence_labels"].sum()),
           "documents_without_tokens": sum(not any(d) for d in token_docs)}  # dropped: nothing the vocab encodes
  return chunk_key, passes, features, stats


def _process_chunk(job):
  """(chunk key, documents) -> (chunk key, features of each dupe_factor pass, stats): what _Shards writes."""
  chunk_key, passes, _, stats = _chunk_instances(job)
  return chunk_key, passes, stats


def _process_chunk_merged(job):
  """(chunk key, documents) -> (chunk key, all passes as one features dict, stats): the Beam path places each
  instance by a hash."""
  chunk_key, _, features, stats = _chunk_instances(job)
  return chunk_key, features, stats


def shard_file_name(shard: int, num_shards: int) -> str:
  return f"part-{shard:05d}-of-{num_shards:05d}.tfrecord"


@dataclasses.dataclass
class _Shards:
  """Shard writers of one split (TFRecord and/or ArrayRecord); shard s is written only by the task that owns it.

  A shard holds the first dupe_factor pass of its chunks, in chunk order, then the second pass of the same
  chunks, and so on: a document's copies are about a shard's length / dupe_factor apart in the stream, as
  google-research/bert's shuffle of the whole corpus puts them, instead of within one shuffle buffer. The later
  passes wait in spool files (serialized records, length-prefixed) beside the shards until close().
  """
  directory: str
  num_shards: int
  task_index: int
  num_tasks: int
  formats: tuple[str, ...] = ("tfrecord",)

  def __post_init__(self):
    os.makedirs(self.directory, exist_ok=True)
    self.writers, self.counts, self.chunks_seen = {}, collections.Counter(), 0
    # One per task: tasks writing one output directory (a shared filesystem) never touch each other's spools.
    self.spool_dir = os.path.join(self.directory, f".spool-{self.task_index:05d}")
    shutil.rmtree(self.spool_dir, ignore_errors=True)  # an interrupted run's, which this run rewrites
    self.spools = {}  # (shard, pass) -> open spool file

  def path(self, shard):
    return os.path.join(self.directory, shard_file_name(shard, self.num_shards))

  def owns(self, shard):
    return shard % self.num_tasks == self.task_index

  def next_shard(self):
    shard = self.chunks_seen % self.num_shards
    self.chunks_seen += 1
    return shard

  def _open(self, shard):
    """The shard's writers, one per format; the ArrayRecord one gets the TFRecord's bytes when both are written."""
    return array_record_io.open_writers(self.path(shard), self.formats)

  def _spool(self, shard, pass_index):
    if (shard, pass_index) not in self.spools:
      os.makedirs(self.spool_dir, exist_ok=True)
      self.spools[shard, pass_index] = open(os.path.join(self.spool_dir, f"{shard:05d}-{pass_index:03d}"), "w+b")
    return self.spools[shard, pass_index]

  def write(self, shard, passes):
    """Writes one chunk's instances (a features dict per dupe_factor pass) to `shard`."""
    if shard not in self.writers:
      self.writers[shard] = self._open(shard)
    serialize = schema.serialize if "tfrecord" in self.formats else array_record_io.serialize
    for pass_index, features in enumerate(passes):
      for row in range(len(features["input_ids"])):
        record = serialize(features, row)
        if pass_index == 0:
          for writer in self.writers[shard]:
            writer.write(record)
        else:
          self._spool(shard, pass_index).write(struct.pack("<Q", len(record)) + record)
      self.counts[shard] += len(features["input_ids"])

  def _write_spooled(self, shard):
    for pass_index in sorted(p for s, p in self.spools if s == shard):
      spool = self.spools.pop((shard, pass_index))
      spool.seek(0)
      while header := spool.read(8):
        record = spool.read(struct.unpack("<Q", header)[0])
        for writer in self.writers[shard]:
          writer.write(record)
      spool.close()
      os.remove(spool.name)

  def close(self):
    for shard in range(self.num_shards):
      if self.owns(shard) and shard not in self.writers:
        self.writers[shard] = self._open(shard)  # an empty shard, so the set is complete
    for shard, writers in self.writers.items():
      self._write_spooled(shard)
      for w in writers:
        w.close()
    if os.path.isdir(self.spool_dir):
      os.rmdir(self.spool_dir)
    return {os.path.basename(self.path(s)): self.counts[s] for s in range(self.num_shards) if self.owns(s)}


def prepare(corpus, output_dir: str, opts: instances.InstanceOptions, *, vocab_file: str | None = None,
            vocab_size: int = 8000, vocab_type: str = "sentencepiece", lower_case: bool = False,
            seed: int = 12345, num_train_shards: int = 8,
            num_eval_shards: int = 1, eval_fraction: float = 0.02, docs_per_chunk: int = 256,
            workers: int | None = None,
            task_index: int = 0, num_tasks: int = 1, corpus_description: str = "", progress: bool = True,
            formats=("tfrecord",)) -> dict:
  """Writes OUTPUT_DIR/{train,eval}/part-*.tfrecord (and/or .array_record, see `formats`) and the manifest;
  returns the manifest dict.

  Without vocab_file, trains a vocabulary of vocab_type ('sentencepiece' or 'bpe') into OUTPUT_DIR/vocab.
  """
  if not 0 <= task_index < num_tasks:
    raise ValueError(f"task_index {task_index} must be in [0, num_tasks={num_tasks})")
  tokenizer_lib.check_vocab_type(vocab_type)
  segmenters.load_segmenter(opts.segmenter)  # a missing segmenter fails now, naming what to install
  formats = array_record_io.check_formats(formats)
  corpus_name = corpus_description or type(corpus).__name__
  check_has_documents(corpus, corpus_name)
  os.makedirs(output_dir, exist_ok=True)
  if vocab_file is None:
    prefix = os.path.join(output_dir, "vocab", {"sentencepiece": "spm"}.get(vocab_type, vocab_type))
    vocab_file = tokenizer_lib.train_vocab(corpus, vocab_type, prefix, vocab_size, lower_case=lower_case)
  tok = tokenizer_lib.load(vocab_file, lower_case)
  workers = workers or os.cpu_count() or 1
  splits = {"train": _Shards(os.path.join(output_dir, "train"), num_train_shards, task_index, num_tasks, formats),
            "eval": _Shards(os.path.join(output_dir, "eval"), num_eval_shards, task_index, num_tasks, formats)}
  corpus_stats, totals = collections.Counter(), collections.Counter()
  split_totals = {name: collections.Counter() for name in splits}
  start = time.time()
  bar = tqdm.tqdm(total=corpus.progress_total(), unit=corpus.progress_unit, unit_scale=True, disable=not progress,
                  desc="prepare", file=sys.stderr, dynamic_ncols=True)

  parts = corpus_parts(corpus)

  def chunks():
    """(chunk key, split, documents) of every part in order (part_chunks)."""
    for part_index, part in enumerate(parts):
      for key, split, docs in part_chunks(corpus, part_index, part, seed=seed, eval_fraction=eval_fraction,
                                          docs_per_chunk=docs_per_chunk, stats=corpus_stats):
        bar.update(corpus_stats[corpus.progress_key] - bar.n)
        yield key, split, docs

  def jobs():  # (job, split, shard) for the chunks this task owns, in corpus order
    for index, split, docs in chunks():
      shard = splits[split].next_shard()
      if splits[split].owns(shard):
        yield (index, docs), split, shard

  def consume(results, placements):
    for (_, passes, stats), (split, shard) in zip(results, placements):
      splits[split].write(shard, passes)
      totals.update(stats)
      split_totals[split]["instances"] += stats["instances"]
    bar.set_postfix(instances=totals["instances"], refresh=False)

  init_args = (vocab_file, lower_case, opts, seed)
  if workers == 1:
    _init_worker(*init_args)
    for job, split, shard in jobs():
      consume([_process_chunk(job)], [(split, shard)])
  else:
    ctx = multiprocessing.get_context("spawn")  # TF in this process must not be forked
    with ctx.Pool(workers, initializer=_init_worker, initargs=init_args) as pool:
      window, placements = [], []
      for job, split, shard in jobs():
        window.append(job)
        placements.append((split, shard))
        if len(window) == 2 * workers:
          consume(pool.map(_process_chunk, window), placements)
          window, placements = [], []
      if window:
        consume(pool.map(_process_chunk, window), placements)
  bar.close()
  shard_counts = {name: s.close() for name, s in splits.items()}
  seconds = time.time() - start
  manifest = manifest_lib.build_manifest(
      opts, seed=seed, tok=tok, corpus_description=corpus_description, parts=len(parts), shard_counts=shard_counts,
      split_instances={k: v["instances"] for k, v in split_totals.items()}, corpus_stats=corpus_stats,
      totals=totals, seconds=seconds, workers=workers, task_index=task_index, num_tasks=num_tasks, formats=formats)
  if num_tasks == 1:  # with several tasks, one may own only empty shards: merge_manifests checks the total
    manifest_lib.check_train_instances(corpus_name, split_totals["train"]["instances"],
                                       split_totals["eval"]["instances"], manifest["stats"], eval_fraction)
    schema.write_manifest(output_dir, manifest)
  else:
    with open(os.path.join(output_dir, f"manifest.task-{task_index:05d}-of-{num_tasks:05d}.json"), "w") as f:
      json.dump(manifest, f, indent=2, sort_keys=True)
  return manifest


def prepare_beam(corpus, output_dir: str, opts: instances.InstanceOptions, *, runner: str, vocab_file: str | None,
                 pipeline_args=(), lower_case: bool = False, seed: int = 12345, num_train_shards: int = 8,
                 num_eval_shards: int = 1, eval_fraction: float = 0.02, docs_per_chunk: int = 256,
                 corpus_description: str = "", formats=("tfrecord",), shuffle: str = "auto", log=print) -> dict:
  """prepare() on an Apache Beam runner (beam_pipeline.py): the same chunks, made into instances by the same
  _process_chunk, so the same instances; shards are assigned per instance by a hash and shuffled through the
  engine (they hold other instances, in another order, than the local path's). Writes TFRecords and the
  manifest; returns the manifest. shuffle (beam_pipeline.SHUFFLES): whether the records themselves go through the
  engine's shuffle or through scratch files in OUTPUT_DIR/.beam-shuffle-* (auto: files on in-memory runners)."""
  corpus_name = corpus_description or type(corpus).__name__
  if not vocab_file:
    raise ValueError("the Beam path takes a trained vocabulary (--vocab_file): train one first on a sample of the "
                     "corpus, e.g. `python -m bert_jax.data.tokenizer --corpus='SAMPLE/*.txt' --output=vocab/spm "
                     "--vocab_size=30522` writes vocab/spm.model")
  if tuple(formats) != ("tfrecord",):
    raise ValueError(f"formats {list(formats)}: the Beam path writes TFRecord shards; the Grain backend converts "
                     f"them to ArrayRecord on first use (or: python -m bert_jax.data.array_record_io)")
  segmenters.load_segmenter(opts.segmenter)  # a missing segmenter fails now, not on the workers
  check_has_documents(corpus, corpus_name)
  tok = tokenizer_lib.load(vocab_file, lower_case)  # a bad vocabulary fails here, before any worker starts
  parts = corpus_parts(corpus)
  scratch_dir = ""
  if beam_pipeline.shuffle_kind(runner, shuffle) == "files":
    scratch_dir = os.path.join(output_dir, f".beam-shuffle-{uuid.uuid4().hex[:12]}")
    log(f"shuffle: records in scratch files under {scratch_dir} (removed at the end), references through "
        f"{runner}'s GroupByKey")
  job = beam_pipeline.Job(
      parts=parts, splits=SPLITS, num_shards=(num_train_shards, num_eval_shards), seed=seed,
      output_dirs=tuple(os.path.join(output_dir, split) for split in SPLITS), shard_file_name=shard_file_name,
      read_part=functools.partial(part_chunks, corpus, seed=seed, eval_fraction=eval_fraction,
                                  docs_per_chunk=docs_per_chunk),
      init_worker=functools.partial(_init_worker, vocab_file, lower_case, opts, seed),
      process_chunk=_process_chunk_merged, serialize=schema.serialize,
      finish=functools.partial(_finish_beam, output_dir, opts, tok_description=(tok.describe(), tok.kind,
                               tok.lower_case), seed=seed, corpus_description=corpus_description,
                               corpus_name=corpus_name, parts=len(parts), eval_fraction=eval_fraction,
                               runner=runner, start=time.time()),
      scratch_dir=scratch_dir)
  counters = beam_pipeline.run(job, runner, list(pipeline_args))
  manifest = manifest_lib.read_manifest(output_dir)
  manifest["beam_counters"] = counters
  return manifest


class _Described:  # what build_manifest reads of a tokenizer, without loading it again
  def __init__(self, description, kind, lower_case):
    self._description, self.kind, self.lower_case = description, kind, lower_case

  def describe(self):
    return self._description


def _finish_beam(output_dir, opts, *, tok_description, seed, corpus_description, corpus_name, parts, eval_fraction,
                 runner, start, corpus_stats, totals, split_instances, shard_counts) -> dict:
  """The Beam pipeline's last step (one worker): the manifest from the combined counts, written beside the shards."""
  manifest = manifest_lib.build_manifest(
      opts, seed=seed, tok=_Described(*tok_description), corpus_description=corpus_description, parts=parts,
      shard_counts=shard_counts, split_instances=split_instances, corpus_stats=collections.Counter(corpus_stats),
      totals=collections.Counter(totals), seconds=time.time() - start, workers=runner, engine=runner)
  manifest_lib.check_train_instances(corpus_name, split_instances["train"], split_instances["eval"],
                                     manifest["stats"], eval_fraction)
  text = json.dumps({"schema_version": schema.SCHEMA_VERSION, **manifest}, indent=2, sort_keys=True)
  if "://" in output_dir:  # gs:// and other remote outputs (schema.write_manifest writes local files)
    import tensorflow as tf
    with tf.io.gfile.GFile(os.path.join(output_dir, schema.MANIFEST_NAME), "w") as f:
      f.write(text)
  else:
    schema.write_manifest(output_dir, manifest)
  return manifest


def main(argv):
  try:
    _main(argv[1:])
  except manifest_lib.EmptyCorpusError as e:  # the user's data, not a bug: the message, without a traceback
    sys.exit(f"error: {e}")


def _main(pipeline_args):
  """pipeline_args: the flags absl does not know, handed to Beam with --runner (e.g. --project, --region)."""
  from absl import flags
  f = flags.FLAGS
  if pipeline_args and not (f.runner or f.dry_run):
    sys.exit(f"error: unknown flags {pipeline_args}; Beam pipeline options (--project, --region, ...) need "
             f"--runner=DirectRunner|DataflowRunner|SparkRunner|FlinkRunner|PrismRunner")
  if f.merge_manifests:
    print(manifest_lib.format_stats(manifest_lib.merge_manifests(f.output_dir)))
    return
  corpus = corpora.from_spec(f.corpus, data_dir=f.tfds_data_dir, text_key=f.text_key,
                             one_doc_per_line=f.one_doc_per_line, text_column=f.text_column or None,
                             part_bytes=beam_plan.parse_size(f.part_size))
  if f.dry_run:
    print(beam_plan.dry_run(corpus, f.corpus, sys.argv[1:], corpus_bytes=f.corpus_bytes,
                            dupe_factor=f.dupe_factor, hours=f.target_hours))
    return
  opts = instances.InstanceOptions(
      max_seq_length=f.max_seq_length, max_predictions_per_seq=f.max_predictions_per_seq,
      masked_lm_prob=f.masked_lm_prob, short_seq_prob=f.short_seq_prob, dupe_factor=f.dupe_factor,
      whole_word_masking=f.whole_word_masking, mode=f.mode, max_ngram=f.max_ngram, masking=f.masking,
      span_geometric_p=f.span_geometric_p, max_span_length=f.max_span_length, knowledge_mix=f.knowledge_mix,
      segmenter=f.segmenter, entity_file=f.entity_file or "", phrase_chunker=f.phrase_chunker,
      replacement=f.replacement)
  if f.runner:
    if f.num_tasks != 1:
      sys.exit("error: --num_tasks splits the local path over machines; with --runner the engine distributes the work")
    manifest = prepare_beam(corpus, f.output_dir, opts, runner=f.runner, pipeline_args=pipeline_args,
                            vocab_file=f.vocab_file, lower_case=f.lower_case, seed=f.seed,
                            num_train_shards=f.num_train_shards, num_eval_shards=f.num_eval_shards,
                            eval_fraction=f.eval_fraction, docs_per_chunk=f.docs_per_chunk,
                            corpus_description=f.corpus, formats=f.formats, shuffle=f.beam_shuffle)
    print(manifest_lib.format_stats(manifest))
    print("Beam counters: " + ", ".join(f"{k} {v:,}" for k, v in sorted(manifest["beam_counters"].items())))
    print(f"wrote {f.output_dir}")
    return
  manifest = prepare(corpus, f.output_dir, opts, vocab_file=f.vocab_file, vocab_size=f.vocab_size,
                     vocab_type=f.vocab_type,
                     lower_case=f.lower_case, seed=f.seed, num_train_shards=f.num_train_shards,
                     num_eval_shards=f.num_eval_shards, eval_fraction=f.eval_fraction, docs_per_chunk=f.docs_per_chunk,
                     workers=f.workers, task_index=f.task_index, num_tasks=f.num_tasks, corpus_description=f.corpus,
                     formats=f.formats)
  print(manifest_lib.format_stats(manifest))
  print(f"wrote {f.output_dir}")


def cli():
  from absl import app, flags
  flags.DEFINE_string("corpus", "pydocs", "'pydocs' (offline default), 'tfds:NAME[:SPLIT]', or text-file globs")
  flags.DEFINE_string("output_dir", None, "where train/, eval/ and manifest.json go", required=True)
  flags.DEFINE_string("vocab_file", None, "SentencePiece .model, byte-level BPE tokenizer.json or WordPiece "
                      "vocab.txt; default: train one of --vocab_type")
  flags.DEFINE_enum("vocab_type", "sentencepiece", list(tokenizer_lib.VOCAB_TYPES),
                    "vocabulary to train without --vocab_file: sentencepiece (BERT tokens), bpe (RoBERTa) or "
                    "wordpiece (BERT vocab.txt; one token per Chinese character)")
  flags.DEFINE_integer("vocab_size", 8000, "vocabulary size when training one")
  flags.DEFINE_bool("lower_case", False, "lower-case text")
  flags.DEFINE_integer("max_seq_length", 128, "tokens per instance, [CLS]/[SEP] included")
  flags.DEFINE_integer("max_predictions_per_seq", 20, "cap on masked positions")
  flags.DEFINE_float("masked_lm_prob", 0.15, "fraction of maskable tokens to predict")
  flags.DEFINE_float("short_seq_prob", 0.1, "probability of a shorter target length")
  flags.DEFINE_integer("dupe_factor", 5, "passes over the corpus with different masks")
  flags.DEFINE_bool("whole_word_masking", False, "mask whole words")
  flags.DEFINE_integer("max_ngram", 1, "mask n-grams of up to this many words/tokens, p(k) ~ 1/k (ALBERT: 3)")
  flags.DEFINE_enum("masking", "token", list(masking.MODES), "token (BERT), ngram (ALBERT, with --max_ngram), "
                    "span (SpanBERT; needs --mode=full_sentences) or knowledge (ERNIE phrases and entities)")
  flags.DEFINE_float("span_geometric_p", 0.2, "span masking: span lengths in words ~ Geometric(p)")
  flags.DEFINE_integer("max_span_length", 10, "span masking: longest span, in words")
  flags.DEFINE_string("knowledge_mix", "token:0.4,phrase:0.3,entity:0.3",
                      "knowledge masking: share of instances masked at each level")
  flags.DEFINE_string("replacement", masking.BERT_REPLACEMENT,
                      "what masked positions show: [MASK], a random token or themselves (ELECTRA: mask:0.85,keep:0.15)")
  flags.DEFINE_string("segmenter", "", "word boundaries from a segmenter: jieba (Chinese) or pkg.module:function")
  flags.DEFINE_string("entity_file", None, "knowledge masking: entity list, one per line (UTF-8, '#' comments)")
  flags.DEFINE_string("phrase_chunker", "", "knowledge masking: rake, segmenter or pkg.module:function "
                      "(default: segmenter if set, else rake)")
  flags.DEFINE_enum("mode", "nsp", list(instances.MODES),
                    "nsp pairs, sop (ALBERT sentence order) pairs, or RoBERTa full-sentence packing")
  flags.DEFINE_integer("seed", 12345, "random seed")
  flags.DEFINE_integer("num_train_shards", 8, "train TFRecord files")
  flags.DEFINE_integer("num_eval_shards", 1, "eval TFRecord files")
  flags.DEFINE_float("eval_fraction", 0.02, "fraction of documents held out for eval")
  flags.DEFINE_integer("docs_per_chunk", 256, "documents per work unit and random-next buffer")
  flags.DEFINE_integer("workers", None, "processes (default: all cores)")
  flags.DEFINE_integer("task_index", 0, "this machine's index when several make the shards")
  flags.DEFINE_integer("num_tasks", 1, "number of machines making shards")
  flags.DEFINE_bool("merge_manifests", False, "combine the tasks' partial manifests in output_dir and exit")
  flags.DEFINE_bool("one_doc_per_line", False, "text files hold one document per line")
  flags.DEFINE_string("tfds_data_dir", None, "TFDS data_dir")
  flags.DEFINE_list("formats", ["tfrecord"], "shard formats: tfrecord, array_record (Grain backend; no TF), or both")
  flags.DEFINE_string("text_key", "text", "TFDS text feature")
  flags.DEFINE_string("text_column", "", "text column of hf:, *.parquet and *.jsonl corpora (and TFDS; default: "
                      "--text_key, i.e. 'text')")
  flags.DEFINE_string("runner", "", "empty: the local path; else an Apache Beam runner (DirectRunner, PrismRunner, "
                      "DataflowRunner, SparkRunner, FlinkRunner) given the other, unknown flags as pipeline options")
  flags.DEFINE_enum("beam_shuffle", "auto", list(beam_pipeline.SHUFFLES), "with --runner: engine (records through "
                    "the engine's GroupByKey: Dataflow, Spark, Flink), files (records in scratch files beside the "
                    "output, references through the GroupByKey: flat memory on in-memory runners), auto (files on "
                    "DirectRunner and PrismRunner, engine elsewhere)")
  flags.DEFINE_string("part_size", "64M", "files are read in parts of about this size (the unit a Beam worker "
                      "reads; part boundaries decide the chunks, so keep it to remake the same data)")
  flags.DEFINE_bool("dry_run", False, "print the Dataflow and Spark command lines and a worker estimate, and exit")
  flags.DEFINE_string("corpus_bytes", "", "corpus size for --dry_run, e.g. 100G (default: the corpus files' size)")
  flags.DEFINE_float("target_hours", 2.0, "--dry_run sizes the workers to finish in about this many hours")
  # Flags absl does not know stay in argv for main(): with --runner they are Beam pipeline options.
  app.run(main, flags_parser=lambda argv: flags.FLAGS(argv, known_only=True))


if __name__ == "__main__":
  cli()
