"""SIGTERM as a request to save at a step boundary and exit cleanly (what schedulers send before a kill).

  with preemption.Preemption(start_step) as preempted:
    while ...:
      step ...; step += 1
      if preempted.requested_anywhere(step): save, return

One process: a Python SIGTERM handler sets a flag, read at the next step with no communication. The previous
handler comes back when the block ends, so a run inside a longer-lived process (a test runner, a notebook) leaves
that process's SIGTERM handling as it was.

Several processes: JAX's preemption sync manager, which jax.distributed.initialize starts together with its own
SIGTERM handler (so no Python handler is installed here: it would replace JAX's). A SIGTERM to any process reaches
the others through the coordination service, which sets the save step to one past the furthest process's last
checked step; until a notice arrives each check is local, so the host keeps running ahead of the device.
A SIGTERM before the block of a resumed run (during restore or compilation) sets a step the run has already passed
and is not acted on: the processes run until they are killed and the next run resumes from the last checkpoint.
"""

import signal

import jax
from jax.experimental import multihost_utils


class Preemption:
  def __init__(self, start_step: int):
    self.start_step = start_step
    self.requested = False
    self._previous = None
    self._synced = False

  def requested_anywhere(self, step: int) -> bool:
    """Whether to save at `step` and stop: True at the same step on every process, so that they enter the
    collective save together (a scheduler's SIGTERM reaches the processes at different steps, or only some of
    them; a process entering the save alone waits forever for the others). Every process must call this after each
    step, with the step count going up by one from start_step."""
    if self._synced and not self.requested:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def _handler(self, signum, frame):
    del signum, frame
    self.requested = True

  def _start_sync(self):
    if not jax.distributed.is_initialized():
      raise RuntimeError(f"{jax.process_count()} processes but jax.distributed is not initialized, so a SIGTERM "
                         f"cannot be agreed on: call jax.distributed.initialize() before training (bert_jax.train "
                         f"does it from JAX_COORDINATOR_ADDRESS, SLURM or TPU pod settings)")
    try:
      # Registers the start step: a notice from now on sets a save step after it.
      self.requested = multihost_utils.reached_preemption_sync_point(self.start_step)
    except RuntimeError as e:
      raise RuntimeError(f"JAX's preemption service is off (jax_enable_preemption_service, or the environment "
                         f"variable JAX_ENABLE_PREEMPTION_SERVICE): a run of {jax.process_count()} processes needs it "
                         f"to save all of them at one step on SIGTERM; leave it on (the default)") from e
    self._synced = True

  def __enter__(self):
    if jax.process_count() > 1:
      self._start_sync()
      return self
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handler)
    except ValueError:  # not the main thread: signals go to the main thread's handler, so none to install
      self._previous = None
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
    return False
