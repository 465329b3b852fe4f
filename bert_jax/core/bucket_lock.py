"""One live run per gs:// workdir: a lease on the object WORKDIR/.lock, renewed while the run lives.

A bucket has no flock. Instead the run creates .lock only if no such object exists (a generation precondition,
atomic on the server), and a thread rewrites it every RENEW_SECONDS, each time only if it is still the run's own
version. A new run that finds a lease watches it: if the holder renews it, the new run is refused (a live run);
if it stays unchanged for EXPIRE_SECONDS, the holder has died and the new run takes the lease over (again only if
nobody renewed it meanwhile). So a restarted job gets on after a crash, and a second job beside a live one does
not. Only this host's monotonic clock is used: no two hosts' clocks are compared.
"""

import datetime
import os
import socket
import threading
import time
import uuid

RENEW_SECONDS = 30.0
EXPIRE_SECONDS = 120.0  # four missed renewals
POLL_SECONDS = 5.0
REQUEST_SECONDS = 10.0  # one request's timeout


class LeaseBusyError(RuntimeError):
  """A live run renews the lease."""


class LeaseLostError(RuntimeError):
  """Another run took this run's lease over."""


def _bucket_and_name(path: str) -> tuple[str, str]:
  bucket, _, name = path.removeprefix("gs://").partition("/")
  return bucket, name


class BucketLease:
  """The lease on `path` (gs://BUCKET/.../.lock) while held; release() deletes it, if it is still ours."""

  def __init__(self, path: str, log=print):
    # an optional dependency (the gcs extra), imported where a bucket workdir is used
    from google.api_core import exceptions
    from google.cloud import storage
    from google.cloud.storage import retry
    self.path, self.log, self._errors = path, log, exceptions
    bucket, name = _bucket_and_name(path)
    self._client = storage.Client(project=None)  # object requests need no project: none is looked up
    self._blob = self._client.bucket(bucket).blob(name)
    # a renewal that cannot get through within a renewal interval gives up: the next one tries afresh, well
    # before the lease could expire
    self._retry = retry.DEFAULT_RETRY.with_timeout(RENEW_SECONDS)
    self._token = uuid.uuid4().hex  # tells this lease from another run's, whatever a retried write answered
    self._generation, self._stop = None, threading.Event()
    self._thread, self._lost = None, None

  def _text(self) -> str:
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    return f"pid {os.getpid()}\nhost {socket.gethostname()}\nrenewed {now}\ntoken {self._token}\n"

  def _write(self, if_generation_match) -> bool:
    """Writes the lease if the object is at that generation (0: absent); whether the lease is now ours."""
    try:
      self._blob.upload_from_string(self._text(), if_generation_match=if_generation_match, retry=self._retry,
                                    timeout=REQUEST_SECONDS)
    except self._errors.PreconditionFailed:
      # a retry of a write that did reach the server fails its own precondition: the lease may be ours after all
      holder = self._holder()
      if holder is None or f"token {self._token}" not in holder[0]:
        return False
      self._generation = holder[1]
      return True
    self._generation = self._blob.generation
    return True

  def _holder(self):
    """(text, generation) of the current lease; None when there is none."""
    blob = self._blob.bucket.get_blob(self._blob.name)
    if blob is None:
      return None
    try:
      return blob.download_as_text(if_generation_match=blob.generation), blob.generation
    except (self._errors.PreconditionFailed, self._errors.NotFound):
      return self._holder()  # renewed or released between the two requests

  def acquire(self) -> None:
    """Takes the lease, waiting for a dead run's to expire; raises LeaseBusyError when a live run renews it."""
    watched, watched_since = None, None
    while not self._write(if_generation_match=0):
      holder = self._holder()
      if holder is None:
        continue  # released meanwhile
      text, generation = holder
      if watched is None:
        self.log(f"workdir lock {self.path} is held by {_describe(text)}; waiting up to {EXPIRE_SECONDS:.0f} s "
                 f"for it to expire (a live run renews it every {RENEW_SECONDS:.0f} s; then this run is refused)")
        watched, watched_since = generation, time.monotonic()
      elif generation != watched:
        raise LeaseBusyError(f"{_describe(text)} renewed {self.path} while this run waited for it to expire: "
                             f"that run is alive")
      elif time.monotonic() - watched_since >= EXPIRE_SECONDS:
        if self._write(if_generation_match=generation):
          self.log(f"took over {self.path} from {_describe(text)}, not renewed for "
                   f"{time.monotonic() - watched_since:.0f} s (a run that died)")
          break
        continue  # renewed just now: the next round refuses
      time.sleep(POLL_SECONDS)
    self._thread = threading.Thread(target=self._renew, name="bucket-lock-renewal", daemon=True)
    self._thread.start()

  def _renew(self) -> None:
    while not self._stop.wait(RENEW_SECONDS):
      try:
        if not self._write(if_generation_match=self._generation):
          self._lost = (f"{self.path} was taken over by another run (this run could not renew it for "
                        f"{EXPIRE_SECONDS:.0f} s)")
          self.log(f"WARNING: {self._lost}; the two runs now write the same workdir. This run stops at its next "
                   f"checkpoint; stop one of them sooner if you can")
          return
      except Exception as e:  # noqa: BLE001  (a network blip: the next renewal tries again)
        self.log(f"WARNING: could not renew {self.path}: {type(e).__name__}: {e}")

  def check(self) -> None:
    """Raises LeaseLostError once another run has taken the lease over (the trainer asks before each save)."""
    if self._lost:
      raise LeaseLostError(f"{self._lost}: stopped before saving, so that the two runs do not overwrite each "
                           f"other's checkpoints. The other run goes on; resume this one in another workdir if it "
                           f"should too")

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
