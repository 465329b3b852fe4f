"""Orbax checkpoints of the train state, plus the data-pipeline position, with auto-resume.

Layout under WORKDIR/checkpoints:
  <step>/state, <step>/config     Orbax (async; Orbax only lists a step once it is complete)
  data/<step>/process_<i>.*       each process's tf.data iterator state at that step
Restoring puts every array straight into the shardings of the current run, so a checkpoint from
one mesh or device count restores onto another. If the newest checkpoint cannot be read it is
skipped with a warning and the one before it is used.
"""

import logging
import os
import shutil

import jax
import orbax.checkpoint as ocp


def _abstract(tree, shardings):
  return jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


class Checkpointer:
  def __init__(self, directory: str, config, log=logging.info):
    self.directory = os.path.abspath(directory)
    self.config = config
    self.log = log
    c = config.checkpoint
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=c.every_steps, max_to_keep=c.keep, keep_period=c.keep_period or None,
        enable_async_checkpointing=c.async_save, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def _data_prefix(self, step: int) -> str:
    return os.path.join(self.directory, "data", str(step), f"process_{jax.process_index()}")

  def save(self, step: int, state, train_iter=None, force: bool = False) -> bool:
    if not force and step % self.config.checkpoint.every_steps:
      return False
    if step in self.manager.all_steps():
      return False
    if train_iter is not None:
      train_iter.save(self._data_prefix(step))
    saved = self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(self.config.to_dict())), force=force)
    self._prune_data_states()
    return saved

  def _prune_data_states(self):
    data_dir = os.path.join(self.directory, "data")
    if jax.process_index() != 0 or not os.path.isdir(data_dir):
      return
    keep = set(self.manager.all_steps())
    for name in os.listdir(data_dir):
      if name.isdigit() and int(name) not in keep and int(name) < max(keep | {0}):
        shutil.rmtree(os.path.join(data_dir, name), ignore_errors=True)

  def wait(self):
    self.manager.wait_until_finished()

  def restore(self, step: int, state, shardings):
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract(state, shardings))))
    return restored["state"]

  def restore_or_init(self, state, shardings, train_iter=None):
    """The newest readable checkpoint (falling back past broken ones), else init_checkpoint, else state."""
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        restored = self.restore(step, state, shardings)
        if train_iter is not None:
          prefix = self._data_prefix(step)
          if not os.path.exists(prefix + ".index"):
            raise FileNotFoundError(f"no data-pipeline state at {prefix}")
          train_iter.restore(prefix)
      except Exception as e:  # a torn or corrupt checkpoint: use an older one
        self.log(f"WARNING: checkpoint at step {step} in {self.directory} could not be restored "
                 f"({type(e).__name__}: {str(e)[:200]}); falling back to an older one")
        continue
      self.log(f"resumed from checkpoint at step {step}")
      return restored
    init = self.config.checkpoint.init_checkpoint
    if init:
      params = restore_params(init, state.params, shardings.params)
      self.log(f"initialised params from {init} (fresh optimizer state)")
      return state.replace(params=params)
    return state


def save_params(directory: str, params) -> None:
  """A params-only checkpoint (what `init_checkpoint` and the converters read and write)."""
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.abspath(directory), params, force=True)


def restore_params(directory: str, like_params, shardings=None):
  """Params from a params-only checkpoint, or from the latest step of a training workdir."""
  directory = os.path.abspath(directory)
  if shardings is None:
    shardings = jax.tree_util.tree_map(lambda x: getattr(x, "sharding", None), like_params)
  abstract = _abstract(like_params, shardings)
  ckpt_dir = os.path.join(directory, "checkpoints")
  if os.path.isdir(ckpt_dir):  # a training workdir: take params out of the latest state
    manager = ocp.CheckpointManager(ckpt_dir)
    step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {ckpt_dir}")
    meta = manager.item_metadata(step)
    target = jax.tree_util.tree_map(lambda x: x, meta["state"]) if meta else None
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        restore_args=None, item=None) if target is None else ocp.args.StandardRestore()))
    return restored["state"]["params"]
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(directory, abstract)
