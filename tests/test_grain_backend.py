"""The Grain/ArrayRecord input backend: same examples and batches as tf.data, sharding, exact resume after
SIGKILL, and the train CLI with TensorFlow unimportable."""
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tensorflow as tf

from bert_jax.core import metrics
from bert_jax.data import array_record_io, grain_pipeline, instances, masking, packing, pipeline, prepare, schema
from bert_jax.data import tokenizer as tokenizer_lib
from data_helpers import ListCorpus, PositionCheckpoints, pydocs_docs, write_google_style_records
from cli_helpers import cli_env

SEQ, PRED = 64, 10
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Put first on PYTHONPATH, this makes `import tensorflow` (and tensorflow_datasets) fail as if not installed.
BLOCK_TF = "import sys\nsys.modules['tensorflow'] = None\nsys.modules['tensorflow_datasets'] = None\n"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """Real pydocs instances written as both formats: 5 train shards of uneven size."""
  out = str(tmp_path_factory.mktemp("prepared"))
  opts = instances.InstanceOptions(max_seq_length=SEQ, max_predictions_per_seq=PRED, dupe_factor=1)
  manifest = prepare.prepare(ListCorpus(pydocs_docs()[:90]), out, opts, vocab_size=1000, workers=1,
                             num_train_shards=5, docs_per_chunk=16, progress=False,
                             formats=("tfrecord", "array_record"))
  split = lambda name, suffix: sorted(os.path.join(out, name, f) for f in os.listdir(os.path.join(out, name))
                                      if f.endswith(suffix))
  return {"dir": out, "manifest": manifest, "tfrecord": split("train", ".tfrecord"),
          "array_record": split("train", ".array_record"), "tok": tokenizer_lib.load(manifest["vocab"]["file"])}


def _cfg(files, **kw):
  base = dict(files=tuple(files), batch_size=8, max_seq_length=SEQ, max_predictions_per_seq=PRED, seed=3,
              shuffle=False)
  base.update(kw)
  return pipeline.PipelineConfig(**base)


def _tf_records(path):
  spec = schema.feature_spec(SEQ, PRED)
  return [{k: v.numpy() for k, v in tf.io.parse_single_example(r, spec).items()} for r in tf.data.TFRecordDataset(path)]


def test_array_record_shards_hold_the_tfrecord_examples(prepared):
  assert prepared["manifest"]["formats"] == ["tfrecord", "array_record"]
  total = 0
  for tfr, arr in zip(prepared["tfrecord"], prepared["array_record"]):
    assert array_record_io.shard_path(tfr) == arr
    expected = _tf_records(tfr)
    got = [array_record_io.parse(r) for r in array_record_io.read_records(arr)]
    assert len(got) == len(expected) == prepared["manifest"]["splits"]["train"]["shards"][os.path.basename(tfr)]
    for a, b in zip(got, expected):
      assert a.keys() == b.keys()
      for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    total += len(got)
  assert total == prepared["manifest"]["splits"]["train"]["instances"] > 300


def test_tf_free_serializer_and_converter_give_the_same_examples(tmp_path):
  tfr = str(tmp_path / "google.tfrecord")
  write_google_style_records(tfr, 20, 32, 5)
  counts = array_record_io.convert_tfrecords([tfr], str(tmp_path / "ar"))
  assert counts == {"google.array_record": 20}
  converted = array_record_io.read_records(str(tmp_path / "ar" / "google.array_record"))
  originals = [r.numpy() for r in tf.data.TFRecordDataset(tfr)]
  assert converted == originals  # byte for byte, in order
  spec = schema.feature_spec(32, 5)
  for raw in originals[:5]:
    parsed = array_record_io.parse(raw)
    stacked = {k: v[None] for k, v in parsed.items()}
    again = tf.io.parse_single_example(array_record_io.serialize(stacked, 0), spec)  # TF reads our bytes
    for k, v in again.items():
      np.testing.assert_array_equal(v.numpy(), parsed[k])


def test_features_outside_the_schema_are_left_unread_on_both_backends(tmp_path):
  """Records another tool wrote with extra fields (an id list, a document name as bytes) read as the same batches
  on tf.data, which parses only the schema's features, and on Grain."""
  plain = str(tmp_path / "plain.tfrecord")
  write_google_style_records(plain, 24, 32, 5)
  extra = str(tmp_path / "extra.tfrecord")
  with tf.io.TFRecordWriter(extra) as writer:
    for i, raw in enumerate(tf.data.TFRecordDataset(plain)):
      example = tf.train.Example.FromString(raw.numpy())
      example.features.feature["entity_ids"].int64_list.value.extend([7, 8, 9])
      example.features.feature["doc_name"].bytes_list.value.append(f"doc-{i}".encode())
      writer.write(example.SerializeToString())
  array_record_io.convert_tfrecords([extra], str(tmp_path / "ar"))
  cfg = dict(batch_size=8, max_seq_length=32, max_predictions_per_seq=5, seed=3, shuffle=False)
  tf_it = pipeline.BatchIterator(pipeline.PipelineConfig(files=(extra,), **cfg))
  grain_it = grain_pipeline.GrainBatchIterator(
      pipeline.PipelineConfig(files=(str(tmp_path / "ar" / "extra.array_record"),), **cfg))
  for _ in range(3):
    a, b = next(tf_it), next(grain_it)
    assert a.keys() == b.keys() == set(schema.feature_spec(32, 5))
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_interleave_order_is_tf_data_interleave():
  counts = [3, 1, 4, 0, 2, 5, 1, 7]
  offsets = np.concatenate([[0], np.cumsum(counts)])
  for cycle in (1, 3, 8):
    ds = tf.data.Dataset.from_tensor_slices(np.arange(len(counts))).interleave(
        lambda f: tf.data.Dataset.range(tf.gather(offsets, f), tf.gather(offsets, f + 1)), cycle_length=cycle,
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    assert grain_pipeline.interleave_order(counts, cycle).tolist() == [int(x) for x in ds]


@pytest.mark.parametrize("process_count,cycle", [(1, 8), (1, 2), (2, 8), (3, 8)])
def test_static_data_gives_identical_batches_in_order(prepared, process_count, cycle):
  for index in range(process_count):
    counts = [pipeline.share_count(array_record_io.num_records(f), stride, offset)
              for f, stride, offset in pipeline.process_shares(prepared["array_record"], index, process_count)]
    # tf.data repeats the file list before interleaving, so once a slot finds no file of this epoch left it
    # opens the next epoch's first file: the orders agree up to there.
    one_epoch = grain_pipeline.interleave_order(counts, min(cycle, len(counts)))
    repeated = grain_pipeline.interleave_order(counts * 2, min(cycle, len(counts)))[:len(one_epoch)]
    agree = int(np.argmax(one_epoch != repeated))
    batches = agree // 8
    assert batches >= 20
    tf_it = pipeline.BatchIterator(_cfg(prepared["tfrecord"], cycle_length=cycle), index, process_count)
    grain_it = grain_pipeline.GrainBatchIterator(_cfg(prepared["array_record"], cycle_length=cycle), index,
                                                 process_count)
    for _ in range(batches):
      a, b = next(tf_it), next(grain_it)
      assert a.keys() == b.keys()
      for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_packed_rows_are_the_same_batches_as_tf_data(prepared, tmp_path):
  out = str(tmp_path / "packed")
  packing.pack_prepared(prepared["dir"], out, 3, log=lambda _: None)  # both formats in, both out
  listed = lambda suffix: sorted(os.path.join(out, "train", f) for f in os.listdir(os.path.join(out, "train"))
                                 if f.endswith(suffix))
  tfrecords, arrays = listed(".tfrecord"), listed(array_record_io.SUFFIX)
  assert len(tfrecords) == len(arrays) == 5
  for t, a in zip(tfrecords, arrays):  # the same rows in each format, in the same order
    assert list(array_record_io.iter_records(t)) == array_record_io.read_records(a)
  # Packing the TFRecords alone (TF's reader no longer involved: Grain's) gives the same rows.
  tf_only = tmp_path / "tf_only"
  shutil.copytree(prepared["dir"], tf_only, ignore=shutil.ignore_patterns("*" + array_record_io.SUFFIX))
  packing.pack_prepared(str(tf_only), str(tmp_path / "packed_tf"), 3, log=lambda _: None)
  again = sorted((tmp_path / "packed_tf" / "train").iterdir())
  assert [p.name for p in again] == [os.path.basename(t) for t in tfrecords]
  assert all(list(array_record_io.iter_records(str(p))) == list(array_record_io.iter_records(t))
             for p, t in zip(again, tfrecords))
  packed = schema.find_manifest(tfrecords)["packed"]
  fields = dict(packed_instances=3, packed_predictions=packed["predictions_per_row"], cycle_length=1)
  tf_it = pipeline.BatchIterator(_cfg(tfrecords, **fields))
  grain_it = grain_pipeline.GrainBatchIterator(_cfg(arrays, **fields))
  for _ in range(5):
    a, b = next(tf_it), next(grain_it)
    assert a.keys() == b.keys() and {"attention_segments", "position_ids", "nsp_positions"} <= set(b)
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _ids_of_an_epoch(files, index, count, shuffle):
  cfg = pipeline.PipelineConfig(files=tuple(files), batch_size=1, max_seq_length=32, max_predictions_per_seq=5,
                                shuffle=shuffle, repeat=False, drop_remainder=False)
  return [int(b["input_ids"][0, 1]) for b in grain_pipeline.GrainBatchIterator(cfg, index, count)]


def test_two_processes_read_every_record_once(tmp_path):
  files = []
  for shard in range(3):
    tfr = str(tmp_path / f"part-{shard}.tfrecord")
    write_google_style_records(tfr, 10 + shard, 32, 5, start=100 * shard)
    files.append(str(tmp_path / "ar" / f"part-{shard}.array_record"))
    array_record_io.convert_tfrecords([tfr], str(tmp_path / "ar"))
  everything = sorted(1000 + 100 * s + i for s in range(3) for i in range(10 + s))
  for chosen in (files, files[:1]):  # files >= processes: whole files each; fewer: every other record
    for shuffle in (False, True):
      shares = [_ids_of_an_epoch(chosen, index, 2, shuffle) for index in range(2)]
      assert not set(shares[0]) & set(shares[1])
      want = [i for i in everything if chosen == files or i < 1100]
      assert sorted(shares[0] + shares[1]) == want
      if shuffle:
        assert shares[0] != sorted(shares[0])


def _mask_stats(batches, tok):
  special = set(int(i) for i in tok.special_ids)
  chosen = maskable = at_mask = kept = 0
  for b in batches:
    w = b["masked_lm_weights"] > 0
    at = np.take_along_axis(b["input_ids"], b["masked_lm_positions"], 1)
    originals = b["input_ids"].copy()
    for r in range(len(w)):
      originals[r, b["masked_lm_positions"][r][w[r]]] = b["masked_lm_ids"][r][w[r]]
    assert not set(b["masked_lm_ids"][w].tolist()) & {tok.cls_id, tok.sep_id, 0}
    real = b["input_mask"] > 0
    maskable += int((real & ~np.isin(originals, list(special))).sum())
    chosen += int(w.sum())
    at_mask += int((at[w] == tok.mask_id).sum())
    kept += int((at[w] == b["masked_lm_ids"][w]).sum())
  return {"fraction": chosen / maskable, "mask": at_mask / chosen, "kept": kept / chosen}, originals


def test_dynamic_masking_has_the_statistics_of_tf_data(prepared):
  tok = prepared["tok"]
  spec = masking.DynamicMasking(masking.MaskingOptions(max_predictions_per_seq=PRED),
                                masking.VocabIds.from_tokenizer(tok))
  tf_it = pipeline.BatchIterator(_cfg(prepared["tfrecord"], dynamic_masking=spec, batch_size=100))
  grain_it = grain_pipeline.GrainBatchIterator(_cfg(prepared["array_record"], dynamic_masking=spec, batch_size=100))
  tf_batches = [next(tf_it) for _ in range(3)]
  grain_batches = [next(grain_it) for _ in range(3)]
  (tf_stats, tf_originals), (grain_stats, grain_originals) = (_mask_stats(tf_batches, tok),
                                                              _mask_stats(grain_batches, tok))
  np.testing.assert_array_equal(tf_originals, grain_originals)  # the same examples under new masks
  for key, tolerance in (("fraction", 0.005), ("mask", 0.03), ("kept", 0.03)):
    assert abs(tf_stats[key] - grain_stats[key]) < tolerance, (key, tf_stats, grain_stats)
  assert abs(grain_stats["fraction"] - 0.15) < 0.01 and abs(grain_stats["mask"] - 0.8) < 0.03
  recorded = grain_pipeline.GrainBatchIterator(_cfg(prepared["array_record"], batch_size=100))
  assert not np.array_equal(next(recorded)["masked_lm_positions"], grain_batches[0]["masked_lm_positions"])


@pytest.mark.parametrize("backend", ["tfdata", "grain"])
def test_dynamic_masks_differ_between_processes_and_repeat_within_one(prepared, tmp_path, backend):
  """Two processes reading identical shards must not draw identical masks (each numbers its stream from 0), while
  one process draws the same masks again (resume); process 0 masks as a single-process run does."""
  fmt = "tfrecord" if backend == "tfdata" else "array_record"
  files = [str(tmp_path / f"{name}.{fmt}") for name in ("a", "b")]
  for f in files:
    shutil.copy(prepared[fmt][0], f)
  spec = masking.DynamicMasking(masking.MaskingOptions(max_predictions_per_seq=PRED),
                                masking.VocabIds.from_tokenizer(prepared["tok"]))
  make = pipeline.BatchIterator if backend == "tfdata" else grain_pipeline.GrainBatchIterator
  first = lambda files, *where: next(make(_cfg(files, dynamic_masking=spec, batch_size=16), *where))
  p0, p1, p1_again, single = first(files, 0, 2), first(files, 1, 2), first(files, 1, 2), first(files[:1], 0, 1)
  _, originals0 = _mask_stats([p0], prepared["tok"])
  _, originals1 = _mask_stats([p1], prepared["tok"])
  np.testing.assert_array_equal(originals0, originals1)  # the same examples at the same positions
  differ = (p0["masked_lm_positions"] != p1["masked_lm_positions"]).any(axis=1)
  assert differ.mean() > 0.9, differ
  for key in p1:
    np.testing.assert_array_equal(p1[key], p1_again[key])
    np.testing.assert_array_equal(p0[key], single[key])


RESUME_SCRIPT = textwrap.dedent("""
    import hashlib, json, os, signal, sys
    import jax, jax.numpy as jnp, numpy as np
    from absl import flags
    flags.FLAGS.mark_as_parsed()  # Grain's worker processes read absl flags; an absl app would have parsed them
    from bert_jax.core import checkpoint, configlib
    from bert_jax.data import grain_pipeline, masking, pipeline
    from bert_jax.data import tokenizer as tokenizer_lib
    files, vocab, workdir, out, kill_at, workers = json.loads(sys.argv[1])
    tok = tokenizer_lib.load(vocab)
    spec = masking.DynamicMasking(masking.MaskingOptions(max_predictions_per_seq=10),
                                  masking.VocabIds.from_tokenizer(tok))
    cfg = pipeline.PipelineConfig(files=tuple(files), batch_size=8, max_seq_length=64, max_predictions_per_seq=10,
                                  seed=5, shuffle=True, dynamic_masking=spec)
    it = grain_pipeline.GrainBatchIterator(cfg, worker_count=workers)
    config = configlib.load("tiny", {"checkpoint.every_steps": 4, "checkpoint.async_save": False})
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), config, log=print)
    state = {"step": jnp.zeros((), jnp.int32)}
    shardings = {"step": jax.sharding.SingleDeviceSharding(jax.devices()[0])}
    state = ckpt.restore_or_init(state, shardings, it)
    step = int(state["step"])
    with open(out, "a") as f:
      while step < 14:
        batch = next(it)
        step += 1
        digest = hashlib.sha256(b"".join(np.ascontiguousarray(batch[k]).tobytes() for k in sorted(batch))).hexdigest()
        f.write(json.dumps([step, digest]) + "\\n")
        f.flush()
        ckpt.save(step, {"step": jnp.asarray(step, jnp.int32)}, it)
        if step == kill_at:
          ckpt.wait()
          import multiprocessing
          with open(out + ".workers", "w") as w:
            json.dump([p.pid for p in multiprocessing.active_children()], w)
          os.kill(os.getpid(), signal.SIGKILL)
    ckpt.wait()
    """)


def test_grain_iterator_resumes_bit_exact_after_sigkill_under_other_worker_counts(prepared, tmp_path):
  def run(workdir, out, kill_at, workers=2):
    args = json.dumps([prepared["array_record"], prepared["manifest"]["vocab"]["file"], str(workdir), str(out),
                       kill_at, workers])
    # Output to files: a pipe would stay open as long as any worker process lives.
    with open(f"{out}.stdout", "w") as stdout, open(f"{out}.stderr", "w") as stderr:
      rc = subprocess.run([sys.executable, "-c", RESUME_SCRIPT, args], stdout=stdout, stderr=stderr, timeout=300,
                          cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}).returncode
    return subprocess.CompletedProcess([], rc, open(f"{out}.stdout").read(), open(f"{out}.stderr").read())
  straight = run(tmp_path / "straight", tmp_path / "straight.jsonl", -1)
  assert straight.returncode == 0, straight.stderr[-2000:]
  killed = run(tmp_path / "killed", tmp_path / "killed.jsonl", 10)  # after the save at 8, mid-interval
  assert killed.returncode == -9, killed.stderr[-2000:]
  workers = json.load(open(f"{tmp_path / 'killed.jsonl'}.workers"))
  assert len(workers) >= 2
  deadline = time.time() + 20
  while time.time() < deadline and any(os.path.exists(f"/proc/{pid}") for pid in workers):
    time.sleep(0.2)
  assert not any(os.path.exists(f"/proc/{pid}") for pid in workers), "Grain workers outlived the killed process"
  resumed = run(tmp_path / "killed", tmp_path / "killed.jsonl", -1, workers=0)  # the position is worker-free
  assert resumed.returncode == 0 and "resumed from checkpoint at step 8" in resumed.stdout, resumed.stderr[-2000:]
  lines = lambda p: [json.loads(line) for line in open(p)]
  want = dict(map(tuple, lines(tmp_path / "straight.jsonl")))
  got = lines(tmp_path / "killed.jsonl")
  assert [s for s, _ in got] == list(range(1, 11)) + list(range(9, 15))
  assert all(want[s] == digest for s, digest in got)
  assert len(set(want.values())) == 14


def test_metrics_writer_events_read_back_in_tensorboard(tmp_path):
  from tensorboard.backend.event_processing import event_accumulator
  writer = metrics.MetricsWriter(str(tmp_path))
  writer.write({"step": 1, "loss": 2.5, "mfu": None})
  writer.write({"step": 2, "loss": 1.5})
  writer.write({"step": 2, "split": "eval", "loss": 1.75})
  writer.close()
  events = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
  events.Reload()
  assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 2.5), (2, 1.5)]
  assert [(e.step, e.value) for e in events.Scalars("eval/loss")] == [(2, 1.75)]


def _train(workdir, corpus, steps, backend="grain", block_tf=True, workers=0, extra=()):
  env = cli_env(JAX_PLATFORMS="cpu")
  if block_tf:
    blocker = os.path.join(workdir, "block_tf")
    os.makedirs(blocker, exist_ok=True)
    with open(os.path.join(blocker, "sitecustomize.py"), "w") as f:
      f.write(BLOCK_TF)
    env["PYTHONPATH"] = os.pathsep.join([blocker, ROOT])
  args = [sys.executable, "-m", "bert_jax.train", "--config=tiny", f"--workdir={workdir}",
          f"--config.data.backend={backend}", f"--config.data.corpus={corpus}", "--config.data.vocab_size=1000",
          "--config.model.vocab_size=1000", f"--config.train.steps={steps}", "--config.optim.warmup_steps=1",
          # one schedule for the first run and its continuation: one program, compiled once (conftest's cache)
          "--config.optim.schedule_steps=5",
          "--config.train.eval_batches=1", "--config.train.eval_every=2", "--config.train.log_every=1",
          "--config.checkpoint.every_steps=2", "--config.data.max_seq_length=64",
          "--config.data.max_predictions_per_seq=10", "--config.data.dupe_factor=1", "--config.train.batch_size=8",
          "--config.data.prepare_workers=1", f"--config.data.grain_workers={workers}", *extra]
  return subprocess.run(args, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
  path = tmp_path_factory.mktemp("corpus") / "docs.txt"
  path.write_text("".join("\n".join(doc) + "\n\n" for doc in pydocs_docs()[:60]))
  return str(path)


def test_train_cli_runs_and_resumes_without_tensorflow(tmp_path, small_corpus):
  """Prepared, packed (2 instances per row) and trained with TensorFlow unimportable, then resumed."""
  workdir = str(tmp_path / "run")
  packed = ["--config.data.pack_instances=2"]
  first = _train(workdir, small_corpus, steps=3, workers=1, extra=packed)
  assert first.returncode == 0, first.stderr[-3000:]
  prepared = [d for d in os.listdir(os.path.join(workdir, "data")) if d.startswith("_")]
  for split_dir in ("train", "eval", os.path.join("packed-2", "train")):
    files = os.listdir(os.path.join(workdir, "data", prepared[0], split_dir))
    assert files and all(f.endswith(".array_record") for f in files), split_dir  # no TensorFlow: ArrayRecord only
  assert "packed" in json.load(open(os.path.join(workdir, "data", prepared[0], "packed-2", "manifest.json")))
  assert os.path.exists(os.path.join(workdir, "checkpoints", "2", "data", "process_0-of-1.json"))
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(workdir, "tensorboard")))
  again = _train(workdir, small_corpus, steps=5, extra=packed)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "resumed from checkpoint at step 3" in again.stdout and "reusing prepared data" in again.stdout
  lines = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  train_steps = [line["step"] for line in lines if line.get("split") != "eval"]
  assert train_steps == [1, 2, 3, 4, 5] and all(np.isfinite(line["loss"]) for line in lines)
  state = json.loads(open(os.path.join(workdir, "checkpoints", "5", "data", "process_0-of-1.json")).read())
  assert state  # Grain's own state (per worker when grain_workers > 0)

  refused = _train(str(tmp_path / "tfdata"), small_corpus, steps=1, backend="tfdata")
  assert refused.returncode != 0 and "--config.data.backend=grain" in refused.stderr, refused.stderr[-2000:]


def test_a_process_whose_share_of_left_over_files_is_empty_is_refused(tmp_path):
  """Files of 50, 0 and 1 records over 2 processes: process 0 reads the first whole, process 1 the second (empty)
  and its half of the third, which holds no record for it; it would wait forever for a first batch."""
  files = []
  for i, n in enumerate((50, 0, 1)):
    tfr = str(tmp_path / f"part-{i}.tfrecord")
    write_google_style_records(tfr, n, 32, 5, start=100 * i)
    array_record_io.convert_tfrecords([tfr], str(tmp_path / "ar"))
    files.append(str(tmp_path / "ar" / f"part-{i}.array_record"))
  kw = dict(max_seq_length=32, max_predictions_per_seq=5)
  with pytest.raises(ValueError, match=r"process 1 of 2 would read only train files that hold no examples"):
    grain_pipeline.check_files_match(files, process_count=2, **kw)
  grain_pipeline.check_files_match(files[:1] + files[2:], process_count=2, **kw)  # 50 and 1: each has records


def test_a_glob_matching_both_formats_reads_each_shard_once(prepared):
  """'train/*' of data prepared in both formats matches every shard twice (.array_record and .tfrecord): the grain
  backend must list each ArrayRecord file once, in the glob's order, or every example is read twice an epoch."""
  files = grain_pipeline.find_files(os.path.join(prepared["dir"], "train", "*"))
  assert list(files) == prepared["array_record"]
  mixed = grain_pipeline.find_files(",".join(prepared["tfrecord"][:2] + prepared["array_record"][1:3]))
  assert list(mixed) == prepared["array_record"][:3]


@pytest.mark.parametrize("new_batch", [6, 8, 2])
def test_grain_resume_with_another_batch_size_continues_the_example_stream(prepared, new_batch):
  """The position is the examples read: a resume with another per-process batch size (train.batch_size, or the
  process count) goes on from the next example, masks included. Counting batches of the new size used to skip
  examples (a larger batch) or read them again (a smaller one)."""
  spec = masking.DynamicMasking(masking.MaskingOptions(max_predictions_per_seq=PRED),
                                masking.VocabIds.from_tokenizer(prepared["tok"]))
  cfg = _cfg(prepared["array_record"], batch_size=4, shuffle=True, dynamic_masking=spec)
  it = grain_pipeline.GrainBatchIterator(cfg)
  for _ in range(3):
    next(it)
  state = it.get_state()
  stream = [next(it) for _ in range(8)]  # the 4-row batches after the first 12 examples
  want = {k: np.concatenate([b[k] for b in stream])[:2 * new_batch] for k in stream[0]}
  resumed = grain_pipeline.GrainBatchIterator(dataclasses.replace(cfg, batch_size=new_batch))
  resumed.set_state(state)
  got = [next(resumed), next(resumed)]
  for k in want:
    np.testing.assert_array_equal(np.concatenate([b[k] for b in got]), want[k], err_msg=k)
  again = grain_pipeline.GrainBatchIterator(dataclasses.replace(cfg, batch_size=new_batch))
  again.set_state(resumed.get_state())  # and its own position counts on from there
  np.testing.assert_array_equal(next(again)["input_ids"], next(resumed)["input_ids"])


@pytest.mark.parametrize("change", [dict(seed=4), dict(shuffle=False), "files"])
def test_grain_resume_under_other_data_settings_says_so(prepared, tmp_path, change):
  """A Grain position saved under other data settings (seed, shuffling, the files) goes on from its example count
  in the new stream, which is not where the saved run stopped: the restore says which settings changed. The same
  settings, and a data directory moved elsewhere, resume without a word."""
  cfg = _cfg(prepared["array_record"], shuffle=True)
  checkpoints = PositionCheckpoints(tmp_path / "ckpt")
  it = grain_pipeline.GrainBatchIterator(cfg)
  checkpoints.save(it, 2)

  def resume(pipeline_cfg):
    resumed = grain_pipeline.GrainBatchIterator(pipeline_cfg)
    assert checkpoints.restore(resumed) == 2
    return resumed

  moved = str(tmp_path / "moved")
  shutil.copytree(os.path.dirname(prepared["array_record"][0]), moved)
  same = resume(_cfg([os.path.join(moved, os.path.basename(f)) for f in prepared["array_record"]], shuffle=True))
  np.testing.assert_array_equal(next(same)["input_ids"], next(it)["input_ids"])
  assert not checkpoints.warnings(), checkpoints.logged
  other = dataclasses.replace(cfg, files=cfg.files[:-1]) if change == "files" else dataclasses.replace(cfg, **change)
  resume(other)
  warnings = checkpoints.warnings()
  want = {"files": "files 5 files", "seed": "data.seed 3 -> 4", "shuffle": "data.shuffle True -> False"}
  key = change if change == "files" else next(iter(change))
  assert len(warnings) == 1 and want[key] in warnings[0] and "not where the saved run stopped" in warnings[0], \
      warnings


@pytest.mark.parametrize("backend", ["tfdata", "grain"])
def test_eval_reads_the_same_examples_under_any_process_count(tmp_path, monkeypatch, backend):
  """3 eval files of 10, 11 and 12 examples and an eval of 5 batches of 6 (30 examples): one process reads the first
  30 of its stream; 2 or 3 processes must read those same 30 between them, each once. Split by files, 2 processes
  had shares of 21 and 12 examples: one read 3 of its 12 twice and the other never reached 6 of its 21."""
  from bert_jax import inputs
  from bert_jax.core import configlib
  files = []
  for shard, n in enumerate((10, 11, 12)):
    tfr = str(tmp_path / f"part-{shard}.tfrecord")
    write_google_style_records(tfr, n, 32, 5, start=100 * shard, seed=shard)
    files.append(tfr)
  if backend == "grain":
    array_record_io.convert_tfrecords(files, str(tmp_path))
    files = [array_record_io.shard_path(f) for f in files]
  config = configlib.load("tiny", {"data.backend": backend, "data.max_seq_length": 32,
                                   "data.max_predictions_per_seq": 5, "train.batch_size": 6,
                                   "train.eval_batch_size": 6})

  def eval_examples(count):
    monkeypatch.setattr(inputs.jax, "process_count", lambda: count)
    read = []
    for index in range(count):
      monkeypatch.setattr(inputs.jax, "process_index", lambda: index)
      it = inputs.eval_iterator(config, files)
      read += [int(i) for _ in range(5) for i in next(it)["input_ids"][:, 1]]
    return read

  one = eval_examples(1)
  assert len(set(one)) == 30
  for count in (2, 3):
    many = eval_examples(count)
    assert sorted(many) == sorted(one), count


def test_eval_split_gives_identical_batches_on_both_backends(prepared):
  """split_records (the eval split): the two backends still agree batch for batch on each process."""
  for index in range(3):
    tf_it = pipeline.BatchIterator(_cfg(prepared["tfrecord"], split_records=True), index, 3)
    grain_it = grain_pipeline.GrainBatchIterator(_cfg(prepared["array_record"], split_records=True), index, 3)
    for _ in range(10):
      a, b = next(tf_it), next(grain_it)
      for k in a:
        assert a[k].dtype == b[k].dtype
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
