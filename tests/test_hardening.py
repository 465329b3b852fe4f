"""Start-up refusals that used to hang or corrupt a run: data without examples, two runs on one workdir; and the
CLIs' answers to arguments of the wrong kind (a missing flag, a directory for another command, a config for the
other CLI), and their --help."""
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from bert_jax.convert import hf_dir
from bert_jax.convert import workdir as workdir_lib
from bert_jax.core import configlib, distributed, workdir_lock
from bert_jax.data import instances, pipeline, prepare, schema
from bert_jax.data import manifest as manifest_lib
from bert_jax.trainers import finetune, pretrain
from data_helpers import ListCorpus, write_google_style_records
from cli_helpers import cli_env

SEQ, PRED = 32, 5
WORDS = "the a of to is in it and run data text one two three more here".split()


def _empty_tfrecord(path):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tf.io.TFRecordWriter(str(path)).close()
  return str(path)


@pytest.fixture
def vocab_txt(tmp_path):
  """A tiny WordPiece vocab.txt: enough to prepare with a given vocabulary (the path that used to exit 0)."""
  path = tmp_path / "vocab.txt"
  path.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n")
  return str(path)


def _train(workdir, train_files, eval_files="", steps=3, **extra):
  overrides = {"data.train_files": train_files, "data.eval_files": eval_files, "data.max_seq_length": SEQ,
               "data.max_predictions_per_seq": PRED, "data.shuffle_buffer": 16, "model.vocab_size": 2048,
               "train.steps": steps, "train.batch_size": 8, "train.log_every": 1000, "train.eval_every": 10**6,
               "optim.warmup_steps": 1, "checkpoint.every_steps": 10**6}
  overrides.update(extra)
  return [sys.executable, "-m", "bert_jax.train", "--config=tiny", f"--workdir={workdir}"] + [
      f"--config.{k}={v}" for k, v in overrides.items()]


# --- 1. empty data -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("contents, with_vocab", [("   \n\n \t \n\n", False), ("", True)])
def test_prepare_cli_refuses_a_corpus_without_documents(tmp_path, vocab_txt, contents, with_vocab):
  corpus = tmp_path / "corpus.txt"
  corpus.write_text(contents)
  args = [sys.executable, "-m", "bert_jax.data.prepare", f"--corpus={corpus}", f"--output_dir={tmp_path / 'out'}",
          "--vocab_size=100", "--workers=1"] + ([f"--vocab_file={vocab_txt}"] if with_vocab else [])
  result = subprocess.run(args, capture_output=True, text=True, env=cli_env(), timeout=120)
  assert result.returncode != 0, result.stdout[-2000:]
  assert f"error: corpus {corpus} holds no documents" in result.stderr, result.stderr[-3000:]
  assert "empty or whitespace only" in result.stderr and "Traceback" not in result.stderr
  assert not (tmp_path / "out" / schema.MANIFEST_NAME).exists()


def _opts():
  return instances.InstanceOptions(max_seq_length=SEQ, max_predictions_per_seq=PRED, dupe_factor=1)


DOCS = [[f"{a} {b} run the data here.", f"one more {a} text to {b}."] for a in WORDS[:4] for b in WORDS[4:8]]


def test_prepare_keeps_empty_shards_beside_full_ones_but_refuses_zero_train_instances(tmp_path, vocab_txt):
  manifest = prepare.prepare(ListCorpus(DOCS), str(tmp_path / "some"), _opts(), vocab_file=vocab_txt, workers=1,
                             num_train_shards=8, eval_fraction=0.0, docs_per_chunk=8, progress=False)
  shards = manifest["splits"]["train"]["shards"]
  assert sum(1 for n in shards.values() if n == 0) == 6 and manifest["splits"]["train"]["instances"] > 0
  # Two tasks: task 1 owns only empty shards, which is fine; the merged total is what must not be 0.
  for task in (0, 1):
    prepare.prepare(ListCorpus(DOCS[:4]), str(tmp_path / "tasks"), _opts(), vocab_file=vocab_txt, workers=1,
                    num_train_shards=2, eval_fraction=0.0, docs_per_chunk=8, task_index=task, num_tasks=2,
                    progress=False)
  assert manifest_lib.merge_manifests(str(tmp_path / "tasks"))["splits"]["train"]["instances"] > 0

  with pytest.raises(manifest_lib.EmptyCorpusError, match=r"corpus words gives 0 train instances: all its documents "
                                                      r"went to eval \(eval_fraction=1.0\)"):
    prepare.prepare(ListCorpus(DOCS), str(tmp_path / "all_eval"), _opts(), vocab_file=vocab_txt, workers=1,
                    eval_fraction=1.0, progress=False, corpus_description="words")
  assert not (tmp_path / "all_eval" / schema.MANIFEST_NAME).exists()


def _records_with_empty_train_manifest(root):
  """Prepared-looking data whose manifest lists 0 train instances (as prepare wrote before it refused)."""
  train = [_empty_tfrecord(root / "train" / f"part-{s:05d}-of-00002.tfrecord") for s in range(2)]
  os.makedirs(root / "eval", exist_ok=True)
  write_google_style_records(str(root / "eval" / "part-00000-of-00001.tfrecord"), 16, SEQ, PRED)
  schema.write_manifest(str(root), {
      "max_seq_length": SEQ, "max_predictions_per_seq": PRED, "vocab": {}, "instances": {"mode": "nsp"},
      "splits": {"train": {"instances": 0, "shards": {os.path.basename(f): 0 for f in train}},
                 "eval": {"instances": 16, "shards": {"part-00000-of-00001.tfrecord": 16}}}})
  return f"{root}/train/*.tfrecord", f"{root}/eval/*.tfrecord"


@pytest.mark.parametrize("case", ["no_manifest", "manifest", "eval"])
def test_train_cli_refuses_files_without_examples_before_compiling(tmp_path, case):
  if case == "no_manifest":
    empty = _empty_tfrecord(tmp_path / "hand" / "empty.tfrecord")
    train_files, eval_files, what, named = empty, "", "train", empty
  elif case == "manifest":
    train_files, eval_files = _records_with_empty_train_manifest(tmp_path / "prepared")
    what, named = "train", str(tmp_path / "prepared" / "train" / "part-00000-of-00002.tfrecord")
  else:
    write_google_style_records(str(tmp_path / "train.tfrecord"), 32, SEQ, PRED)
    named = _empty_tfrecord(tmp_path / "hand" / "eval.tfrecord")
    train_files, eval_files, what = str(tmp_path / "train.tfrecord"), named, "eval"
  # Before the fix the manifest case never reached step 1 (tf.data repeat() over nothing): the timeout catches it.
  result = subprocess.run(_train(tmp_path / "run", train_files, eval_files), capture_output=True, text=True,
                          env=cli_env(), timeout=150)
  assert result.returncode != 0, result.stdout[-2000:]
  assert f"the {what} files hold no examples" in result.stderr, result.stderr[-3000:]
  assert named in result.stderr and "Fix:" in result.stderr
  assert "params" not in result.stdout, "must fail before the model is built and compiled"


def test_train_cli_on_a_whitespace_corpus_fails_in_prepare_and_leaves_no_manifest(tmp_path):
  corpus = tmp_path / "blank.txt"
  corpus.write_text(" \n\n\t\n")
  args = _train(tmp_path / "run", "", **{"data.corpus": str(corpus), "data.vocab_size": 100})
  result = subprocess.run(args, capture_output=True, text=True, env=cli_env(), timeout=150)
  assert result.returncode != 0 and f"corpus {corpus} holds no documents" in result.stderr, result.stderr[-3000:]
  assert not list((tmp_path / "run").glob(f"data/*/{schema.MANIFEST_NAME}")), "a later run must not reuse it"


def test_a_process_whose_share_of_files_is_empty_is_refused(tmp_path):
  files = []
  for i in range(4):
    path = str(tmp_path / f"part-{i}.tfrecord")
    if i % 2:
      _empty_tfrecord(tmp_path / f"part-{i}.tfrecord")
    else:
      write_google_style_records(path, 8, SEQ, PRED, start=8 * i)
    files.append(path)
  kw = dict(max_seq_length=SEQ, max_predictions_per_seq=PRED)
  assert pipeline.check_files_match(files, process_count=1, **kw) is None  # empty files beside full ones: fine
  with pytest.raises(ValueError, match=r"process 1 of 2 would read only train files that hold no examples"):
    pipeline.check_files_match(files, process_count=2, **kw)
  with pytest.raises(ValueError, match=r"the eval files hold no examples \(none holds a record\).*eval_files=''"):
    pipeline.check_files_match(files[1::2], what="eval", **kw)


# --- 3. one run per workdir --------------------------------------------------------------------------------


def _wait_for_lock(workdir, proc, timeout=120):
  path = os.path.join(workdir, workdir_lock.LOCK_NAME)
  deadline = time.time() + timeout
  while time.time() < deadline:
    if os.path.exists(path) and f"pid {proc.pid}\n" in open(path).read():
      return
    if proc.poll() is not None:
      raise AssertionError(f"run ended before it held the workdir: {proc.stderr.read()[-3000:]}")
    time.sleep(0.1)
  raise AssertionError(f"run {proc.pid} did not take {path} within {timeout}s")


def test_second_train_on_a_live_workdir_is_refused_and_a_killed_run_leaves_no_stale_lock(tmp_path):
  write_google_style_records(str(tmp_path / "train.tfrecord"), 64, SEQ, PRED)
  workdir = tmp_path / "run"
  args = _train(workdir, str(tmp_path / "train.tfrecord"), steps=10**6)
  first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
  try:
    _wait_for_lock(workdir, first)
    start = time.time()
    second = subprocess.run(args, capture_output=True, text=True, env=cli_env(), timeout=120)
    assert second.returncode != 0, second.stdout[-2000:]
    assert f"workdir {workdir} is in use by another run: pid {first.pid} on {socket.gethostname()}" in second.stderr, \
        second.stderr[-3000:]
    assert "params" not in second.stdout and time.time() - start < 60
    assert first.poll() is None, "the refused run must not disturb the live one"
  finally:
    first.send_signal(signal.SIGKILL)
    first.wait()
  third = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
  try:
    _wait_for_lock(workdir, third)  # the SIGKILLed run's lock died with it
  finally:
    third.send_signal(signal.SIGKILL)
    third.wait()


def test_finetune_is_refused_on_a_held_workdir_and_locks_release(tmp_path, capsys):
  held = workdir_lock.acquire(str(tmp_path))
  with pytest.raises(workdir_lock.WorkdirBusyError, match=rf"in use by another run: pid {os.getpid()} on "):
    finetune.finetune(configlib.load("finetune"), str(tmp_path))
  assert not (tmp_path / "metrics.jsonl").exists(), "refused before writing anything"
  held.release()
  workdir_lock.acquire(str(tmp_path)).release()  # free again once released
  assert workdir_lock.acquire("s3://bucket/run") is None
  assert "not locked against a second run" in capsys.readouterr().out


def test_finetune_resume_check_reads_past_a_damaged_newest_config(tmp_path):
  """A newest step whose config no longer reads is damage that restore_or_init moves aside; the resume check before
  it used to fail on it, so the run could not start until the step was deleted by hand."""
  import numpy as np
  from bert_jax.core import checkpoint as checkpoint_lib
  config = configlib.load("finetune", {"train.batch_size": 8})
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path / "checkpoints"), config, log=lambda m: None)
  for step in (4, 8):
    ckpt.save(step, {"w": np.full(2, step, np.float32)}, force=True)
  ckpt.wait()
  (tmp_path / "checkpoints" / "8" / "config" / "metadata").write_text('{"train": {"batch')
  finetune.check_resumable(ckpt, config, str(tmp_path))  # step 4's config agrees
  other = configlib.load("finetune", {"train.batch_size": 16})
  with pytest.raises(ValueError, match=r"train.batch_size=8, but this run has train.batch_size=16"):
    finetune.check_resumable(ckpt, other, str(tmp_path))


# --- 4. the CLIs' arguments ---------------------------------------------------------------------------------


@pytest.mark.parametrize("command, given, missing", [("to_hf", [], "--workdir"), ("from_hf", [], "--hf_dir"),
                                                      ("from_tf", ["--tf_config=c.json"], "--tf_checkpoint")])
def test_convert_names_the_flag_its_command_needs(tmp_path, command, given, missing):
  # each was a TypeError traceback from os.path.join(None, ...) or open(None)
  result = subprocess.run([sys.executable, "-m", "bert_jax.convert", command, f"--output={tmp_path / 'out'}", *given],
                          capture_output=True, text=True, env=cli_env(), timeout=120)
  assert result.returncode != 0 and f"{command} needs {missing}" in result.stderr, result.stderr[-3000:]
  assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def test_a_directory_given_to_the_wrong_command_is_named_with_the_command_that_reads_it(tmp_path):
  typo = tmp_path / "runs" / "tyny"
  with pytest.raises(FileNotFoundError, match=rf"{typo} does not exist"):
    workdir_lib.export_to_hf(str(typo), str(tmp_path / "out"))
  assert not typo.exists(), "a mistyped workdir was left behind as an empty checkpoints/"
  hf = tmp_path / "hf"
  hf.mkdir()
  (hf / "config.json").write_text("{}")
  with pytest.raises(FileNotFoundError, match=rf"{hf} is a HuggingFace model, not a training workdir .*"
                                              rf"convert from_hf --hf_dir={hf} --output=DIR` reads it"):
    workdir_lib.export_to_hf(str(hf), str(tmp_path / "out"))
  params = tmp_path / "params"
  params.mkdir()
  (params / workdir_lib.PARAMS_CONFIG_FILE).write_text("{}")
  with pytest.raises(FileNotFoundError, match=rf"init_checkpoint '{params}' is not a pretraining workdir: {params} is "
                                              rf"a params checkpoint \(convert from_hf's output\).*"
                                              rf"--config.checkpoint.init_checkpoint={params}"):
    finetune.load_encoder(str(params))
  run = tmp_path / "run"
  (run / "checkpoints").mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match=rf"no checkpoint in {run}/checkpoints: the run has not saved one yet"):
    workdir_lib.load_workdir_tree(str(run))
  with pytest.raises(FileNotFoundError, match=rf"{run} is a training workdir, not a HuggingFace directory: `convert "
                                              rf"to_hf --workdir={run}` exports it"):
    hf_dir.read_hf_models(str(run))
  with pytest.raises(FileNotFoundError, match=rf"HF directory {typo} does not exist"):
    hf_dir.read_hf_models(str(typo))


@pytest.mark.parametrize("module, usage, flags", [
    ("bert_jax.train", "Pretraining CLI", ["--config: config name in configs/", "tiny", "--workdir"]),
    ("bert_jax.finetune", "Fine-tuning CLI", ["--init_checkpoint", "--config.task.name=files", "--workdir"]),
    ("bert_jax.predict", "Inference CLI", ["fill-mask", "--top_k", "--vocab_file", "--workdir"]),
    ("bert_jax.convert", "to_hf", ["from_tf", "--hf_dir", "--tf_checkpoint", "--workdir"])])
def test_help_shows_the_usage_and_the_flags(module, usage, flags):
  # the entry modules are shims: --help printed "`python -m bert_jax.train`: see bert_jax/cli/train.py" and no flag
  result = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, env=cli_env(),
                          timeout=120)
  assert "Traceback" not in result.stderr, result.stderr[-3000:]  # absl's --help exits 1
  assert result.stdout.splitlines()[0].startswith((usage, f"python -m {module} {{{usage}")), result.stdout[:500]
  for flag in flags:
    assert flag in result.stdout, (flag, result.stdout)


def test_a_config_of_the_other_kind_is_refused_naming_the_cli_that_takes_it(tmp_path):
  # was a KeyError: 'microbatches' from ml_collections, and fine-tuning's train.eval_batch_size=0 from tiny's
  with pytest.raises(ValueError, match=r"this is a fine-tuning config .* run it with `python -m bert_jax.finetune`"):
    pretrain.train_and_evaluate(configlib.load("finetune"), str(tmp_path / "run"))
  with pytest.raises(ValueError, match=r"this is a pretraining config .* fine-tuning takes --config=finetune"):
    finetune.finetune(configlib.load("tiny"), str(tmp_path / "ft"))
  assert not (tmp_path / "run").exists() and not (tmp_path / "ft").exists()


def test_a_workdir_that_is_a_file_is_named_as_one(tmp_path):
  (tmp_path / "run").write_text("notes")
  with pytest.raises(distributed.PreflightError, match=rf"workdir {tmp_path}/run is a file, not a directory"):
    distributed.preflight(configlib.load("tiny"), str(tmp_path / "run"))


def test_a_pretraining_param_rule_that_matches_nothing_is_refused_before_the_data_is_prepared(tmp_path):
  config = configlib.load("tiny", {"optim.param_rules": "^encoder/embedings/:freeze"})  # misspelled
  with pytest.raises(ValueError, match=r"parameter rule '\^encoder/embedings/' matches no parameter; paths look like: "
                                       r"encoder/"):
    pretrain.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run" / "data").exists()
