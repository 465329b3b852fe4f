"""Orbax checkpoints of the train state, plus the data-pipeline position, with auto-resume.

Layout under WORKDIR/checkpoints:
  <step>/state, <step>/config     Orbax (async; Orbax only lists a step once it is complete)
  data/<step>/process_<i>.*       each process's tf.data iterator state at that step
Restoring puts every array straight into the shardings of the current run, so a checkpoint from
one mesh or device count restores onto another. If the newest checkpoint cannot be read it is
skipped with a warning and the one before it is used.
"""

import dataclasses
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

  def restore_or_init(self, state, shardings, train_iter=None):
    """The newest readable checkpoint (falling back past broken ones), else init_checkpoint, else state."""
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
    init = self.config.checkpoint.init_checkpoint
    if init:
      from bert_jax import train  # train imports this module
      params = restore_params(init, state.params, shardings.params, train.model_config(self.config))
      self.log(f"initialised params from {init} (fresh optimizer state)")
      return state.replace(params=params)
    return state


def save_params(directory: str, params) -> None:
  """A params-only checkpoint (what `init_checkpoint` and the converters read and write)."""
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.abspath(directory), params, force=True)


def _in_layout_of(params, model_config, directory: str):
  """params in whatever encoder layout they were saved -> model_config's layout, through the HF name table."""
  from bert_jax import convert
  encoder = params.get("encoder", {})
  scanned = "layers" in encoder
  attention = (encoder["layers"]["layer"] if scanned else encoder.get("layer_0", {})).get("attention", {})
  saved_as = dataclasses.replace(model_config, scan_layers=scanned, fused_qkv="qkv" in attention)
  if saved_as == model_config:
    return params
  try:
    return convert.hf_to_params(convert.params_to_hf(params, saved_as), model_config)
  except (KeyError, ValueError) as e:
    raise ValueError(f"init_checkpoint {directory} does not fit this model: {e}") from e


def restore_params(directory: str, like_params, shardings, model_config=None):
  """Params from a params-only checkpoint (bert_jax.convert from_hf/from_tf) or a training workdir's
  latest checkpoint, placed in `shardings`; shapes must match `like_params`.

  With model_config, a checkpoint in another encoder layout (scanned or per-layer, fused or separate
  QKV) is converted to this model's layout first, e.g. `from_hf` output (per-layer) into a scanned run.
  """
  directory = os.path.abspath(directory)
  if os.path.isdir(os.path.join(directory, "checkpoints")):
    from bert_jax import export
    params = export.load_workdir_params(directory)[0]
  else:
    with ocp.StandardCheckpointer() as ckptr:
      params = ckptr.restore(directory)
  expected = jax.tree_util.tree_structure(like_params)
  if jax.tree_util.tree_structure(params) != expected and model_config is not None:
    params = _in_layout_of(params, model_config, directory)
  if jax.tree_util.tree_structure(params) != expected:
    raise ValueError(f"init_checkpoint {directory} has a different parameter tree than this model "
                     f"(scan_layers or num_layers differ?)")
  def place(path, x, like, s):
    if x.shape != like.shape:
      raise ValueError(f"init_checkpoint {directory}: {jax.tree_util.keystr(path)} has shape {x.shape}, "
                       f"this model needs {like.shape}")
    return jax.device_put(np.asarray(x, like.dtype), s)
  return jax.tree_util.tree_map_with_path(place, params, like_params, shardings)
