"""The Beam preparation path: the same instances as the local path, counts that add up, bad documents
counted, training on its output, and the Dataflow/Spark launchers' dry runs.

One Beam run (the prepare CLI on the DirectRunner with two workers) is shared by the module: Beam's start-up
costs seconds.
"""
import collections
import glob
import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf

from bert_jax.data import beam_plan, beam_pipeline, corpora, instances, prepare
from bert_jax.data import tokenizer as tokenizer_lib
from data_helpers import pydocs_docs
from cli_helpers import cli_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEQ, PRED = 64, 10
SETTINGS = dict(seed=7, num_train_shards=3, num_eval_shards=2, eval_fraction=0.1, docs_per_chunk=16)
PART_SIZE = "20K"  # four files of ~50 KB: several parts, read by different Beam workers


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """A four-file corpus with bad lines, prepared by the local path (in process) and by Beam (the CLI)."""
  root = tmp_path_factory.mktemp("beam")
  docs = pydocs_docs()[:160]
  for i in range(4):
    with open(root / f"corpus-{i}.txt", "w", encoding="utf-8") as f:
      for doc in docs[i::4]:
        f.write("\n".join(doc) + "\n\n")
      if i == 1:
        f.write("\n \n\t\n")  # three blank/whitespace lines beyond a separator
  with open(root / "corpus-2.txt", "ab") as f:
    f.write(b"A line with broken \xff\xfe bytes in it.\nAnd a second sentence.\n\n")
  pattern = str(root / "corpus-*.txt")
  corpus = corpora.from_spec(pattern, part_bytes=beam_plan.parse_size(PART_SIZE))
  vocab = tokenizer_lib.train_vocab(corpus, "sentencepiece", str(root / "vocab" / "spm"), 1500)
  opts = instances.InstanceOptions(max_seq_length=SEQ, max_predictions_per_seq=PRED, dupe_factor=2)
  local = prepare.prepare(corpus, str(root / "local"), opts, vocab_file=vocab, workers=1, progress=False, **SETTINGS)
  cmd = [sys.executable, "-m", "bert_jax.data.prepare", "--runner=DirectRunner", "--direct_num_workers=2",
         "--direct_running_mode=multi_threading", f"--corpus={pattern}", f"--output_dir={root / 'beam'}",
         f"--vocab_file={vocab}", f"--part_size={PART_SIZE}", f"--max_seq_length={SEQ}",
         f"--max_predictions_per_seq={PRED}", "--dupe_factor=2"] + [f"--{k}={v}" for k, v in SETTINGS.items()]
  result = subprocess.run(cmd, capture_output=True, text=True, env=cli_env(), timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  # The records through the engine's own shuffle (what Dataflow, Spark and Flink get by default).
  engine = subprocess.run([c.replace(str(root / "beam"), str(root / "beam_engine")) for c in cmd] +
                          ["--beam_shuffle=engine"], capture_output=True, text=True, env=cli_env(), timeout=300)
  assert engine.returncode == 0, engine.stderr[-3000:]
  with open(root / "beam" / "manifest.json") as f:
    beam = json.load(f)
  return root, local, beam, result.stdout, vocab


def _records(directory, split):
  """Shard name -> its examples, each serialized again deterministically (protobuf writes a map's entries,
  the features, in an order that may differ between processes)."""
  files = sorted(glob.glob(os.path.join(directory, split, "*.tfrecord")))
  canonical = lambda r: tf.train.Example.FromString(r.numpy()).SerializeToString(deterministic=True)
  return {os.path.basename(f): [canonical(r) for r in tf.data.TFRecordDataset(f)] for f in files}


def test_beam_and_local_hold_the_same_instances(prepared):
  root, local, beam, _, _ = prepared
  assert local["stats"]["corpus_parts"] == beam["stats"]["corpus_parts"] >= 3
  for split in ("train", "eval"):
    local_shards, beam_shards = _records(root / "local", split), _records(root / "beam", split)
    assert sorted(local_shards) == sorted(beam_shards)  # same file names, every shard written
    local_all = collections.Counter(r for rs in local_shards.values() for r in rs)
    beam_all = collections.Counter(r for rs in beam_shards.values() for r in rs)
    assert sum(local_all.values()) > (20 if split == "eval" else 1000)
    assert local_all == beam_all, split
  # Beam places instances by hash, sorted within a shard: a corpus-wide shuffle, unlike local's chunk order.
  train = _records(root / "beam", "train")
  assert train != _records(root / "local", "train")
  for rs in train.values():
    assert 0.2 < len(rs) / sum(map(len, train.values())) < 0.5


def test_scratch_file_shuffle_writes_what_the_engine_shuffle_writes(prepared):
  """The DirectRunner's default moves references to scratch files through its GroupByKey (flat memory); the shards
  equal those of the records shuffled by the engine itself, in order, and the scratch files are gone."""
  root, _, _, stdout, _ = prepared
  assert "shuffle: records in scratch files under" in stdout
  for split in ("train", "eval"):
    assert _records(root / "beam", split) == _records(root / "beam_engine", split)
  assert not glob.glob(str(root / "beam" / ".beam-shuffle-*")) and not glob.glob(str(root / "beam_engine" / ".*"))


def test_shuffle_kind_follows_the_runner():
  assert beam_pipeline.shuffle_kind("DirectRunner", "auto") == "files"
  assert beam_pipeline.shuffle_kind("apache_beam.runners.portability.prism_runner.PrismRunner", "auto") == "files"
  assert beam_pipeline.shuffle_kind("DataflowRunner", "auto") == "engine"
  assert beam_pipeline.shuffle_kind("direct", "auto") == beam_pipeline.shuffle_kind("prism", "auto") == "files"
  assert beam_pipeline.shuffle_kind("DirectRunner", "engine") == "engine"
  with pytest.raises(ValueError, match="beam_shuffle='disk'"):
    beam_pipeline.shuffle_kind("DirectRunner", "disk")


def test_manifest_counts_equal_the_sums(prepared):
  root, local, beam, _, _ = prepared
  assert set(beam) == set(local) | {"schema_version"} and set(beam["stats"]) == set(local["stats"])
  assert beam["engine"] == "DirectRunner" and local["engine"] == "local"
  for split in ("train", "eval"):
    shards = _records(root / "beam", split)
    assert beam["splits"][split]["shards"] == {name: len(rs) for name, rs in shards.items()}
    assert beam["splits"][split]["instances"] == sum(map(len, shards.values()))
    assert beam["splits"][split]["instances"] == local["splits"][split]["instances"]
  assert beam["splits"]["train"]["instances"] + beam["splits"]["eval"]["instances"] == beam["stats"]["instances"]
  timing = {"seconds", "workers", "instances_per_second", "tokens_per_second"}
  assert {k: v for k, v in beam["stats"].items() if k not in timing} == \
      {k: v for k, v in local["stats"].items() if k not in timing}


def test_bad_documents_are_counted_in_counters_and_manifest(prepared):
  _, _, beam, stdout, _ = prepared
  stats = beam["stats"]
  assert stats["invalid_utf8_lines"] == 1 and stats["skipped_empty_lines"] >= 3
  assert stats["documents"] == 161 and stats["documents_without_tokens"] == 0
  counters = dict(item.rsplit(" ", 1) for item in stdout.split("Beam counters: ", 1)[1].splitlines()[0].split(", "))
  counters = {k: int(v.replace(",", "")) for k, v in counters.items()}
  assert counters["documents"] == stats["documents"] and counters["instances"] == stats["instances"]
  assert counters["invalid_utf8_lines"] == 1 and counters["skipped_empty_lines"] == stats["skipped_empty_lines"]
  assert counters["parts"] == stats["corpus_parts"] and counters["shards_written"] == 5
  assert "invalid UTF-8 lines 1" in stdout


def test_train_cli_trains_on_beam_output(prepared, tmp_path):
  root, _, beam, _, _ = prepared
  overrides = {"data.train_files": f"{root}/beam/train/*.tfrecord", "data.max_seq_length": SEQ,
               "data.max_predictions_per_seq": PRED, "data.shuffle_buffer": 64,
               "model.vocab_size": beam["vocab"]["size"], "train.steps": 2, "train.batch_size": 8,
               "train.log_every": 1, "optim.warmup_steps": 1, "checkpoint.every_steps": 10**6}
  cmd = [sys.executable, "-m", "bert_jax.train", "--config=tiny", f"--workdir={tmp_path}"] + [
      f"--config.{k}={v}" for k, v in overrides.items()]
  result = subprocess.run(cmd, capture_output=True, text=True, env=cli_env(), timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(tmp_path / "metrics.jsonl") as f:
    train = [json.loads(l) for l in f]
  assert [l["step"] for l in train] == [1, 2] and all(l["loss"] > 0 and l["nsp_accuracy"] >= 0 for l in train)


def test_launchers_dry_run_print_dataflow_and_spark_commands(prepared):
  root, _, _, _, vocab = prepared
  flags = [f"--corpus={root}/corpus-*.txt", "--output_dir=gs://bucket/data", f"--vocab_file={vocab}",
           "--corpus_bytes=100G", "--target_hours=4"]
  dataflow = subprocess.run([f"{ROOT}/launch/beam_dataflow.sh", "--project=my-proj", "--region=europe-west4",
                             "--bucket=gs://my-bucket", "--dry-run", "--"] + flags,
                            capture_output=True, text=True, env=cli_env(), timeout=120)
  assert dataflow.returncode == 0, dataflow.stderr[-3000:]
  workers, _ = beam_plan.estimate(100 * 2**30, 5, 4, beam_plan.DATAFLOW_CORES)
  out = dataflow.stdout
  assert f"workers: {workers} x n2-standard-8" in out and "why:" in out and "core-hours" in out
  command = out.split("# Dataflow command:\n", 1)[1]
  for option in ("--runner=DataflowRunner", "--project=my-proj", "--region=europe-west4",
                 "--temp_location=gs://my-bucket/beam/tmp", f"--num_workers={workers}", "--extra_package=",
                 "--output_dir=gs://bucket/data"):
    assert option in command, (option, command)
  assert "--corpus_bytes" not in command and "--target_hours" not in command  # planning flags stay out
  spark = subprocess.run([f"{ROOT}/launch/beam_spark.sh", "--master=spark://head:7077", "--image=reg/beam:1",
                          "--dry-run", "--"] + flags, capture_output=True, text=True, env=cli_env(), timeout=120)
  assert spark.returncode == 0, spark.stderr[-3000:]
  command = spark.stdout.split("# Spark command:\n", 1)[1]
  for option in ("--runner=SparkRunner", "--spark_master_url=spark://head:7077", "--environment_type=DOCKER",
                 "--environment_config=reg/beam:1", "--output_dir=gs://bucket/data"):
    assert option in command, (option, command)
  assert "Spark executors" in spark.stdout


def test_worker_estimate_scales_with_size_dupe_factor_and_hours():
  assert beam_plan.parse_size("100G") == 100 * 2**30 and beam_plan.parse_size("1.5T") == int(1.5 * 2**40)
  with pytest.raises(ValueError, match="e.g. 100G"):
    beam_plan.parse_size("lots")
  base, why = beam_plan.estimate(100 * 2**30, 5, 2, 8)
  assert str(base) in why and "MB per core-second" in why
  assert beam_plan.estimate(200 * 2**30, 5, 2, 8)[0] in (2 * base - 1, 2 * base, 2 * base + 1)
  assert beam_plan.estimate(100 * 2**30, 10, 4, 8)[0] == base
  assert beam_plan.estimate(1000, 5, 2, 8)[0] == 1


def test_bad_beam_settings_fail_with_the_fix(tmp_path):
  with pytest.raises(ValueError, match=r"--not_an_option.*neither prepare's nor Beam"):
    beam_pipeline.pipeline_options("DirectRunner", ["--not_an_option=1"])
  beam_pipeline.pipeline_options("DataflowRunner", ["--project=p", "--region=r"])  # Beam's own: accepted
  corpus = tmp_path / "c.txt"
  corpus.write_text("One sentence. Another one.\n")
  opts = instances.InstanceOptions(max_seq_length=SEQ, max_predictions_per_seq=PRED)
  with pytest.raises(ValueError, match="takes a trained vocabulary"):
    prepare.prepare_beam(corpora.TextFiles(str(corpus)), str(tmp_path / "o"), opts, runner="DirectRunner",
                         vocab_file=None)
  with pytest.raises(ValueError, match="writes TFRecord shards"):
    prepare.prepare_beam(corpora.TextFiles(str(corpus)), str(tmp_path / "o"), opts, runner="DirectRunner",
                         vocab_file="v.model", formats=("array_record",))


def test_packed_records_round_trip_in_order():
  records = [(2**64 - 1, b"\x00\x01 serialized"), (0, b""), (7, b"x" * 70000)]
  assert beam_pipeline.unpack_records(beam_pipeline.pack_records(records)) == records
  assert beam_pipeline.unpack_records(b"") == []  # the every-shard marker holds no record
