"""Orbax checkpoints of the train state, plus the data-pipeline position, with auto-resume.

Layout under WORKDIR/checkpoints:
  <step>/state, <step>/config     Orbax (async; Orbax only lists a step once it is complete)
  data/<step>/process_<i>.*       each process's tf.data iterator state at that step
  <step>/data/process_<i>-of-<n>.json   the Grain backend's iterator state, inside the Orbax step: an
                                  iterator with orbax_save_args()/orbax_restore_args() saves there
  damaged/<step>-<time>/          checkpoints found damaged at restore, moved out of the way
Restoring puts every array straight into the shardings of the current run, so a checkpoint from
one mesh or device count restores onto another. A damaged checkpoint (torn write, deleted or
truncated files) is moved to damaged/ with a warning and the one before it is used, so the step is
saved afresh later and readers (convert, fine-tuning) never meet it. A checkpoint whose train state
has another structure (another optimizer, vocabulary, ...) is not damage: it fails naming the difference.
The directory may be in a bucket (gs://): every file operation here goes through epath or core/storage.py.
"""

import contextlib
import gc
import io
import json
import logging
import os
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from bert_jax.core import storage


def _key_name(key) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _shapes_by_path(tree) -> dict:
  """'/'-joined path -> shape for every array leaf; dataclasses, named tuples and Orbax's saved metadata
  (dicts and lists) give the same paths for the same state."""
  leaves = jax.tree_util.tree_leaves_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))
  return {"/".join(_key_name(k) for k in path): tuple(leaf.shape) for path, leaf in leaves}


def structure_difference(saved: dict, expected: dict) -> str | None:
  """A short description of how two path -> shape maps differ; None when they agree."""
  only_saved = sorted(set(saved) - set(expected))
  only_expected = sorted(set(expected) - set(saved))
  reshaped = sorted(p for p in set(saved) & set(expected) if saved[p] is not None and saved[p] != expected[p])
  parts = []
  if only_saved:
    parts.append(f"only in the checkpoint: {only_saved[:4]}")
  if only_expected:
    parts.append(f"only in this run: {only_expected[:4]}")
  if reshaped:
    parts.append("other shapes: " + ", ".join(f"{p} {saved[p]} vs {expected[p]}" for p in reshaped[:4]))
  return "; ".join(parts) or None


class _DropClosedLoopTracebacks(io.TextIOBase):
  """A stderr that drops the 'RuntimeError: Event loop is closed' tracebacks TensorStore's pending reads
  print by the hundred once a restore has failed, and passes everything else through."""

  def __init__(self, inner):
    self.inner, self.dropped, self._block = inner, 0, None

  def write(self, text):
    for line in text.splitlines(keepends=True):
      if self._block is None and line.startswith("Traceback (most recent call last)"):
        self._block = [line]
      elif self._block is not None:
        self._block.append(line)
        if line.strip() and not line[0].isspace():  # the exception line ends a traceback
          if line.startswith("RuntimeError: Event loop is closed"):
            self.dropped += 1
          else:
            self.inner.write("".join(self._block))
          self._block = None
      else:
        self.inner.write(line)
    return len(text)

  def flush(self):
    if self._block is not None:
      self.inner.write("".join(self._block))
      self._block = None
    self.inner.flush()


@contextlib.contextmanager
def quiet_failed_reads():
  """Silences the aftermath of a failed restore: closed-loop tracebacks on stderr, and asyncio's 'Task exception
  was never retrieved' dumps of every other pending read (logged when the tasks are collected, forced here)."""
  inner = sys.stderr
  sys.stderr = quiet = _DropClosedLoopTracebacks(inner)
  asyncio_logger = logging.getLogger("asyncio")
  level = asyncio_logger.level
  asyncio_logger.setLevel(logging.CRITICAL)
  try:
    yield
  finally:
    gc.collect()
    asyncio_logger.setLevel(level)
    quiet.flush()
    sys.stderr = inner


def _failed_processes(ok: bool) -> list:
  """The processes where `ok` is False. A step that one process cannot read (e.g. its own data position) is damaged
  for all of them: a process falling back alone would wait forever in the collectives of the others."""
  if jax.process_count() == 1:
    return [] if ok else [0]
  flags = np.asarray(multihost_utils.process_allgather(np.asarray(ok))).reshape(-1)
  return [i for i, flag in enumerate(flags) if not flag]


def _abstract(tree, shardings):
  return jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


class Checkpointer:
  def __init__(self, directory: str, config, log=logging.info):
    self.directory = storage.absolute(directory)
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

  def due(self, step: int) -> bool:
    """Whether save() writes `step` without force (the save interval)."""
    return step % self.config.checkpoint.every_steps == 0

  def save(self, step: int, state, train_iter=None, force: bool = False) -> bool:
    if not force and not self.due(step):
      return False
    if step in self.manager.all_steps():
      return False
    items = dict(state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(self.config.to_dict()))
    if train_iter is not None and hasattr(train_iter, "orbax_save_args"):
      items["data"] = train_iter.orbax_save_args()
    elif train_iter is not None:
      # staged: every bucket write of a run goes through one client (epath), the one the tests serve
      with storage.staged_write(self._data_prefix(step)) as prefix:
        train_iter.save(prefix)
    saved = self.manager.save(step, args=ocp.args.Composite(**items), force=force)
    self._prune_data_states()
    return saved

  def _prune_data_states(self):
    data_dir = epath.Path(self.directory, "data")
    if jax.process_index() != 0 or not data_dir.is_dir():
      return
    keep = set(self.manager.all_steps())
    for path in data_dir.iterdir():
      if path.name.isdigit() and int(path.name) not in keep and int(path.name) < max(keep | {0}):
        try:
          path.rmtree()
        except OSError as e:  # e.g. NFS's .nfs* files of a still-open file: a later save prunes it again
          if not isinstance(e, FileNotFoundError):
            self.log(f"WARNING: could not delete the old data position {path}: {type(e).__name__}: {e}")

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

  def _restore_orbax_data(self, step, train_iter):
    """An iterator whose position is an Orbax item of the step (the Grain backend)."""
    item = epath.Path(self.directory, str(step), "data")
    if (item / f"process_{jax.process_index()}-of-{jax.process_count()}.json").is_file():
      self.manager.restore(step, args=ocp.args.Composite(data=train_iter.orbax_restore_args()))
      if train_iter.changed_since_saved:
        self.log(f"WARNING: the data position at step {step} was saved under other data settings "
                 f"({train_iter.changed_since_saved}); the model state is restored and the input stream goes on "
                 f"from the same example count in this run's stream, which is not where the saved run stopped")
      return
    if item.is_dir() or epath.Path(self.directory, "data", str(step)).is_dir():
      self.log(f"WARNING: the data position at step {step} was saved by another number of processes or another "
               f"input backend (data.backend); the model state is restored, the input stream starts afresh")
      return
    raise FileNotFoundError(f"no data-pipeline state in {item}")

  def _restore_data(self, step, train_iter):
    if hasattr(train_iter, "orbax_restore_args"):
      self._restore_orbax_data(step, train_iter)
      return
    if epath.Path(self.directory, str(step), "data").is_dir():
      self.log(f"WARNING: the data position at step {step} was saved by the grain input backend; the model state "
               f"is restored, the tf.data input stream starts afresh")
      return
    prefix = self._data_prefix(step)
    if epath.Path(prefix + ".index").exists():
      # Another data setting is not damage: the model state is good, only the input stream cannot continue.
      with storage.staged_read(prefix) as local_prefix:
        changed = train_iter.restore(local_prefix)
      if changed:
        self.log(f"WARNING: the data position at step {step} does not fit this run's input pipeline: {changed}; "
                 f"the model state is restored, the input stream starts afresh")
      return
    saved = epath.Path(self.directory, "data", str(step))
    if saved.is_dir() and any(path.name.endswith(".index") for path in saved.iterdir()):
      self.log(f"WARNING: the data position at step {step} was saved by a different number of processes; "
               f"the model state is restored, the input stream starts afresh")
      return
    raise FileNotFoundError(f"no data-pipeline state at {prefix}")

  def saved_structure(self, step: int) -> dict:
    """Path -> shape (None where unreadable) of the train state saved at `step`. Paths come from the
    checkpoint's _METADATA, so a missing or torn one raises (damage) instead of reading as another structure."""
    path = os.path.join(self.directory, str(step), "state")
    tree_metadata = json.loads(epath.Path(path, "_METADATA").read_text())["tree_metadata"].values()
    paths = ["/".join(str(k["key"]) for k in entry["key_metadata"]) for entry in tree_metadata
             if not entry["value_metadata"].get("skip_deserialize")]  # empty optimizer states
    try:
      shapes = _shapes_by_path(_saved_tree(path))
    except Exception:  # unreadable array metadata: compare paths only; a restore will tell damage
      shapes = {}
    return {p: shapes.get(p) for p in paths}

  def _quarantine(self, step: int) -> str:
    """Moves a damaged step (and its data position) to damaged/, so that it is saved afresh and never read."""
    target = os.path.join(self.directory, "damaged", f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
    if jax.process_index() == 0:
      storage.move_tree(os.path.join(self.directory, str(step)), os.path.join(target, "checkpoint"))
      data = os.path.join(self.directory, "data", str(step))
      if epath.Path(data).is_dir():
        storage.move_tree(data, os.path.join(target, "data"))
    ocp.multihost.sync_global_processes(f"bert_jax_quarantine_{step}")
    self.manager.reload()
    return target

  def restore_or_init(self, state, shardings, train_iter=None, init=None):
    """The newest readable checkpoint (moving damaged ones aside), else init(state), else state.

    `init` is the caller's start from elsewhere (e.g. pretrained params); this module knows no model.
    """
    expected = _shapes_by_path(state)
    for step in sorted(self.manager.all_steps(), reverse=True):
      with quiet_failed_reads():
        try:
          difference = structure_difference(self.saved_structure(step), expected)
          if difference is None:
            restored = self.restore(step, state, shardings)
            if train_iter is not None:
              self._restore_data(step, train_iter)
        except Exception as e:  # unreadable metadata or arrays: a torn or corrupt checkpoint
          reason = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
          difference, restored = None, None
      if difference is not None:
        raise ValueError(f"the checkpoint at step {step} in {self.directory} holds a train state of another "
                         f"structure than this run builds ({difference}); was it written with other model or "
                         f"optimizer settings? Use another workdir, or the settings it was trained with")
      failed = _failed_processes(restored is not None)
      if failed:
        if restored is not None:
          reason = f"process(es) {failed} could not read it"
        moved = self._quarantine(step)
        self.log(f"WARNING: checkpoint at step {step} in {self.directory} is damaged ({reason}); moved it to "
                 f"{moved} and falling back to an older one")
        continue
      self.log(f"resumed from checkpoint at step {step}")
      return restored
    return init(state) if init is not None else state


def save_params(directory: str, params) -> None:
  """A params-only checkpoint (what `init_checkpoint` and the converters read and write)."""
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(storage.absolute(directory), params, force=True)


def load_params(directory: str):
  """A params-only checkpoint as numpy arrays on the host."""
  with ocp.StandardCheckpointer() as ckptr:
    metadata = ckptr.metadata(storage.absolute(directory))
    tree = getattr(metadata, "item_metadata", metadata)
    return ckptr.restore(storage.absolute(directory), _numpy_like(getattr(tree, "tree", tree)))


def latest_step(directory: str):
  """(manager, newest step) of a workdir's checkpoints/ directory (None: no step). Only reads: a mistyped path
  must not be left behind as an empty checkpoints/ that later reads as a run that never saved."""
  manager = ocp.CheckpointManager(storage.absolute(directory), options=ocp.CheckpointManagerOptions(create=False))
  return manager, manager.latest_step()


def load_saved_config(manager, step: int) -> dict:
  return manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]


def newest_saved_config(manager) -> dict | None:
  """The run config of the newest step whose config reads (a damaged newest step is skipped); None if none."""
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      return load_saved_config(manager, step)
    except Exception:  # torn write; restore_or_init moves the step aside
      continue
  return None


def _numpy_like(metadata_tree):
  return jax.tree_util.tree_map(lambda m: np.zeros(m.shape, m.dtype), metadata_tree,
                                is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype"))


def _saved_tree(path: str):
  """The metadata tree (leaves with shape and dtype) of a saved pytree."""
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)  # reading one item of a step warns that the step's own metadata is elsewhere
  try:
    with ocp.PyTreeCheckpointer() as ckptr:
      metadata = ckptr.metadata(path)
  finally:
    absl_logger.setLevel(level)
  tree = getattr(metadata, "item_metadata", metadata)
  return getattr(tree, "tree", tree)


def load_saved_params(manager, step: int):
  """Only the params of a saved train state, as host numpy arrays: no optimizer, model or objective needed."""
  path = os.path.join(str(manager.directory), str(step), "state")
  tree = _saved_tree(path)
  with ocp.PyTreeCheckpointer() as ckptr:
    target = {"params": _numpy_like(tree["params"])}
    restore_args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
    restored = ckptr.restore(path, args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args,
                                                               partial_restore=True))
  return restored["params"]
