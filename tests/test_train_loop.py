"""The train CLI end to end, in real subprocesses: metrics contract, NaN stop, exact resume, SIGTERM."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from cli_helpers import cli_env
from data_helpers import write_google_style_records

TRAIN_KEYS = {"step", "loss", "mlm_loss", "mlm_accuracy", "nsp_loss", "nsp_accuracy", "learning_rate", "grad_norm",
              "seq_per_sec", "tokens_per_sec", "mfu"}


@pytest.fixture(scope="module")
def records(tmp_path_factory):
  root = tmp_path_factory.mktemp("loop_records")
  for shard in range(4):
    write_google_style_records(str(root / f"train-{shard}.tfrecord"), 40, start=shard * 40, seed=shard)
  write_google_style_records(str(root / "eval-0.tfrecord"), 32, start=500, seed=9)
  write_google_style_records(str(root / "nan-0.tfrecord"), 16, seed=3, weight=float("nan"))
  return root


def _args(workdir, records, steps, **extra):
  overrides = {"data.train_files": f"{records}/train-*.tfrecord", "data.eval_files": f"{records}/eval-*.tfrecord",
               "data.max_seq_length": 32, "data.max_predictions_per_seq": 5, "data.shuffle_buffer": 64,
               "model.vocab_size": 2048, "train.steps": steps, "train.batch_size": 8, "train.log_every": 1,
               "train.eval_every": 1000, "train.eval_batches": 2, "optim.warmup_steps": 2,
               "checkpoint.every_steps": 5, "checkpoint.async_save": True}
  overrides.update(extra)
  return [sys.executable, "-m", "bert_jax.train", "--config=tiny", f"--workdir={workdir}"] + [
      f"--config.{k}={v}" for k, v in overrides.items()]


# The whole and the killed runs without FP8 run on 2 devices: the resumed state and data order of a sharded run
# must be exact too (more simulated devices on 2 cores only slow the runs). FP8's statistics under sharding are
# tested in test_fp8.py.
def _resume_devices(fp8):
  return 1 if fp8 else 2


def _lines(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(l) for l in f]


def test_nonfinite_loss_stops_naming_the_step_and_is_never_saved(records, tmp_path):
  # a checkpoint every step, written before the next step starts, and no metrics line before step 1000: the save
  # at step 1 must check the loss itself
  result = subprocess.run(_args(tmp_path, records, 6, **_program(fp8=False),
                                **{"data.train_files": f"{records}/nan-*.tfrecord", "checkpoint.every_steps": 1,
                                   "checkpoint.async_save": False, "train.log_every": 1000}),
                          capture_output=True, text=True, env=cli_env(_resume_devices(False)), timeout=300)
  assert result.returncode != 0
  assert "loss is nan at step 1" in result.stderr
  saved = os.listdir(tmp_path / "checkpoints") if os.path.isdir(tmp_path / "checkpoints") else []
  assert not [name for name in saved if name.isdigit()], saved


def test_config_and_data_mismatch_fails_at_start(records, tmp_path):
  result = subprocess.run(_args(tmp_path, records, 6, **{"data.max_predictions_per_seq": 20}),
                          capture_output=True, text=True, env=cli_env(), timeout=300)
  assert result.returncode != 0
  assert "masked_lm_ids: config needs length 20" in result.stderr and "has 5" in result.stderr


def _losses_by_step(lines):
  return {l["step"]: l["loss"] for l in lines if l.get("split") != "eval"}


def _wait_for_checkpoint(workdir, proc, timeout=240):
  ckpt_dir = os.path.join(workdir, "checkpoints")
  deadline = time.time() + timeout
  while time.time() < deadline:
    if os.path.isdir(ckpt_dir) and any(n.isdigit() for n in os.listdir(ckpt_dir)):
      return
    if proc.poll() is not None:
      raise AssertionError(f"run ended before its first checkpoint: {proc.stderr.read()[-2000:]}")
    time.sleep(0.02)
  raise AssertionError("no checkpoint appeared")


RESUME_STEPS = 40


def _resume_steps(fp8):
  """Steps of the whole and killed runs: FP8's emulated projections make a CPU step slower; 20 steps still outlast
  its 16-step amax history, with a checkpoint every 5 for the kill to land after."""
  return 20 if fp8 else RESUME_STEPS


def _program(fp8):
  """The overrides, beyond _args's, that fix the train step's program. The schedule spans twice the resume runs, so
  they stop halfway through its decay. The runs without FP8 (the NaN, resume and SIGTERM tests') also share the
  devices (_resume_devices) and hence one program: the first run compiles it, the others load it from the
  compilation cache (conftest)."""
  return {"model.fp8": fp8, "model.fp8_amax_history": 16, "optim.schedule_steps": 2 * _resume_steps(fp8)}


def _resume_args(workdir, records, fp8):
  steps = _resume_steps(fp8)
  return _args(workdir, records, steps, **{"train.eval_every": steps // 2, **_program(fp8)})


@pytest.fixture(scope="module")
def uninterrupted(records, tmp_path_factory):
  """fp8 -> (workdir, stdout) of a whole run; the resume test compares against it, the metrics test reads it."""
  runs = {}

  def get(fp8):
    if fp8 not in runs:
      workdir = tmp_path_factory.mktemp("whole_fp8" if fp8 else "whole")
      result = subprocess.run(_resume_args(workdir, records, fp8), capture_output=True, text=True,
                              env=cli_env(_resume_devices(fp8)), timeout=600)
      assert result.returncode == 0, result.stderr[-3000:]
      runs[fp8] = workdir, result.stdout
    return runs[fp8]
  return get


def test_run_writes_the_metrics_contract(uninterrupted):
  workdir, stdout = uninterrupted(False)
  lines = _lines(workdir)
  train_lines = [l for l in lines if l.get("split") != "eval"]
  eval_lines = [l for l in lines if l.get("split") == "eval"]
  assert [l["step"] for l in train_lines] == list(range(1, RESUME_STEPS + 1))
  for l in train_lines:
    assert TRAIN_KEYS <= set(l), set(l) ^ TRAIN_KEYS
    assert l["mfu"] is None  # CPU: no known peak
  assert train_lines[-1]["seq_per_sec"] > 0 and train_lines[-1]["tokens_per_sec"] == pytest.approx(
      train_lines[-1]["seq_per_sec"] * 32)
  assert [l["step"] for l in eval_lines] == [0, 20, 40]
  # step k logs the rate its update used, schedule(k - 1): warmup 2, then linear from tiny's 1e-3 to 0 at step 80
  expected = [1e-3 * min(k / 2, 1 - (k - 2) / (2 * RESUME_STEPS - 2)) for k in range(RESUME_STEPS)]
  assert [l["learning_rate"] for l in train_lines] == pytest.approx(expected, rel=1e-5)
  assert {"mlm_loss", "mlm_accuracy", "nsp_loss", "nsp_accuracy"} <= set(eval_lines[0])
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir / "tensorboard"))
  assert f"train step {RESUME_STEPS}/{RESUME_STEPS}: loss" in stdout and "eta" in stdout
  assert "platform defaults for cpu: remat_policy=none, prng_impl=threefry2x32" in stdout


@pytest.mark.parametrize("fp8", [False, True], ids=["bf16", "fp8"])
def test_resume_after_sigkill_matches_uninterrupted(records, uninterrupted, tmp_path, fp8):
  """With fp8 the checkpoint also carries every projection's scales and amax history, or the losses differ."""
  reference = _losses_by_step(_lines(uninterrupted(fp8)[0]))

  killed_dir = tmp_path / "killed"
  proc = subprocess.Popen(_resume_args(killed_dir, records, fp8), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=cli_env(_resume_devices(fp8)))
  _wait_for_checkpoint(killed_dir, proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  resumed = subprocess.run(_resume_args(killed_dir, records, fp8), capture_output=True, text=True,
                           env=cli_env(_resume_devices(fp8)), timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resumed from checkpoint at step" in resumed.stdout
  assert f"devices: {_resume_devices(fp8)} x cpu" in resumed.stdout
  resumed_from = int(resumed.stdout.split("resumed from checkpoint at step ")[1].split()[0])
  steps = _resume_steps(fp8)
  assert 0 < resumed_from < steps, "the kill must land mid-run"
  # metrics.jsonl holds every step once (lines past the checkpoint were dropped and written again), each
  # loss equal to the uninterrupted run's.
  lines = _lines(killed_dir)
  train_steps = [l["step"] for l in lines if l.get("split") != "eval"]
  assert train_steps == list(range(1, steps + 1))
  assert [l["step"] for l in lines if l.get("split") == "eval"] == [0, steps // 2, steps]
  for step, loss in _losses_by_step(lines).items():
    assert loss == reference[step], (step, loss, reference[step])
  if fp8:  # the export holds the weights alone, and transformers (no FP8) reproduces the full-precision logits
    exported = subprocess.run([sys.executable, "-m", "bert_jax.convert", "to_hf", f"--workdir={killed_dir}",
                               f"--output={tmp_path / 'hf'}"], capture_output=True, text=True, env=cli_env(),
                              timeout=600)
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert "checked: max |logit difference| vs transformers" in exported.stdout


def test_sigterm_saves_at_the_next_step_and_exits_zero(records, tmp_path):
  steps = 2 * RESUME_STEPS  # as long as the schedule (_program)
  overrides = {"checkpoint.every_steps": 1000, **_program(fp8=False)}
  env = cli_env(_resume_devices(False))
  proc = subprocess.Popen(_args(tmp_path, records, steps, **overrides),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
  deadline = time.time() + 240
  while time.time() < deadline:
    if os.path.exists(tmp_path / "metrics.jsonl") and any(l.get("step", 0) >= 3 for l in _lines(tmp_path)):
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=240)
  assert proc.returncode == 0, err[-3000:]
  saved = int(out.split("SIGTERM: saving a checkpoint at step ")[1].split()[0])
  assert 3 <= saved < steps
  assert str(saved) in os.listdir(tmp_path / "checkpoints")
  resumed = subprocess.run(_args(tmp_path, records, saved + 2, **overrides), capture_output=True, text=True,
                           env=env, timeout=300)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"resumed from checkpoint at step {saved}" in resumed.stdout
  # the same command on the finished workdir trains nothing and writes nothing: still one line per step
  lines = _lines(tmp_path)
  again = subprocess.run(_args(tmp_path, records, saved + 2, **overrides), capture_output=True, text=True,
                         env=env, timeout=300)
  assert again.returncode == 0, again.stderr[-3000:]
  assert _lines(tmp_path) == lines
