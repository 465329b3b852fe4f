"""Config -> training/eval input pipelines, preparing a named corpus once into WORKDIR/data.

Two input backends, chosen by data.backend:
  * "tfdata" (default): TFRecords through tf.data (data/pipeline.py); needs TensorFlow.
  * "grain": ArrayRecord through Grain (data/grain_pipeline.py); needs no TensorFlow. Its iterator position
    is saved inside the Orbax checkpoint step; tf.data's beside it (core/checkpoint.py).
Where TensorFlow is cut off: this module imports both backend modules, and neither imports TensorFlow at
module level. pipeline.py imports it inside the functions that build or read tf.data (its `_tf()`), and
only the tfdata backend calls them; grain_pipeline.py, array_record_io.py, schema.find_manifest, the metrics
writer (tensorboardX) and the pre-flight check never import it. So the whole train CLI runs without
TensorFlow installed when data.backend="grain" (tests/test_grain_backend.py runs it with TensorFlow made
unimportable), and with the tfdata backend a missing TensorFlow fails at start naming the grain option
(check_backend) instead of deep inside the first batch.
"""

import importlib.util
import json
import os

import jax

from bert_jax.core import storage
from bert_jax.data import array_record_io, corpora, grain_pipeline, instances, masking, packing, pipeline, prepare, schema
from bert_jax.data import manifest as manifest_lib
from bert_jax.data import tokenizer as tokenizer_lib

BACKENDS = ("tfdata", "grain")


def tensorflow_available() -> bool:
  return importlib.util.find_spec("tensorflow") is not None


def check_backend(d) -> None:
  """data.backend is known, and TensorFlow is there when the backend needs it."""
  if d.backend not in BACKENDS:
    raise ValueError(f"data.backend={d.backend!r} is not one of {BACKENDS}")
  if d.backend == "tfdata" and not tensorflow_available():
    raise ValueError("data.backend='tfdata' reads TFRecords with tf.data, but TensorFlow is not installed. Use "
                     "--config.data.backend=grain (ArrayRecord through Grain, no TensorFlow; data.corpus is then "
                     "prepared as ArrayRecord), or install tensorflow-cpu")


def _prepare_settings(d) -> dict:
  settings = {"corpus": d.corpus, "vocab_file": d.vocab_file or None, "vocab_size": d.vocab_size,
              "lower_case": d.lower_case, "max_seq_length": d.max_seq_length,
              "max_predictions_per_seq": d.max_predictions_per_seq, "masked_lm_prob": d.masked_lm_prob,
              "short_seq_prob": d.short_seq_prob, "dupe_factor": d.dupe_factor,
              "whole_word_masking": d.whole_word_masking, "mode": d.mode, "eval_fraction": d.eval_fraction,
              "seed": d.prepare_seed}
  # Settings added later join the key only when they differ from their defaults, so data prepared before
  # they existed keeps its key and is reused. vocab_type only matters when a vocabulary is trained.
  if d.vocab_type != "sentencepiece" and not d.vocab_file:
    settings["vocab_type"] = d.vocab_type
  if d.max_ngram != 1:
    settings["max_ngram"] = d.max_ngram
  if d.text_column != "text":
    settings["text_column"] = d.text_column
  defaults = instances.InstanceOptions()
  for name, value in masking_fields(d).items():
    if value != getattr(defaults, name):
      settings[name] = value
  return settings


def masking_fields(d) -> dict:
  """InstanceOptions' masking fields from config.data (beyond whole_word_masking and max_ngram)."""
  return {"masking": d.masking, "span_geometric_p": d.span_geometric_p, "max_span_length": d.max_span_length,
          "knowledge_mix": d.knowledge_mix, "segmenter": d.segmenter, "entity_file": d.entity_file,
          "phrase_chunker": d.phrase_chunker, "replacement": d.replacement}


def masking_options(d) -> masking.MaskingOptions:
  """The run's masking, as prepare and dynamic masking see it."""
  return instances.InstanceOptions(
      max_seq_length=d.max_seq_length, max_predictions_per_seq=d.max_predictions_per_seq,
      masked_lm_prob=d.masked_lm_prob, whole_word_masking=d.whole_word_masking, mode=d.mode, max_ngram=d.max_ngram,
      **masking_fields(d)).masking_options


def prepare_formats(d) -> tuple[str, ...]:
  """What prepare_cached writes: TFRecords for tf.data; ArrayRecord for Grain, with TFRecords too where
  TensorFlow is installed, so that either backend can reuse the prepared data."""
  if d.backend == "grain":
    return ("tfrecord", "array_record") if tensorflow_available() else ("array_record",)
  return ("tfrecord",)


def prepare_cached(d, workdir: str, log=print) -> str:
  """Prepares config.data.corpus into WORKDIR/data/<hash of settings>, or reuses it. Returns that dir."""
  import hashlib
  settings = _prepare_settings(d)
  key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
  out = os.path.join(workdir, "data", f"{d.corpus.replace('/', '_').replace(':', '_')[:40]}-{key}")
  done = os.path.join(out, schema.MANIFEST_NAME)
  if jax.process_index() == 0 and not os.path.exists(done):
    log(f"preparing corpus {d.corpus!r} into {out} (once; later runs reuse it)")
    corpus = corpora.from_spec(d.corpus, data_dir=d.tfds_data_dir or None, text_column=d.text_column,
                               cache_dir=corpora.run_cache_dir(os.path.join(workdir, "data")))
    opts = instances.InstanceOptions(
        max_seq_length=d.max_seq_length, max_predictions_per_seq=d.max_predictions_per_seq,
        masked_lm_prob=d.masked_lm_prob, short_seq_prob=d.short_seq_prob, dupe_factor=d.dupe_factor,
        whole_word_masking=d.whole_word_masking, mode=d.mode, max_ngram=d.max_ngram, **masking_fields(d))
    manifest = prepare.prepare(corpus, out, opts, vocab_file=d.vocab_file or None, vocab_size=d.vocab_size,
                               vocab_type=d.vocab_type,
                               lower_case=d.lower_case, seed=d.prepare_seed, eval_fraction=d.eval_fraction,
                               workers=d.prepare_workers or None, corpus_description=d.corpus,
                               formats=prepare_formats(d))
    log(manifest_lib.format_stats(manifest))
  elif os.path.exists(done):
    log(f"reusing prepared data in {out}")
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("prepare_cached")
  return out


def check_workdir(config, workdir: str) -> None:
  """Fails at start where the data settings need a local workdir: data.corpus is prepared into WORKDIR/data
  through the local filesystem, so a gs:// workdir would get it under ./gs:/ on each host instead."""
  d = config.data
  if not d.train_files and d.corpus and storage.is_remote(workdir):
    raise ValueError(f"data.corpus={d.corpus!r} is prepared into the workdir through the local filesystem, which "
                     f"{workdir} is not: prepare it once with `python -m bert_jax.data.prepare --corpus=... "
                     f"--output_dir=gs://...` (README, Prepare data) and pass --config.data.train_files and "
                     f"--config.data.eval_files, or use a local workdir")


def resolve(config, workdir: str, log=print):
  """(train files, eval files, manifest or None, vocab tokenizer or None) for the run."""
  d = config.data
  check_backend(d)
  use_grain = d.backend == "grain"
  if d.train_files:
    find = grain_pipeline.find_files if use_grain else pipeline.resolve_files
    train_files = find(d.train_files)
    eval_files = find(d.eval_files) if d.eval_files else ()
  elif d.corpus:
    out = prepare_cached(d, workdir, log)
    eval_files = _prepared_split(out, "eval", use_grain, log)
    if d.pack_instances:
      out = pack_cached(out, d.pack_instances, log)
    train_files = _prepared_split(out, "train", use_grain, log)
  else:
    raise ValueError("no data: set data.train_files (a TFRecord glob, or ArrayRecord for data.backend=grain) or "
                     "data.corpus (e.g. 'pydocs')")
  manifest = schema.find_manifest(list(train_files))
  check_packing(d.pack_instances, manifest, train_files)
  vocab_file = d.vocab_file or (manifest or {}).get("vocab", {}).get("file")
  tok = tokenizer_lib.load(vocab_file, d.lower_case) if vocab_file and os.path.exists(vocab_file) else None
  sha = tokenizer_lib.file_sha256(d.vocab_file) if d.vocab_file else None
  check_files_match = grain_pipeline.check_files_match if use_grain else pipeline.check_files_match
  masks = masking_options(d)
  for what, files in (("train", train_files), ("eval", eval_files)):
    dynamic = what == "train" and d.dynamic_masking  # eval masks are always the prepared ones
    if files:  # also fails on files without examples, which would hang the repeating pipeline
      check_files_match(files, max_seq_length=d.max_seq_length, max_predictions_per_seq=d.max_predictions_per_seq,
                        vocab_size=config.model.vocab_size, vocab_sha256=sha,
                        # eval splits its examples, not its files (eval_iterator): no process has a share of files
                        process_count=jax.process_count() if what == "train" else 1,
                        what=what, dynamic_masking=masks if dynamic else None,
                        static_masking=None if dynamic else masks)
  return train_files, eval_files, manifest, tok


def _prepared_split(prepared_dir: str, split: str, use_grain: bool, log) -> tuple[str, ...]:
  """A prepared split's files for the backend. Data prepared for tf.data alone (TFRecords) gets ArrayRecord
  copies beside it the first time the grain backend reads it (process 0; no TensorFlow needed)."""
  directory = os.path.join(prepared_dir, split)
  if not use_grain:
    return pipeline.resolve_files(os.path.join(directory, "*.tfrecord"))
  tfrecords = sorted(f for f in os.listdir(directory) if f.endswith(".tfrecord"))
  if tfrecords and jax.process_index() == 0:
    array_record_io.convert_split([os.path.join(directory, f) for f in tfrecords], directory, log)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(f"array_record_{split}")
  return pipeline.resolve_files(os.path.join(directory, "*" + array_record_io.SUFFIX))


def pack_cached(prepared_dir: str, max_instances: int, log=print) -> str:
  """Packs the prepared train split into PREPARED/packed-K once (process 0); returns that dir."""
  out = os.path.join(prepared_dir, f"packed-{max_instances}")
  if jax.process_index() == 0 and not os.path.exists(os.path.join(out, schema.MANIFEST_NAME)):
    log(f"packing up to {max_instances} instances per row into {out} (once; later runs reuse it)")
    packing.pack_prepared(prepared_dir, out, max_instances, log=log)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("pack_cached")
  return out


def check_packing(pack_instances: int, manifest: dict | None, files) -> None:
  """The config's data.pack_instances must say what the train records are."""
  packed = (manifest or {}).get("packed")
  data_k = packed["max_instances"] if packed else 0
  if pack_instances == data_k:
    return
  if not packed:
    where = "they have no manifest" if manifest is None else "their manifest says unpacked"
    raise ValueError(f"data.pack_instances={pack_instances} but the train records {list(files)[:2]} are not "
                     f"packed ({where}); pack them with `python -m bert_jax.data.packing --input_dir=... "
                     f"--max_instances={pack_instances}`, or set data.pack_instances=0")
  raise ValueError(f"the train records are packed with up to {data_k} instances per row but data.pack_instances="
                   f"{pack_instances}; set --config.data.pack_instances={data_k}")


def _masking(config, tok) -> masking.DynamicMasking | None:
  """data.dynamic_masking: the masking the data was prepared with (checked against the manifest), re-drawn in
  the input pipeline (masking.tf_remask_fn for tf.data, masking.mask_numpy for Grain)."""
  if not config.data.dynamic_masking:
    return None
  if tok is None:
    raise ValueError("data.dynamic_masking needs the vocabulary: set data.vocab_file")
  return masking.DynamicMasking(masking_options(config.data), masking.VocabIds.from_tokenizer(tok))


def train_iterator(config, files, tok):
  """The train batches: a pipeline.BatchIterator (tfdata) or grain_pipeline.GrainBatchIterator (grain)."""
  d = config.data
  cfg = pipeline.PipelineConfig(
      files=tuple(files), batch_size=config.train.batch_size // jax.process_count(),
      max_seq_length=d.max_seq_length, max_predictions_per_seq=d.max_predictions_per_seq, seed=config.train.seed,
      shuffle_buffer=d.shuffle_buffer, shuffle=d.shuffle, dynamic_masking=_masking(config, tok),
      **_packed_fields(files))
  if d.backend == "grain":
    return grain_pipeline.GrainBatchIterator(cfg, jax.process_index(), jax.process_count(),
                                             worker_count=d.grain_workers)
  return pipeline.BatchIterator(cfg, jax.process_index(), jax.process_count())


def _packed_fields(files) -> dict:
  packed = (schema.find_manifest(list(files)) or {}).get("packed")
  if not packed:
    return {}
  return {"packed_instances": packed["max_instances"], "packed_predictions": packed["predictions_per_row"]}


def eval_batch_size(train_config) -> int:
  """The global eval batch: train.eval_batch_size, or train.batch_size where it is 0."""
  return train_config.eval_batch_size or train_config.batch_size


def eval_iterator(config, files):
  """Same examples in the same order every time (the same for both backends): no shuffle, repeats so N batches
  always exist. The processes split the one-process stream by example (split_records), so an eval reads the same
  examples under any process count, each once while the set lasts (a split by files gave processes shares of
  unequal size: one read some of its examples twice while another never reached some of its own). Grain reads
  eval in the training process: a fresh iterator per evaluation would otherwise start worker processes each time."""
  d = config.data
  batch = eval_batch_size(config.train)
  cfg = pipeline.PipelineConfig(
      files=tuple(files), batch_size=batch // jax.process_count(), max_seq_length=d.max_seq_length,
      max_predictions_per_seq=d.max_predictions_per_seq, shuffle=False, repeat=True, split_records=True)
  if d.backend == "grain":
    return grain_pipeline.GrainBatchIterator(cfg, jax.process_index(), jax.process_count())
  return pipeline.BatchIterator(cfg, jax.process_index(), jax.process_count())
