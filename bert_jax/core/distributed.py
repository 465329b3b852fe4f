"""Multi-process start-up: jax.distributed initialisation and pre-flight checks.

Environments:
  * explicit (launch/local_multiprocess.sh or your own launcher): JAX_COORDINATOR_ADDRESS=host:port,
    JAX_NUM_PROCESSES, JAX_PROCESS_ID. Before JAX connects, a small TCP rendezvous on port+1 checks that
    every process turns up within BERT_JAX_INIT_TIMEOUT seconds (default 300) and otherwise fails naming
    the missing process ids. XLA's own connect would abort the process without saying which were missing.
  * SLURM (srun with more than one task) and multi-host TPU VMs: jax.distributed.initialize() with JAX's
    auto-detection.
Pre-flight checks after start-up: same code and config hash on every process, a writable workdir, and the
device kind reported by process 0. The batch-divisibility check lives in sharding.check_batch_size.
"""

import hashlib
import importlib.util
import json
import os
import pathlib
import socket
import time

import jax
import numpy as np
from etils import epath

from bert_jax.core import storage


class PreflightError(RuntimeError):
  pass


def _recv_line(conn, deadline) -> str:
  data = b""
  while not data.endswith(b"\n"):
    conn.settimeout(max(deadline - time.time(), 0.01))
    chunk = conn.recv(64)
    if not chunk:
      raise ConnectionError("closed")
    data += chunk
  return data.decode().strip()


def rendezvous(coordinator: str, num_processes: int, process_id: int, timeout: float) -> None:
  """Returns once all processes have checked in with process 0, or raises naming who is missing."""
  host, port = coordinator.rsplit(":", 1)
  address = (host, int(port) + 1)
  deadline = time.time() + timeout
  if process_id == 0:
    server = socket.create_server(("", address[1]), reuse_port=False)
    server.settimeout(0.5)
    joined, conns = {0}, []
    try:
      while len(joined) < num_processes and time.time() < deadline:
        try:
          conn, _ = server.accept()
        except socket.timeout:
          continue
        try:
          joined.add(int(_recv_line(conn, deadline)))
          conns.append(conn)
        except (ConnectionError, ValueError, socket.timeout):
          conn.close()
      missing = sorted(set(range(num_processes)) - joined)
      if missing:
        raise PreflightError(f"pre-flight: processes {missing} of {num_processes} did not join within {timeout:.0f}s "
                             f"(coordinator {coordinator}); check that they were started, use the same "
                             f"JAX_COORDINATOR_ADDRESS and can reach this host")
      for conn in conns:
        conn.sendall(b"go\n")
    finally:
      for conn in conns:
        conn.close()
      server.close()
    return
  while True:
    try:
      with socket.create_connection(address, timeout=max(deadline - time.time(), 0.01)) as conn:
        conn.sendall(f"{process_id}\n".encode())
        if _recv_line(conn, deadline + 5) == "go":
          return
    except (ConnectionError, OSError, socket.timeout):
      if time.time() >= deadline:
        raise PreflightError(f"pre-flight: process {process_id} could not complete start-up with process 0 at "
                             f"{address[0]}:{address[1]} within {timeout:.0f}s; is process 0 running, and did all "
                             f"{num_processes} processes start?") from None
      time.sleep(0.2)


def initialize_from_env() -> bool:
  """Starts jax.distributed when the environment describes a multi-process run; True if it did."""
  env = os.environ
  timeout = float(env.get("BERT_JAX_INIT_TIMEOUT", "300"))
  if "JAX_COORDINATOR_ADDRESS" in env and "JAX_NUM_PROCESSES" in env:
    address, count = env["JAX_COORDINATOR_ADDRESS"], int(env["JAX_NUM_PROCESSES"])
    process_id = int(env.get("JAX_PROCESS_ID", "0"))
    if count <= 1:
      return False
    if env.get("JAX_PLATFORMS", "") == "cpu":
      jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives across processes
    rendezvous(address, count, process_id, timeout)
    jax.distributed.initialize(address, num_processes=count, process_id=process_id,
                               initialization_timeout=int(timeout))
    return True
  if int(env.get("SLURM_NTASKS", "1")) > 1 or len(env.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1:
    jax.distributed.initialize(initialization_timeout=int(timeout))
    return True
  return False


def code_hash() -> str:
  """sha256 over the package's Python sources: equal on every process running the same code."""
  h = hashlib.sha256()
  root = pathlib.Path(__file__).parent.parent  # bert_jax/, not only bert_jax/core/
  for path in sorted(root.rglob("*.py")):
    h.update(str(path.relative_to(root)).encode())
    h.update(path.read_bytes())
  return h.hexdigest()


def _allgather_hash(hex_digest: str) -> np.ndarray:
  from jax.experimental import multihost_utils
  as_ints = np.frombuffer(bytes.fromhex(hex_digest)[:8], dtype=np.int32)
  return np.asarray(multihost_utils.process_allgather(as_ints)).reshape(jax.process_count(), -1)


REMOTE_SCHEMES = ("gs",)  # workdirs in a bucket (pretraining): written through Orbax and epath; tested on an emulator


def check_workdir_scheme(workdir: str, remote_ok: bool = True) -> None:
  """Fails on a workdir the run cannot write where it says: another scheme than gs:// (os.path would turn
  s3://b/run into ./s3:/b/run on each host's own disk, lost with the machine), or gs:// without its client."""
  scheme = storage.scheme(workdir)
  if scheme is None:
    return
  if not remote_ok:
    raise PreflightError(
        f"--workdir={workdir}: fine-tuning writes its workdir through the local filesystem, so a {scheme}:// "
        f"workdir would end up under ./{scheme}:/ on this host's disk. Give a local path, or the bucket mounted "
        f"with gcsfuse; gs:// workdirs are for pretraining, and a gs:// pretraining workdir can be the "
        f"init_checkpoint")
  if scheme not in REMOTE_SCHEMES:
    raise PreflightError(
        f"--workdir={workdir}: {scheme}:// workdirs are not supported (local paths and gs:// buckets are); the "
        f"checkpoints and metrics would be written under ./{scheme}:/ on each host's local disk and lost with it. "
        f"Give a path every process can write that outlives the machines: a gs:// bucket, a shared or persistent "
        f"disk (NFS, Filestore), or the bucket mounted on every host (gcsfuse with directory renames enabled, "
        f"which Orbax's saves use)")
  try:
    has_client = importlib.util.find_spec("google.cloud.storage") is not None
  except ModuleNotFoundError:  # no google.cloud at all
    has_client = False
  if not has_client:
    raise PreflightError(f"--workdir={workdir}: a gs:// workdir needs the google-cloud-storage package (Orbax and "
                         f"the workdir lease use it); pip install 'bert_jax[gcs]'")


def preflight(config, workdir: str, log=print, remote_ok: bool = True) -> None:
  """Same code and config everywhere, a writable workdir (local, or a gs:// bucket where `remote_ok`), and the
  devices reported."""
  check_workdir_scheme(workdir, remote_ok)
  checks = {"code": code_hash(), "config": hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True,
                                                                     default=str).encode()).hexdigest()}
  if jax.process_count() > 1:
    for what, digest in checks.items():
      gathered = _allgather_hash(digest)
      differ = [p for p in range(len(gathered)) if not np.array_equal(gathered[p], gathered[0])]
      if differ:
        raise PreflightError(f"pre-flight: processes {differ} run a different {what} than process 0 "
                             f"({what} hash {digest[:12]} here); deploy the same code and flags everywhere")
  probe = epath.Path(workdir) / f".preflight-{jax.process_index()}"
  if epath.Path(workdir).exists() and not epath.Path(workdir).is_dir():  # else "not writable: File exists"
    raise PreflightError(f"pre-flight: workdir {workdir} is a file, not a directory; give a directory (a new one "
                         f"is made)")
  try:
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    probe.write_text("ok")
    probe.unlink()
  except Exception as e:
    raise PreflightError(f"pre-flight: workdir {workdir} is not writable from process {jax.process_index()}: "
                         f"{type(e).__name__}: {e}") from e
  log(f"pre-flight ok: {jax.process_count()} process(es), {jax.local_device_count()} local x "
      f"{jax.devices()[0].device_kind} ({jax.device_count()} devices), code {checks['code'][:12]}, "
      f"config {checks['config'][:12]}")
