"""One live run per gs:// workdir: a lease on the object WORKDIR/.lock, renewed while the run lives.

A bucket has no flock. Instead the run creates .lock only if no such object exists (a generation precondition,
atomic on the server), and a thread rewrites it every RENEW_SECONDS, each time only if it is still the run's own
version. A run that dies stops renewing: once its lease is EXPIRE_SECONDS old, the next run takes it over (again
only if nobody renewed it in between). A new run that finds a lease younger than that waits for it to expire,
saying so, and is refused if the holder renews it meanwhile: a restarted job gets on after a crash, a second job
beside a live one does not. A lease's age is the server's update time against this host's clock (cloud VMs keep
theirs synchronised; a skew counts against EXPIRE_SECONDS), and a waiting run also watches for renewals itself.
"""

import datetime
import os
import socket
import threading
import time

RENEW_SECONDS = 30.0
EXPIRE_SECONDS = 120.0  # four missed renewals
POLL_SECONDS = 5.0


class LeaseBusyError(RuntimeError):
  """A live run renews the lease."""


def _bucket_and_name(path: str) -> tuple[str, str]:
  bucket, _, name = path.removeprefix("gs://").partition("/")
  return bucket, name


class BucketLease:
  """The lease on `path` (gs://BUCKET/.../.lock) while held; release() deletes it, if it is still ours."""

  def __init__(self, path: str, log=print):
    # an optional dependency (the gcs extra), imported where a bucket workdir is used
    from google.api_core import exceptions
    from google.cloud import storage
    self.path, self.log, self._errors = path, log, exceptions
    bucket, name = _bucket_and_name(path)
    self._client = storage.Client()
    self._blob = self._client.bucket(bucket).blob(name)
    self._generation, self._stop = None, threading.Event()
    self._thread = None

  def _text(self) -> str:
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    return f"pid {os.getpid()}\nhost {socket.gethostname()}\nrenewed {now}\n"

  def _write(self, if_generation_match) -> bool:
    """Writes the lease if the object is at that generation (0: absent); whether it was."""
    try:
      self._blob.upload_from_string(self._text(), if_generation_match=if_generation_match)
    except self._errors.PreconditionFailed:
      return False
    self._generation = self._blob.generation
    return True

  def _holder(self):
    """(text, age in seconds, generation) of the current lease; None when there is none."""
    blob = self._blob.bucket.get_blob(self._blob.name)
    if blob is None:
      return None
    age = (datetime.datetime.now(datetime.timezone.utc) - blob.updated).total_seconds()
    return blob.download_as_text(), age, blob.generation

  def acquire(self) -> None:
    """Takes the lease, waiting for an expired run's; raises LeaseBusyError while a live run renews it."""
    waited_for = None
    while not self._write(if_generation_match=0):
      holder = self._holder()
      if holder is None:
        continue  # released meanwhile
      text, age, generation = holder
      if waited_for is not None and generation != waited_for:
        raise LeaseBusyError(f"{_describe(text)} renewed {self.path} while this run waited for it to expire: "
                             f"that run is alive")
      if age >= EXPIRE_SECONDS:
        if self._write(if_generation_match=generation):
          self.log(f"took over {self.path} from {_describe(text)}, not renewed for {age:.0f} s (a run that died)")
          break
        continue
      if waited_for is None:
        self.log(f"workdir lock {self.path} is held by {_describe(text)}, renewed {age:.0f} s ago; waiting up to "
                 f"{EXPIRE_SECONDS - age:.0f} s for it to expire (a live run renews it every {RENEW_SECONDS:.0f} s)")
        waited_for = generation
      time.sleep(min(POLL_SECONDS, max(EXPIRE_SECONDS - age, 0.1)))
    self._thread = threading.Thread(target=self._renew, name="bucket-lock-renewal", daemon=True)
    self._thread.start()

  def _renew(self) -> None:
    while not self._stop.wait(RENEW_SECONDS):
      try:
        if not self._write(if_generation_match=self._generation):
          self.log(f"WARNING: {self.path} was taken over by another run (this run did not renew it for "
                   f"{EXPIRE_SECONDS:.0f} s); the two runs now write the same workdir. Stop one of them")
          return
      except Exception as e:  # noqa: BLE001  (a network blip: the next renewal tries again)
        self.log(f"WARNING: could not renew {self.path}: {type(e).__name__}: {e}")

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None
    if self._generation is not None:
      try:
        self._blob.delete(if_generation_match=self._generation)
      except (self._errors.PreconditionFailed, self._errors.NotFound):
        pass  # another run's lease by now: not ours to delete
      self._generation = None


def _describe(text: str) -> str:
  fields = dict(line.split(" ", 1) for line in text.splitlines() if " " in line)
  return f"pid {fields.get('pid', '?')} on {fields.get('host', '?')}"
