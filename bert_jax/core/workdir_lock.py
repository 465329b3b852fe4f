"""One live run per workdir: an exclusive flock on WORKDIR/.lock, held open for the whole run.

Two runs writing one workdir break each other (one's Orbax tmp directory vanishes under the other, metrics.jsonl
gets interleaved lines), so a second run is refused at start, naming the holder's pid and host. The OS drops an
flock when its process dies, SIGKILL included: a killed run never blocks the next one, and the .lock file left
behind means nothing by itself. Only process 0 of a multi-process run takes the lock (the others write through
it). A bucket workdir (gs://) holds a renewed lease instead (core/bucket_lock.py); a filesystem that cannot flock
(some network mounts) goes without a lock, with a log line saying so.
"""

import contextlib
import datetime
import errno
import fcntl
import os
import socket

import jax
import numpy as np
from jax.experimental import multihost_utils

from bert_jax.core import bucket_lock, storage

LOCK_NAME = ".lock"
_BUSY = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)


class WorkdirBusyError(RuntimeError):
  """Another live run holds the workdir."""


def _holder(fd: int) -> str:
  """'pid N on HOST (started T)' from the lock file, as the holding run wrote it."""
  text = os.pread(fd, 4096, 0).decode(errors="replace")
  fields = dict(line.split(" ", 1) for line in text.splitlines() if " " in line)
  if "pid" not in fields:
    return "a run that has not written its pid yet"
  return f"pid {fields['pid']} on {fields.get('host', '?')} (started {fields.get('started', '?')})"


class WorkdirLock:
  """The held lock; release() or the end of the process frees it."""

  def __init__(self, workdir: str, fd: int):
    self.workdir, self.path, self._fd = workdir, os.path.join(workdir, LOCK_NAME), fd

  def check(self) -> None:
    """Nothing: an flock stays held until released (a bucket lease can be lost: bucket_lock)."""

  def release(self) -> None:
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None


def acquire(workdir: str, log=print) -> WorkdirLock | bucket_lock.BucketLease | None:
  """Takes WORKDIR/.lock or raises WorkdirBusyError naming the holder; None where no lock is possible."""
  if storage.scheme(workdir) == "gs":
    lease = bucket_lock.BucketLease(f"{workdir.rstrip('/')}/{LOCK_NAME}", log)
    try:
      lease.acquire()
    except bucket_lock.LeaseBusyError as e:
      raise WorkdirBusyError(f"workdir {workdir} is in use by another run: {e}. Two runs on one workdir overwrite "
                             f"each other's checkpoints and metrics. Stop that run, or pass another --workdir "
                             f"(a killed run's lock expires {bucket_lock.EXPIRE_SECONDS:.0f} s after its last "
                             f"renewal; a run started then takes it over)") from None
    return lease
  if storage.is_remote(workdir):
    log(f"workdir {workdir} is not on a local filesystem: not locked against a second run (flock cannot lock it)")
    return None
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_NAME)
  fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    holder = _holder(fd) if e.errno in _BUSY else ""
    os.close(fd)
    if not holder:  # e.g. ENOLCK/ENOSYS on a filesystem without flock: run, but say it is unprotected
      log(f"workdir {workdir}: cannot flock {path} ({e.strerror}); not locked against a second run")
      return None
    raise WorkdirBusyError(
        f"workdir {workdir} is in use by another run: {holder} holds {path}. Two runs on one workdir overwrite "
        f"each other's checkpoints and metrics. Wait for that run to end or stop it, or pass another --workdir "
        f"(a killed run frees the lock with its process; there is nothing to delete)") from None
  started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
  os.ftruncate(fd, 0)
  os.pwrite(fd, f"pid {os.getpid()}\nhost {socket.gethostname()}\nstarted {started}\n".encode(), 0)
  return WorkdirLock(workdir, fd)


@contextlib.contextmanager
def hold(workdir: str, log=print):
  """Holds the workdir for the with-block (process 0 takes the lock); if another run has it, every process
  raises WorkdirBusyError, so none waits on a process that stopped."""
  lock, error = None, None
  if jax.process_index() == 0:
    try:
      lock = acquire(workdir, log)
    except Exception as e:  # noqa: BLE001  (re-raised below, after the other processes have heard)
      error = e
  if jax.process_count() > 1:
    failed = bool(multihost_utils.broadcast_one_to_all(np.int32(error is not None)))
    if failed and error is None:
      error = WorkdirBusyError(f"workdir {workdir}: process 0 could not take its lock (see process 0's error)")
  if error is not None:
    raise error
  try:
    yield lock
  finally:
    if lock is not None:
      lock.release()
