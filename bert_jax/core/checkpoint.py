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
import numpy as np
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
    """Per-process iterator state; the process count is in the name because a position is only
    meaningful for the same split of the data."""
    return os.path.join(self.directory, "data", str(step),
                        f"of{jax.process_count()}_process_{jax.process_index()}")

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
    return self.restore_from(self.manager, step, state, shardings)

  @staticmethod
  def restore_from(manager, step: int, like_state, shardings):
    """The state at `step`, each array placed in `shardings` (any mesh, any device count)."""
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract(like_state, shardings))))
    return restored["state"]

  def _restore_data(self, step, train_iter):
    prefix = self._data_prefix(step)
    if os.path.exists(prefix + ".index"):
      train_iter.restore(prefix)
      return
    saved = os.listdir(os.path.join(self.directory, "data", str(step))) \
        if os.path.isdir(os.path.join(self.directory, "data", str(step))) else []
    if any(name.endswith(".index") for name in saved):
      self.log(f"WARNING: the data position at step {step} was saved by a different number of processes; "
               f"the model state is restored, the input stream starts afresh")
      return
    raise FileNotFoundError(f"no data-pipeline state at {prefix}")

  def restore_or_init(self, state, shardings, train_iter=None, init=None):
    """The newest readable checkpoint (falling back past broken ones), else init(state), else state.

    `init` is the caller's start from elsewhere (e.g. pretrained params); this module knows no model.
    """
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        restored = self.restore(step, state, shardings)
        if train_iter is not None:
          self._restore_data(step, train_iter)
      except Exception as e:  # a torn or corrupt checkpoint: use an older one
        self.log(f"WARNING: checkpoint at step {step} in {self.directory} could not be restored "
                 f"({type(e).__name__}: {str(e)[:200]}); falling back to an older one")
        continue
      self.log(f"resumed from checkpoint at step {step}")
      return restored
    return init(state) if init is not None else state


def save_params(directory: str, params) -> None:
  """A params-only checkpoint (what `init_checkpoint` and the converters read and write)."""
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.abspath(directory), params, force=True)


def load_params(directory: str):
  """A params-only checkpoint as numpy arrays on the host."""
  with ocp.StandardCheckpointer() as ckptr:
    metadata = ckptr.metadata(os.path.abspath(directory))
    tree = getattr(metadata, "item_metadata", metadata)
    return ckptr.restore(os.path.abspath(directory), _numpy_like(getattr(tree, "tree", tree)))


def latest_step(directory: str):
  """(manager, newest step) of a workdir's checkpoints/ directory; fails naming the steps it has."""
  manager = ocp.CheckpointManager(os.path.abspath(directory))
  return manager, manager.latest_step()


def load_saved_config(manager, step: int) -> dict:
  return manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]


def _numpy_like(metadata_tree):
  return jax.tree_util.tree_map(lambda m: np.zeros(m.shape, m.dtype), metadata_tree,
                                is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype"))


def load_saved_params(manager, step: int):
  """Only the params of a saved train state, as host numpy arrays: no optimizer, model or objective needed."""
  path = os.path.join(str(manager.directory), str(step), "state")
  with ocp.PyTreeCheckpointer() as ckptr:
    metadata = ckptr.metadata(path)
    tree = getattr(metadata, "item_metadata", metadata)
    tree = getattr(tree, "tree", tree)
    target = {"params": _numpy_like(tree["params"])}
    restore_args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
    restored = ckptr.restore(path, args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args,
                                                               partial_restore=True))
  return restored["params"]
