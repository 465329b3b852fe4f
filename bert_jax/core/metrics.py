"""Training metrics: peak FLOP/s for MFU, the log writers (console, metrics.jsonl, TensorBoard) and profiler traces.

FLOPs per sequence come from the objective (objectives/*.py), which knows every model its step runs.
TensorBoard event files are written with tensorboardX, which needs no TensorFlow (the same scalar events
tf.summary writes; TensorBoard reads them as before).
"""

import importlib
import json
import os
import shutil
import sys
import tempfile
import time

import jax
from etils import epath

from bert_jax.core import storage


def _import_tensorboardx_without_torch():
  """tensorboardX imports torch when it is installed (about a second per training process) only so that it
  can accept torch tensors; we write Python floats. A None entry in sys.modules makes that import fail, which
  tensorboardX handles; the entry is removed again so that a later `import torch` works as usual."""
  if "torch" in sys.modules:
    return importlib.import_module("tensorboardX")
  sys.modules["torch"] = None
  try:
    return importlib.import_module("tensorboardX")
  finally:
    del sys.modules["torch"]


tensorboardX = _import_tensorboardx_without_torch()

# Dense bf16 peak FLOP/s per chip (per GPU), from the vendors' spec sheets.
PEAK_BF16_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,   # v5e
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,   # v6e (Trillium)
    "TPU v6e": 918e12,
    "A100": 312e12,
    "H100": 989e12,          # SXM ("NVIDIA H100 80GB HBM3")
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H200": 989e12,          # SXM; GH200 too
    "H200 NVL": 835e12,
}


def peak_flops_per_device(device_kind: str, override: float = 0.0) -> float | None:
  """Peak bf16 FLOP/s for a jax device_kind, or None where unknown (e.g. CPU) and not overridden."""
  if override:
    return float(override)
  for name in sorted(PEAK_BF16_FLOPS, key=len, reverse=True):
    if name.lower() in device_kind.lower():
      return PEAK_BF16_FLOPS[name]
  return None


class _LocalLines:
  """metrics.jsonl on a local disk: appended to, each line on disk once written."""

  def __init__(self, path: str):
    self.path = path
    self._file = open(path, "a")

  def read(self) -> list:
    with open(self.path) as f:
      return f.readlines()

  def replace(self, lines: list) -> None:
    self._file.close()
    with open(self.path + ".tmp", "w") as f:
      f.writelines(lines)
    os.replace(self.path + ".tmp", self.path)
    self._file = open(self.path, "a")

  def append(self, line: str) -> None:
    self._file.write(line)
    self._file.flush()

  def flush(self) -> None:
    pass

  def close(self) -> None:
    self._file.close()


class _BucketLines:
  """metrics.jsonl in a bucket, whose objects cannot be appended to: the lines are kept here, and flush()
  rewrites the object with all of them."""

  def __init__(self, path: str):
    self.path = epath.Path(path)
    self._lines = self.path.read_text().splitlines(keepends=True) if self.path.exists() else []
    self._unflushed = False

  def read(self) -> list:
    return list(self._lines)

  def replace(self, lines: list) -> None:
    self._lines, self._unflushed = list(lines), True
    self.flush()

  def append(self, line: str) -> None:
    self._lines.append(line)
    self._unflushed = True

  def flush(self) -> None:
    if self._unflushed:
      self.path.write_text("".join(self._lines))
      self._unflushed = False

  def close(self) -> None:
    self.flush()


class MetricsWriter:
  """Process 0 writes WORKDIR/metrics.jsonl and TensorBoard events; other processes write nothing.

  In a bucket (gs://...), whose objects cannot be appended to, both are kept locally and copied up whole every
  BUCKET_FLUSH_SECONDS while lines come in, and at each flush() (a checkpoint) and close()."""

  BUCKET_FLUSH_SECONDS = 30.0

  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    self._remote = storage.is_remote(workdir)
    self._jsonl = self._tb = self._tb_stage = None
    if self.enabled:
      epath.Path(workdir).mkdir(parents=True, exist_ok=True)
      jsonl = os.path.join(workdir, "metrics.jsonl")
      self._jsonl = _BucketLines(jsonl) if self._remote else _LocalLines(jsonl)
      self._tb_dir = os.path.join(workdir, "tensorboard")  # its writer opens at the first write or resume_from
      if self._remote:  # tensorboardX writes its event file here; flush() copies it up
        self._tb_stage = tempfile.mkdtemp(prefix="bert_jax_tensorboard_")
      self._flushed_at = time.monotonic()

  def _open_tb(self, purge_step=None):
    if self._tb is None:
      self._tb = tensorboardX.SummaryWriter(self._tb_stage or self._tb_dir, flush_secs=30, purge_step=purge_step)
    return self._tb

  def resume_from(self, step: int) -> int:
    """At the start of a run from `step` (0: a fresh start): drops metrics.jsonl lines past it (written after
    that checkpoint, and about to be written again) and a torn last line, and tells TensorBoard to discard the
    earlier attempt's events past it (a purge marker); returns how many jsonl lines were dropped."""
    if not self.enabled:
      return 0
    self._open_tb(purge_step=step + 1 if step else 0)
    lines = self._jsonl.read()
    kept = [line for line in lines if step > 0 and _line_step(line) is not None and _line_step(line) <= step]
    if len(kept) != len(lines):
      self._jsonl.replace([line if line.endswith("\n") else line + "\n" for line in kept])
    return len(lines) - len(kept)

  def write(self, record: dict) -> None:
    if not self.enabled:
      return
    self._jsonl.append(json.dumps(record) + "\n")
    prefix = "eval/" if record.get("split") == "eval" else "train/"
    for k, v in record.items():
      if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step":
        self._open_tb().add_scalar(prefix + k, v, global_step=int(record["step"]))
    if not self._remote:
      self._open_tb().flush()
    elif time.monotonic() - self._flushed_at >= self.BUCKET_FLUSH_SECONDS:
      self.flush()

  def flush(self) -> None:
    """Everything written so far onto storage (called at checkpoints: a resume keeps the lines up to its step)."""
    if not self.enabled:
      return
    self._jsonl.flush()
    if self._tb is not None:
      self._tb.flush()
    if self._tb_stage is not None:
      for name in os.listdir(self._tb_stage):
        storage.copy_file(os.path.join(self._tb_stage, name), f"{self._tb_dir}/{name}")
    self._flushed_at = time.monotonic()

  def log(self, message: str) -> None:
    if self.enabled:
      print(message, flush=True)

  def close(self):
    if not self.enabled:
      return
    if self._tb is not None:
      self._tb.close()
      self._tb = None
    self.flush()
    self._jsonl.close()
    if self._tb_stage is not None:
      shutil.rmtree(self._tb_stage, ignore_errors=True)


class ProfilerTrace:
  """A jax.profiler trace into `directory`. The profiler writes local files only, so for a bucket directory it
  writes to a local one whose files are copied up when the trace stops."""

  def __init__(self, directory: str):
    self.directory, self._stage, self._started = directory, None, False

  def start(self) -> None:
    if storage.is_remote(self.directory):
      self._stage = tempfile.mkdtemp(prefix="bert_jax_profile_")
    jax.profiler.start_trace(self._stage or self.directory)
    self._started = True

  def stop(self) -> None:
    """Ends the trace; nothing when none was started (a run resumed inside its profile window)."""
    if not self._started:
      return
    jax.profiler.stop_trace()
    self._started = False
    if self._stage is not None:
      storage.upload_tree(self._stage, self.directory)
      shutil.rmtree(self._stage, ignore_errors=True)
      self._stage = None


def _line_step(line: str) -> int | None:
  """The step of a metrics.jsonl line; None for a torn or foreign line."""
  try:
    return int(json.loads(line)["step"])
  except (ValueError, KeyError, TypeError):
    return None


def format_eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class Throughput:
  """Sequences/tokens per second over the interval since the last call."""

  def __init__(self):
    self._t, self._step = time.perf_counter(), None

  def update(self, step: int, seqs_per_step: int, tokens_per_seq: int):
    now = time.perf_counter()
    if self._step is None or step == self._step:
      self._t, self._step = now, step
      return None
    steps = step - self._step
    dt = now - self._t
    self._t, self._step = now, step
    seq_per_sec = steps * seqs_per_step / dt
    return seq_per_sec, seq_per_sec * tokens_per_seq, dt / steps
