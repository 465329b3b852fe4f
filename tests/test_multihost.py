"""Multi-process runs on one machine (real jax.distributed, gloo), pre-flight, and launcher dry runs."""
import importlib.util
import json
import shlex
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from cli_helpers import xla_flags
from data_helpers import write_google_style_records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "launch")


def _env(**extra):
  """No JAX_ settings of this process (platform, distributed) but its compilation cache's; its XLA_FLAGS (conftest's,
  without a device count) for the launcher to add to."""
  cache = ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_") or k in cache}
  env.update(TF_CPP_MIN_LOG_LEVEL="3", PYTHON=sys.executable, PYTHONUNBUFFERED="1", **extra)
  return env


@pytest.fixture(scope="module")
def records(tmp_path_factory):
  root = tmp_path_factory.mktemp("mp_records")
  write_google_style_records(str(root / "train.tfrecord"), 200, seed=1)
  write_google_style_records(str(root / "eval.tfrecord"), 32, start=500, seed=2)
  return root


def _flags(records, workdir, steps, **extra):
  flags = {"data.train_files": f"{records}/train.tfrecord", "data.eval_files": f"{records}/eval.tfrecord",
           "data.max_seq_length": 32, "data.max_predictions_per_seq": 5, "data.shuffle": False,
           "model.vocab_size": 2048, "train.steps": steps, "train.batch_size": 16, "train.log_every": 1,
           "train.deterministic": True, "train.eval_batches": 2, "optim.warmup_steps": 2,
           "checkpoint.every_steps": 3, "checkpoint.async_save": False,
           # one schedule for 6 steps and their continuation to 9: the same programs, so the runs that continue
           # load them from the compilation cache instead of compiling them again
           "optim.schedule_steps": 9}
  flags.update(extra)
  return ["--config=tiny", f"--workdir={workdir}"] + [f"--config.{k}={v}" for k, v in flags.items()]


def _multi(num, devices, flags, timeout=600, **env):
  return subprocess.run(["bash", os.path.join(LAUNCH, "local_multiprocess.sh"), str(num), str(devices), "--"]
                        + flags, capture_output=True, text=True, env=_env(**env), timeout=timeout, cwd=ROOT)


def _single(devices, flags, timeout=600):
  env = _env(JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(devices))
  return subprocess.run([sys.executable, "-m", "bert_jax.train"] + flags, capture_output=True, text=True,
                        env=env, timeout=timeout, cwd=ROOT)


def _losses(workdir):
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  return {l["step"]: l["loss"] for l in lines if l.get("split") != "eval"}


def test_two_processes_match_one_process_and_checkpoints_cross_between_them(records, tmp_path):
  """2 processes x 2 devices and 1 process x 4 give the same losses; each run then resumes under the other
  process count (the checkpoint is resharded), and the two continuations still agree."""
  two, one = tmp_path / "two", tmp_path / "one"
  first = _multi(2, 2, _flags(records, two, 6))
  assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
  assert "pre-flight ok: 2 process(es), 2 local x cpu (4 devices)" in first.stdout
  assert not os.path.exists(two / ".preflight-1")
  single = _single(4, _flags(records, one, 6))
  assert single.returncode == 0, single.stderr[-3000:]
  a, b = _losses(two), _losses(one)
  assert sorted(a) == list(range(1, 7))
  for step in a:
    assert a[step] == pytest.approx(b[step], rel=1e-5), step

  to_one = _single(4, _flags(records, two, 9))
  assert to_one.returncode == 0, to_one.stderr[-3000:]
  assert "resumed from checkpoint at step 6" in to_one.stdout
  assert "saved by a different number of processes" in to_one.stdout
  to_two = _multi(2, 2, _flags(records, one, 9))
  assert to_two.returncode == 0, to_two.stdout[-3000:] + to_two.stderr[-3000:]
  assert "resumed from checkpoint at step 6" in to_two.stdout
  a, b = _losses(two), _losses(one)
  assert sorted(a) == sorted(b) == list(range(1, 10))
  for step in (7, 8, 9):
    assert a[step] == pytest.approx(b[step], rel=1e-5), step


def test_sigterm_to_one_process_saves_on_all_at_one_step_and_exits_zero(records, tmp_path):
  """A scheduler's SIGTERM may reach one process only (or each at another step): the processes agree on it through
  JAX's preemption sync manager and all enter the collective save at the same step, instead of one waiting in it
  forever."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  flags = _flags(records, tmp_path, 300, **{"optim.schedule_steps": 0, "checkpoint.every_steps": 1000})
  procs = []
  for i in range(2):
    env = _env(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i),
               JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(1))
    procs.append(subprocess.Popen([sys.executable, "-m", "bert_jax.train"] + flags, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT))
  try:
    deadline = time.time() + 300
    while time.time() < deadline and not (os.path.exists(tmp_path / "metrics.jsonl")
                                          and len(_losses(tmp_path)) >= 3):
      assert all(p.poll() is None for p in procs), procs[0].communicate()[0][-3000:]
      time.sleep(0.05)
    procs[1].send_signal(signal.SIGTERM)
    outs = [p.communicate(timeout=240)[0] for p in procs]
  finally:  # a run stuck in the save would outlive the test
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert [p.returncode for p in procs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
  saved = int(outs[0].split("SIGTERM: saving a checkpoint at step ")[1].split()[0])
  assert 3 <= saved < 300 and str(saved) in os.listdir(tmp_path / "checkpoints")
  # JAX's preemption sync manager chose the step, the same on both (Orbax logs each process's check that says so)
  for i, out in enumerate(outs):
    reached = {int(line.split("step=")[1]) for line in out.splitlines()
               if f"[process={i}]" in line and "Reached preemption sync point" in line}
    assert reached == {saved}, (i, reached, out[-2000:])


def test_sigterm_to_the_local_launcher_reaches_every_process(records, tmp_path):
  """local_multiprocess.sh passes a SIGTERM on to its processes, which save at one step and exit 0; it used to die
  alone and leave them training."""
  flags = _flags(records, tmp_path, 300, **{"optim.schedule_steps": 0, "checkpoint.every_steps": 1000})
  launcher = subprocess.Popen(["bash", os.path.join(LAUNCH, "local_multiprocess.sh"), "2", "1", "--"] + flags,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=_env(LOG_DIR=str(tmp_path / "logs")), cwd=ROOT, start_new_session=True)
  try:
    deadline = time.time() + 300
    while time.time() < deadline and not (os.path.exists(tmp_path / "metrics.jsonl")
                                          and len(_losses(tmp_path)) >= 3):
      assert launcher.poll() is None, launcher.communicate()[0][-3000:]
      time.sleep(0.05)
    launcher.send_signal(signal.SIGTERM)
    out = launcher.communicate(timeout=240)[0]
  finally:  # the whole session: a process the launcher did not stop would outlive the test
    if launcher.poll() is None:
      os.killpg(launcher.pid, signal.SIGKILL)
  assert launcher.returncode == 0, out[-3000:]
  saved = int(out.split("SIGTERM: saving a checkpoint at step ")[1].split()[0])
  assert str(saved) in os.listdir(tmp_path / "checkpoints")
  # process 1 (which logs nothing of its own) saved at the same step
  assert f"Reached preemption sync point, step={saved}" in (tmp_path / "logs" / "process_1.log").read_text()


_PREEMPTION_OFF = """
import socket, jax
from bert_jax.core import preemption
with socket.socket() as s:
  s.bind(("127.0.0.1", 0))
  port = s.getsockname()[1]
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=1, process_id=0)
for case in ("service off", "not initialized"):
  try:
    preemption.Preemption(0)._start_sync()
  except RuntimeError as e:
    print(case + ":", e)
  jax.distributed.shutdown()
"""


def test_multi_process_preemption_without_jax_sync_manager_names_the_fix():
  """Several processes agree on a SIGTERM only through JAX's preemption sync manager; without it (no
  jax.distributed, or its preemption service turned off) the check would say False forever or raise JAX's bare
  error, so entering the block fails naming the setting instead."""
  result = subprocess.run([sys.executable, "-c", _PREEMPTION_OFF], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env=_env(JAX_PLATFORMS="cpu", JAX_ENABLE_PREEMPTION_SERVICE="false"))
  assert result.returncode == 0, result.stderr[-3000:]
  assert "not initialized: 1 processes but jax.distributed is not initialized" in result.stdout
  assert "call jax.distributed.initialize()" in result.stdout
  assert "service off: JAX's preemption service is off (jax_enable_preemption_service" in result.stdout
  assert "leave it on (the default)" in result.stdout


def test_tensor_axis_across_processes_is_refused_not_trained_on_half_a_batch(records, tmp_path):
  """Each process reads its own rows; a mesh whose tensor axis spans the processes replicates the batch across them,
  and JAX then took one process's 8 rows as the whole batch of 16, different rows in each copy, and trained."""
  result = _multi(2, 1, _flags(records, tmp_path, 1, **{"mesh.data": 1, "mesh.tensor": 2}), timeout=300)
  assert result.returncode != 0
  assert ("mesh {'data': 1, 'fsdp': 1, 'tensor': 2} gives the devices of process 0 16 of the 16 rows of "
          "train.batch_size, but each of the 2 processes reads its own 8") in result.stdout
  assert "mesh.tensor dividing 1" in result.stdout
  assert not os.path.exists(tmp_path / "checkpoints")


def _two_processes(flags, timeout):
  """(return codes, outputs) of 2 processes x 2 devices; both killed at the timeout (a hang must not outlive it)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  procs = [subprocess.Popen([sys.executable, "-m", "bert_jax.train"] + flags, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            env=_env(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                                     JAX_PROCESS_ID=str(i), JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(2)))
           for i in range(2)]
  deadline, outs = time.time() + timeout, []
  try:
    for p in procs:
      try:
        outs.append(p.communicate(timeout=max(deadline - time.time(), 1))[0])
      except subprocess.TimeoutExpired:
        p.kill()
        outs.append("TIMEOUT\n" + p.communicate()[0])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  return [p.returncode for p in procs], outs


def test_a_checkpoint_one_process_cannot_read_is_moved_aside_by_all(records, tmp_path):
  """Process 1's data position at step 6 is torn: every process falls back to step 3 together (process 1 used to
  fall back alone and wait in the move while process 0 trained on from step 6)."""
  first = _multi(2, 2, _flags(records, tmp_path, 6))
  assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
  data = tmp_path / "checkpoints" / "data" / "6"
  torn = [name for name in os.listdir(data) if name.startswith("of2_process_1.data")]
  assert torn
  for name in torn:
    os.truncate(data / name, 20)
  codes, outs = _two_processes(_flags(records, tmp_path, 9), timeout=150)
  assert codes == [0, 0], outs[0][-3000:] + outs[1][-3000:]
  assert "checkpoint at step 6 in" in outs[0] and "is damaged (process(es) [1] could not read it)" in outs[0]
  assert "resumed from checkpoint at step 3" in outs[0]
  assert [name.split("-")[0] for name in os.listdir(tmp_path / "checkpoints" / "damaged")] == ["6"]
  assert sorted(_losses(tmp_path)) == list(range(1, 10))


def test_missing_process_fails_fast_naming_it(tmp_path):
  env = _env(JAX_COORDINATOR_ADDRESS="127.0.0.1:29731", JAX_NUM_PROCESSES="3", JAX_PROCESS_ID="0",
             JAX_PLATFORMS="cpu", BERT_JAX_INIT_TIMEOUT="8")
  started = time.time()
  result = subprocess.run([sys.executable, "-m", "bert_jax.train", "--config=tiny", f"--workdir={tmp_path}"],
                          capture_output=True, text=True, env=env, timeout=120)
  assert result.returncode != 0
  assert time.time() - started < 60
  assert "processes [1, 2] of 3 did not join within 8s" in result.stderr
  lone = subprocess.run([sys.executable, "-m", "bert_jax.train", "--config=tiny", f"--workdir={tmp_path}"],
                        capture_output=True, text=True, timeout=120,
                        env={**env, "JAX_PROCESS_ID": "2", "BERT_JAX_INIT_TIMEOUT": "3"})
  assert lone.returncode != 0 and "process 2 could not complete start-up with process 0" in lone.stderr


def test_preflight_rejects_unwritable_workdir(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  result = _single(1, ["--config=tiny", f"--workdir={blocker}/run"], timeout=120)
  assert result.returncode != 0
  assert f"workdir {blocker}/run is not writable from process 0" in result.stderr


def test_unsupported_remote_workdir_is_refused_before_anything_is_written(tmp_path):
  """A workdir the run would write through os.path as ./s3:/bucket/run on each host's own disk (lost with the
  machine) is refused at start, naming what to use instead, and nothing is written: any scheme but gs:// for
  pretraining (tests/test_bucket_workdir.py runs one on gs://), any scheme for fine-tuning."""
  env = _env(JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(1))
  for command, workdir, expected in (
      (["bert_jax.train", "--config=tiny"], "s3://bucket/run", "s3:// workdirs are not supported (local paths and "
                                                                "gs:// buckets are)"),
      (["bert_jax.finetune", "--config=finetune"], "gs://bucket/run",
       "fine-tuning writes its workdir through the local filesystem, so a gs:// workdir")):
    result = subprocess.run([sys.executable, "-m", *command, f"--workdir={workdir}"], capture_output=True,
                            text=True, env={**env, "PYTHONPATH": ROOT}, timeout=120, cwd=tmp_path)
    assert result.returncode != 0 and expected in result.stderr, result.stderr
    assert "gcsfuse" in result.stderr and not os.listdir(tmp_path)


def test_code_hash_covers_every_module_of_the_package(tmp_path):
  """The pre-flight's same-code check hashes all of bert_jax/: a change to any module changes it (it hashed only
  bert_jax/core/ before, so processes running different models or data code passed)."""
  from bert_jax.core import distributed
  copy = tmp_path / "bert_jax"
  shutil.copytree(os.path.join(ROOT, "bert_jax"), copy, ignore=shutil.ignore_patterns("__pycache__"))

  def hash_of_copy():
    spec = importlib.util.spec_from_file_location("distributed_of_copy", copy / "core" / "distributed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.code_hash()

  assert hash_of_copy() == distributed.code_hash()
  for changed in ("data/knowledge.py", "models/encoder.py", "core/sharding.py"):
    source = (copy / changed).read_text()
    (copy / changed).write_text(source + "\n# another version\n")
    assert hash_of_copy() != distributed.code_hash(), changed
    (copy / changed).write_text(source)
  assert hash_of_copy() == distributed.code_hash()


def test_preflight_rejects_different_config_across_processes(records, tmp_path):
  base = _flags(records, tmp_path, 2)
  port = "29745"
  procs = []
  for pid, lr in ((0, "1e-3"), (1, "2e-3")):
    env = _env(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(pid),
               JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2", BERT_JAX_INIT_TIMEOUT="60")
    procs.append(subprocess.Popen([sys.executable, "-m", "bert_jax.train"] + base +
                                  [f"--config.optim.peak_learning_rate={lr}"], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT))
  outs = [p.communicate(timeout=300) for p in procs]
  assert all(p.returncode != 0 for p in procs)
  assert any("processes [1] run a different config than process 0" in err for _, err in outs), outs[0][1][-2000:]


def test_tpu_pod_dry_run_prints_the_gcloud_commands():
  result = subprocess.run(["bash", os.path.join(LAUNCH, "tpu_pod.sh"), "--name=bert", "--zone=us-central2-b",
                           "--accelerator-type=v4-32", "--spot", "--dry-run", "--",
                           "--config=large", "--workdir=gs://bucket/run"], capture_output=True, text=True, cwd=ROOT)
  assert result.returncode == 0, result.stderr
  lines = ["+ " + " ".join(shlex.split(l[2:])) for l in result.stdout.splitlines()]  # as the shell reads them
  assert any(l.startswith("+ gcloud compute tpus tpu-vm create bert --zone=us-central2-b --accelerator-type=v4-32")
             and "--spot" in l for l in lines)
  train = [l for l in lines if "bert_jax.train" in l]
  assert len(train) == 1 and "--worker=all" in train[0] and "--config=large" in train[0]
  assert any("pip install" in l and "--worker=all" in l for l in lines)
  assert lines[-1].startswith("+ gcloud compute tpus tpu-vm delete bert")
  multi = subprocess.run(["bash", os.path.join(LAUNCH, "tpu_pod.sh"), "--name=bert", "--zone=z",
                          "--accelerator-type=v5p-128", "--num-slices=2", "--dry-run", "--", "--config=large",
                          "--workdir=gs://b/r"], capture_output=True, text=True, cwd=ROOT)
  assert "queued-resources create bert" in multi.stdout and "--node-count=2" in multi.stdout
  assert multi.stdout.count("bert_jax.train") == 2 and "--config.mesh.dcn_data=2" in multi.stdout


def test_gpu_slurm_dry_run_prints_sbatch_and_srun():
  result = subprocess.run(["bash", os.path.join(LAUNCH, "gpu_slurm.sh"), "--nodes=4", "--gpus-per-node=8",
                           "--partition=a3", "--dry-run", "--", "--config=large", "--workdir=/shared/run"],
                          capture_output=True, text=True, cwd=ROOT, env={k: v for k, v in os.environ.items()
                                                                         if not k.startswith("SLURM_")})
  assert result.returncode == 0, result.stderr
  out = result.stdout
  assert "+ sbatch --nodes=4 --gpus-per-node=8 --time=48:00:00 --partition=a3" in out
  assert "srun --ntasks-per-node=1 --gpus-per-node=8" in out and "NCCL_" in out
  assert "-m bert_jax.train --config=large --workdir=/shared/run" in out
  inside = subprocess.run(["bash", os.path.join(LAUNCH, "gpu_slurm.sh"), "--dry-run", "--", "--config=large",
                           "--workdir=/w"], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "SLURM_JOB_ID": "123"})
  assert inside.stdout.startswith("+ srun") and "sbatch" not in inside.stdout
