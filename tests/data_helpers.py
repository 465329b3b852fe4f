"""Shared helpers for data tests: an independent writer of google-research/bert records, the pydocs corpus
in memory, and readers of instance features."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf

from bert_jax.core import checkpoint, configlib

GOOGLE_SPEC_LENGTHS = dict(input_ids="seq", input_mask="seq", segment_ids="seq", masked_lm_positions="pred",
                           masked_lm_ids="pred", masked_lm_weights="pred", next_sentence_labels=1)


def write_google_style_records(path, num, seq=32, pred=5, start=0, seed=0, weight=1.0):
  """Writes `num` records with tf.train.Example directly; input_ids[1] holds a unique example id."""
  rng = np.random.default_rng(seed)
  with tf.io.TFRecordWriter(path) as w:
    for i in range(start, start + num):
      length = int(rng.integers(10, seq + 1))
      ids = np.zeros(seq, np.int64)
      ids[:length] = rng.integers(10, 100, length)
      ids[0], ids[1], ids[length - 1] = 2, 1000 + i, 3
      mask = (np.arange(seq) < length).astype(np.int64)
      positions = np.zeros(pred, np.int64)
      positions[:2] = [2, 3]
      feature = {
          "input_ids": tf.train.Feature(int64_list=tf.train.Int64List(value=ids)),
          "input_mask": tf.train.Feature(int64_list=tf.train.Int64List(value=mask)),
          "segment_ids": tf.train.Feature(int64_list=tf.train.Int64List(value=np.zeros(seq, np.int64))),
          "masked_lm_positions": tf.train.Feature(int64_list=tf.train.Int64List(value=positions)),
          "masked_lm_ids": tf.train.Feature(int64_list=tf.train.Int64List(value=[11, 12] + [0] * (pred - 2))),
          "masked_lm_weights": tf.train.Feature(float_list=tf.train.FloatList(value=[weight, weight] + [0.0] * (pred - 2))),
          "next_sentence_labels": tf.train.Feature(int64_list=tf.train.Int64List(value=[i % 2])),
      }
      w.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())


@functools.lru_cache(maxsize=1)
def pydocs_docs() -> tuple:
  """The offline pydocs corpus (real prose from Python's docs), built once per test process (~3 s)."""
  from bert_jax.data import corpora
  return tuple(tuple(doc) for doc in corpora.pydocs_documents())


class ListCorpus:
  """A corpus over documents already in memory (what train_* and prepare read)."""

  def __init__(self, docs):
    self.docs = [list(d) for d in docs]
    self.progress_unit, self.progress_key = "doc", "documents_read"

  def progress_total(self):
    return len(self.docs)

  def iter_documents(self, stats):
    for doc in self.docs:
      stats["documents_read"] += 1
      yield doc


def restore_originals(features: dict, row: int) -> np.ndarray:
  """Row `row`'s real tokens with the masked positions put back from masked_lm_ids."""
  ids = features["input_ids"][row].copy()
  real = features["masked_lm_weights"][row] > 0
  ids[features["masked_lm_positions"][row][real]] = features["masked_lm_ids"][row][real]
  return ids[:int(features["input_mask"][row].sum())]


def masked_run_lengths(features: dict) -> np.ndarray:
  """Lengths of the maximal runs of consecutive masked positions, over all rows (touching spans merge)."""
  out = []
  for row in range(len(features["input_ids"])):
    pos = np.sort(features["masked_lm_positions"][row][features["masked_lm_weights"][row] > 0])
    if len(pos):
      breaks = np.flatnonzero(np.diff(pos) != 1)
      out.append(np.diff(np.concatenate([[-1], breaks, [len(pos) - 1]])))
  return np.concatenate(out)


class PositionCheckpoints:
  """A step counter and an input iterator's position checkpointed in `directory` (the tiny config, synchronous
  saves every 2 steps), as the trainers do; `logged` collects the Checkpointer's lines."""

  def __init__(self, directory):
    self.directory, self.logged = str(directory), []
    self.config = configlib.load("tiny", {"checkpoint.every_steps": 2, "checkpoint.async_save": False})

  def _checkpointer(self):
    return checkpoint.Checkpointer(self.directory, self.config, log=self.logged.append)

  def save(self, iterator, steps: int) -> None:
    """Reads `steps` batches, saving the position after each step the interval asks for."""
    ckpt = self._checkpointer()
    for step in range(1, steps + 1):
      next(iterator)
      ckpt.save(step, {"step": jnp.asarray(step, jnp.int32)}, iterator)
    ckpt.wait()

  def restore(self, iterator) -> int:
    """Restores the newest step into `iterator`; returns the step."""
    shardings = {"step": jax.sharding.SingleDeviceSharding(jax.devices()[0])}
    state = self._checkpointer().restore_or_init({"step": jnp.zeros((), jnp.int32)}, shardings, iterator)
    return int(state["step"])

  def warnings(self) -> list[str]:
    return [line for line in self.logged if "WARNING" in line]

