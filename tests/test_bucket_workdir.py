"""A gs:// workdir, on an in-process GCS emulator (tests/gcs_helpers.py): pretraining saves, resumes and logs into
the bucket exactly as into a local directory (one process or two, SIGTERM included), damaged checkpoints are moved
aside there, the workdir is leased to one live run, and what cannot work on a bucket is refused at start."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from etils import epath
from tensorboard.backend.event_processing import event_accumulator

from bert_jax.core import bucket_lock, metrics, workdir_lock

import gcs_helpers
from cli_helpers import cli_env, to_hf_in_process
from data_helpers import write_google_style_records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 12
RUN = f"gs://{gcs_helpers.BUCKET}/runs/tiny"


@pytest.fixture(scope="module")
def bucket():
  """The emulator's URL, with this process's GCS clients pointed at it."""
  with gcs_helpers.serve() as url, pytest.MonkeyPatch.context() as patch:
    for key, value in gcs_helpers.emulator_env(url).items():
      patch.setenv(key, value)
    yield url


@pytest.fixture(scope="module")
def records(tmp_path_factory):
  root = tmp_path_factory.mktemp("bucket_records")
  for shard in range(2):
    write_google_style_records(str(root / f"train-{shard}.tfrecord"), 40, start=shard * 40, seed=shard)
  write_google_style_records(str(root / "eval-0.tfrecord"), 32, start=500, seed=9)
  write_google_style_records(str(root / "nan-0.tfrecord"), 16, seed=3, weight=float("nan"))
  return root


def _train_flags(workdir, records, steps, **extra):
  """Flags of a tiny pretraining run of `steps` steps on the one 12-step schedule."""
  overrides = {"data.train_files": f"{records}/train-*.tfrecord", "data.eval_files": f"{records}/eval-*.tfrecord",
               "data.max_seq_length": 32, "data.max_predictions_per_seq": 5, "data.shuffle_buffer": 64,
               "model.vocab_size": 2048, "train.steps": steps, "train.batch_size": 8, "train.log_every": 1,
               "train.eval_every": 6, "train.eval_batches": 2, "optim.warmup_steps": 2,
               "optim.schedule_steps": STEPS, "checkpoint.every_steps": 3, **extra}
  return ["--config=tiny", f"--workdir={workdir}"] + [f"--config.{k}={v}" for k, v in overrides.items()]


def _train(workdir, records, steps, cwd, **extra):
  """The train CLI on _train_flags; (returncode, stdout, stderr)."""
  command = [sys.executable, "-m", "bert_jax.train"] + _train_flags(workdir, records, steps, **extra)
  result = subprocess.run(command, capture_output=True, text=True, env=cli_env(), timeout=600, cwd=cwd)
  return result.returncode, result.stdout, result.stderr


def _metrics(text: str) -> list:
  return [json.loads(line) for line in text.splitlines()]


def _losses(lines) -> dict:
  return {line["step"]: line["loss"] for line in lines if line.get("split") != "eval"}


@pytest.fixture(scope="module")
def reference(records, tmp_path_factory):
  """Metrics lines of the same 12 steps in one run on a local workdir."""
  workdir = tmp_path_factory.mktemp("local_reference")
  code, _, stderr = _train(workdir, records, STEPS, cwd=workdir)
  assert code == 0, stderr[-3000:]
  return _metrics((workdir / "metrics.jsonl").read_text())


def test_pretraining_saves_resumes_and_logs_in_a_bucket(bucket, records, reference, tmp_path):
  code, stdout, stderr = _train(RUN, records, STEPS // 2, cwd=tmp_path,
                                **{"train.profile_start_step": 2, "train.profile_steps": 1})
  assert code == 0, stderr[-3000:]
  assert not epath.Path(RUN).joinpath(".lock").exists()  # the run's lease, released at its end
  code, stdout, stderr = _train(RUN, records, STEPS, cwd=tmp_path)
  assert code == 0, stderr[-3000:]
  assert f"resumed from checkpoint at step {STEPS // 2}" in stdout
  assert not os.listdir(tmp_path)  # nothing went to a local ./gs:/ directory

  run = epath.Path(RUN)
  lines = _metrics((run / "metrics.jsonl").read_text())
  # the model state and the tf.data position (staged through a local directory) resumed exactly: every loss
  # equals the one-run reference's, each step logged once
  assert [line["step"] for line in lines] == [line["step"] for line in reference]
  assert _losses(lines) == _losses(reference)
  assert sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == [6, 9, 12]
  assert sorted(p.name for p in (run / "checkpoints" / "data").iterdir()) == ["12", "6", "9"]
  (trace_run,) = (run / "profile" / "plugins" / "profile").iterdir()  # the profiler's layout, written locally
  assert any(p.name.endswith(".xplane.pb") for p in trace_run.iterdir())

  # both runs' TensorBoard events, readable once copied down
  events_dir = tmp_path / "events"
  events_dir.mkdir()
  for event_file in (run / "tensorboard").iterdir():
    (events_dir / event_file.name).write_bytes(event_file.read_bytes())
  events = event_accumulator.EventAccumulator(str(events_dir))
  events.Reload()
  assert [(e.step, e.value) for e in events.Scalars("train/loss")] == sorted(_losses(reference).items())

  # a damaged newest step is moved to damaged/ in the bucket and the run falls back to the one before it
  (run / "checkpoints" / "12" / "state" / "_METADATA").unlink()
  code, stdout, stderr = _train(RUN, records, STEPS, cwd=tmp_path)
  assert code == 0, stderr[-3000:]
  assert "checkpoint at step 12" in stdout and "is damaged" in stdout and "resumed from checkpoint at step 9" in stdout
  (moved,) = (run / "checkpoints" / "damaged").iterdir()
  assert moved.name.startswith("12-") and (moved / "checkpoint" / "state" / "manifest.ocdbt").exists()
  assert (moved / "data" / "of1_process_0.index").exists()
  lines = _metrics((run / "metrics.jsonl").read_text())
  assert [line["step"] for line in lines] == [line["step"] for line in reference]
  assert _losses(lines) == _losses(reference)

  # what reads a workdir reads one in a bucket: the HF export, and a new run's init_checkpoint (phase 2 from 1)
  assert "checked: max |logit difference| vs transformers" in to_hf_in_process(RUN, str(tmp_path / "hf"))
  code, stdout, stderr = _train(tmp_path / "phase2", records, 1, cwd=tmp_path,
                                **{"checkpoint.init_checkpoint": RUN})
  assert code == 0 and f"initialised params from {RUN}" in stdout, stderr[-3000:]


def test_a_run_that_fails_still_leaves_its_metrics_lines_in_the_bucket(bucket, records, tmp_path):
  """Lines wait up to 30 s for their upload; a run stopped by an error uploads them on its way out."""
  workdir = f"gs://{gcs_helpers.BUCKET}/runs/nan"
  code, _, stderr = _train(workdir, records, STEPS, cwd=tmp_path, **{"data.train_files": f"{records}/nan-*.tfrecord"})
  assert code != 0 and "loss is nan at step 1" in stderr, stderr[-2000:]
  assert [line["split"] for line in _metrics((epath.Path(workdir) / "metrics.jsonl").read_text())] == ["eval"]


def test_a_corpus_to_prepare_into_a_bucket_is_refused_before_anything_is_written(bucket, tmp_path):
  """data.corpus is prepared into the workdir through the local filesystem: with a bucket workdir it is refused
  before the lease, the pre-flight probe or checkpoints/ touch the bucket. (Other schemes than gs:// are refused
  in test_multihost.py.)"""
  workdir = f"gs://{gcs_helpers.BUCKET}/corpus_run"
  code, _, stderr = _train(workdir, tmp_path, STEPS, cwd=tmp_path,
                           **{"data.train_files": "", "data.eval_files": "", "data.corpus": "pydocs"})
  assert code != 0 and "through the local filesystem" in stderr and "--output_dir=gs://" in stderr, stderr[-2000:]
  assert not os.listdir(tmp_path) and not epath.Path(workdir).exists()


def test_metrics_lines_reach_the_bucket_at_flushes_and_a_resume_drops_the_later_ones(bucket):
  """A bucket object cannot be appended to: metrics.jsonl is rewritten at flush() (each checkpoint) and close(),
  or at a line BUCKET_FLUSH_SECONDS after the last upload, not at every line."""
  workdir = f"gs://{gcs_helpers.BUCKET}/runs/metrics"
  path = epath.Path(workdir) / "metrics.jsonl"
  writer = metrics.MetricsWriter(workdir)
  writer.resume_from(0)
  writer.write({"step": 1, "loss": 1.0})
  assert not path.exists()
  writer.flush()
  assert [line["step"] for line in _metrics(path.read_text())] == [1]
  for step in (2, 3):
    writer.write({"step": step, "loss": float(step)})
  writer.close()
  assert [line["step"] for line in _metrics(path.read_text())] == [1, 2, 3]
  resumed = metrics.MetricsWriter(workdir)
  assert resumed.resume_from(2) == 1
  assert [line["step"] for line in _metrics(path.read_text())] == [1, 2]
  resumed.BUCKET_FLUSH_SECONDS = 0.0  # the time-based upload, due at once
  resumed.write({"step": 3, "loss": 3.5})
  assert [line["step"] for line in _metrics(path.read_text())] == [1, 2, 3]
  assert any(p.name.startswith("events.out.tfevents") for p in (epath.Path(workdir) / "tensorboard").iterdir())
  resumed.close()


def test_two_processes_save_and_resume_their_data_positions_in_a_bucket(bucket, records, tmp_path):
  """Each process of a multi-process run writes its own tf.data position into the bucket and reads it back; process
  0 alone writes the metrics."""
  workdir = f"gs://{gcs_helpers.BUCKET}/runs/two_processes"
  env = {k: v for k, v in cli_env().items() if not k.startswith("JAX_") or "CACHE" in k}

  def launch(steps):
    flags = _train_flags(workdir, records, steps)
    result = subprocess.run(["bash", os.path.join(ROOT, "launch", "local_multiprocess.sh"), "2", "1", "--"] + flags,
                            capture_output=True, text=True, env={**env, "PYTHON": sys.executable}, timeout=600,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout

  assert "pre-flight ok: 2 process(es)" in launch(STEPS // 2)
  positions = epath.Path(workdir) / "checkpoints" / "data" / str(STEPS // 2)
  assert sorted(p.name for p in positions.iterdir() if p.name.endswith(".index")) == [
      "of2_process_0.index", "of2_process_1.index"]
  stdout = launch(STEPS // 2 + 3)
  assert f"resumed from checkpoint at step {STEPS // 2}" in stdout and "data position" not in stdout, stdout[-3000:]
  lines = _metrics((epath.Path(workdir) / "metrics.jsonl").read_text())
  assert [line["step"] for line in lines if line.get("split") != "eval"] == list(range(1, STEPS // 2 + 4))
  assert not os.listdir(tmp_path)


_HOLD_LEASE = """
import sys, time
from bert_jax.core import bucket_lock, workdir_lock
bucket_lock.RENEW_SECONDS = 0.2
workdir_lock.acquire(sys.argv[1])
print("held", flush=True)
time.sleep(600)
"""


def test_a_bucket_workdir_is_leased_to_one_live_run(bucket, monkeypatch):
  """A second run beside a live one is refused once it sees the lease renewed; after the holder is killed (no
  release, as a SIGKILL or a lost host leaves it) the next run takes the lease over when it expires."""
  monkeypatch.setattr(bucket_lock, "EXPIRE_SECONDS", 2.0)
  monkeypatch.setattr(bucket_lock, "POLL_SECONDS", 0.3)
  workdir = f"gs://{gcs_helpers.BUCKET}/runs/leased"
  holder = subprocess.Popen([sys.executable, "-c", _HOLD_LEASE, workdir], stdout=subprocess.PIPE, text=True,
                            env=cli_env())
  try:
    assert holder.stdout.readline().strip() == "held"
    logs = []
    with pytest.raises(workdir_lock.WorkdirBusyError, match=rf"pid {holder.pid} on .* renewed .* while this run "
                                                             rf"waited for it to expire: that run is alive"):
      workdir_lock.acquire(workdir, logs.append)
    assert f"is held by pid {holder.pid}" in logs[0] and "waiting up to" in logs[0]
  finally:
    holder.kill()
    holder.wait()
  logs = []
  lease = workdir_lock.acquire(workdir, logs.append)
  assert f"took over {workdir}/.lock from pid {holder.pid}" in logs[-1] and "a run that died" in logs[-1]
  assert f"pid {os.getpid()}" in (epath.Path(workdir) / ".lock").read_text()
  lease.release()
  assert not (epath.Path(workdir) / ".lock").exists()
  workdir_lock.acquire(workdir, logs.append).release()  # free at once after a release: no wait, no log line
  assert len(logs) == 2 and "waiting up to" in logs[0]

  # a holder whose lease was taken over says so at its next renewal, and its release leaves the new lease alone
  monkeypatch.setattr(bucket_lock, "RENEW_SECONDS", 0.2)
  logs = []
  lease = workdir_lock.acquire(workdir, logs.append)
  (epath.Path(workdir) / ".lock").write_text("pid 1\nhost elsewhere\n")  # another run's takeover
  deadline = time.monotonic() + 30
  while not logs and time.monotonic() < deadline:
    time.sleep(0.1)
  assert "was taken over by another run" in logs[0] and "stops at its next checkpoint" in logs[0]
  with pytest.raises(bucket_lock.LeaseLostError, match="stopped before saving"):
    lease.check()  # what the trainer asks before each save
  lease.release()
  assert (epath.Path(workdir) / ".lock").read_text() == "pid 1\nhost elsewhere\n"


def test_sigterm_saves_in_the_bucket_with_every_line_up_to_its_step(bucket, records, tmp_path):
  """A preempted bucket run stores its lines up to the step it saves, releases its lease and exits 0; the next run
  resumes from that step."""
  workdir = f"gs://{gcs_helpers.BUCKET}/runs/preempted"
  command = [sys.executable, "-m", "bert_jax.train"] + _train_flags(workdir, records, 200, **{
      "optim.schedule_steps": 200, "checkpoint.every_steps": 1000})
  proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(),
                          cwd=tmp_path)
  for line in proc.stdout:
    if line.startswith("train step 3/"):
      break
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=240)
  assert proc.returncode == 0, err[-3000:]
  saved = int(out.split("SIGTERM: saving a checkpoint at step ")[1].split()[0])
  run = epath.Path(workdir)
  assert str(saved) in [p.name for p in (run / "checkpoints").iterdir()] and not (run / ".lock").exists()
  lines = _metrics((run / "metrics.jsonl").read_text())
  assert [line["step"] for line in lines if line.get("split") != "eval"] == list(range(1, saved + 1))
  command = [sys.executable, "-m", "bert_jax.train"] + _train_flags(workdir, records, saved + 1, **{
      "optim.schedule_steps": 200, "checkpoint.every_steps": 1000})
  resumed = subprocess.run(command, capture_output=True, text=True, env=cli_env(), timeout=300, cwd=tmp_path)
  assert resumed.returncode == 0 and f"resumed from checkpoint at step {saved}" in resumed.stdout, resumed.stderr
