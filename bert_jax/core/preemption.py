"""SIGTERM as a request to save at the next step boundary and exit cleanly (what schedulers send before a kill).

  with preemption.Preemption() as preempted:
    while ...:
      step ...
      if preempted.requested_anywhere(): save, return

The previous handler comes back when the block ends, so a run inside a longer-lived process (a test runner,
a notebook) leaves that process's SIGTERM handling as it was.
"""

import signal

import jax
import numpy as np
from jax.experimental import multihost_utils


class Preemption:
  def __init__(self):
    self.requested = False
    self._previous = None

  def requested_anywhere(self) -> bool:
    """Whether any process got SIGTERM. Every process must call this at the same steps: the save that follows is
    collective, and a process entering it alone waits forever for the others (a scheduler's SIGTERM reaches the
    processes at different steps, or only some of them). One process: no communication; several: one tiny
    all-gather, which waits for the step before it."""
    if jax.process_count() == 1:
      return self.requested
    return bool(np.any(multihost_utils.process_allgather(np.asarray(self.requested))))

  def _handler(self, signum, frame):
    del signum, frame
    self.requested = True

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handler)
    except ValueError:  # not the main thread: signals go to the main thread's handler, so none to install
      self._previous = None
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
    return False
