"""Training metrics: peak FLOP/s for MFU, and the log writers (console, metrics.jsonl, TensorBoard).

FLOPs per sequence come from the objective (objectives/*.py), which knows every model its step runs.
TensorBoard event files are written with tensorboardX, which needs no TensorFlow (the same scalar events
tf.summary writes; TensorBoard reads them as before).
"""

import importlib
import json
import os
import sys
import time

import jax


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


class MetricsWriter:
  """Process 0 writes WORKDIR/metrics.jsonl and TensorBoard events; other processes write nothing."""

  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    self._jsonl = self._tb = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
      self._tb_dir = os.path.join(workdir, "tensorboard")  # its writer opens at the first write or resume_from

  def _open_tb(self, purge_step=None):
    if self._tb is None:
      self._tb = tensorboardX.SummaryWriter(self._tb_dir, flush_secs=30, purge_step=purge_step)
    return self._tb

  def resume_from(self, step: int) -> int:
    """At the start of a run from `step` (0: a fresh start): drops metrics.jsonl lines past it (written after
    that checkpoint, and about to be written again) and a torn last line, and tells TensorBoard to discard the
    earlier attempt's events past it (a purge marker); returns how many jsonl lines were dropped."""
    if not self.enabled:
      return 0
    self._open_tb(purge_step=step + 1 if step else 0)
    path = self._jsonl.name
    self._jsonl.close()
    with open(path) as f:
      lines = f.readlines()
    kept = [line for line in lines if step > 0 and _line_step(line) is not None and _line_step(line) <= step]
    if len(kept) != len(lines):
      with open(path + ".tmp", "w") as f:
        f.writelines(line if line.endswith("\n") else line + "\n" for line in kept)
      os.replace(path + ".tmp", path)
    self._jsonl = open(path, "a")
    return len(lines) - len(kept)

  def write(self, record: dict) -> None:
    if not self.enabled:
      return
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    prefix = "eval/" if record.get("split") == "eval" else "train/"
    for k, v in record.items():
      if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step":
        self._open_tb().add_scalar(prefix + k, v, global_step=int(record["step"]))
    self._open_tb().flush()

  def log(self, message: str) -> None:
    if self.enabled:
      print(message, flush=True)

  def close(self):
    if self.enabled:
      self._jsonl.close()
      if self._tb is not None:
        self._tb.close()


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
