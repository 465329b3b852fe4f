"""Running the project's CLIs and bench/ scripts from tests: the CLI subprocesses' environment, a CLI run that
must succeed, the to_hf CLI's work in the test's process, and a bench/ script loaded as a module."""
import functools
import importlib.util
import os
import subprocess
import sys

from bert_jax.convert import workdir as workdir_lib

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")


def cli_env(devices: int = 1, compiled_as_tests: bool = False, **extra) -> dict:
  """os.environ for a CLI run on `devices` simulated CPU devices (conftest leaves XLA_FLAGS without a device
  count, so one), with TensorFlow's logs quiet and output unbuffered. compiled_as_tests: XLA's backend at the
  pytest process's optimization level, not the CLI runs' (conftest), for a run whose numbers a test compares bit
  for bit with its own."""
  return {**os.environ, "XLA_FLAGS": xla_flags(devices, compiled_as_tests), "TF_CPP_MIN_LOG_LEVEL": "3",
          "PYTHONUNBUFFERED": "1", **extra}


def xla_flags(devices: int, compiled_as_tests: bool = False) -> str:
  """conftest's XLA_FLAGS for the CLI runs (or, compiled_as_tests, the pytest process's), without a device count,
  for a run on `devices` simulated CPU devices."""
  flags = os.environ["BERT_JAX_TEST_XLA_FLAGS"] if compiled_as_tests else os.environ.get("XLA_FLAGS", "")
  if devices > 1:
    flags = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
  return flags


def run_module(module: str, *args: str, timeout: int = 900) -> str:
  """`python -m module args...` on one device; fails the test, showing the output's end, unless it exits 0.
  Returns its stdout followed by its stderr."""
  result = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout,
                          env=cli_env())
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
  return result.stdout + result.stderr


def to_hf_in_process(workdir: str, output: str) -> str:
  """What `python -m bert_jax.convert to_hf --workdir=WORKDIR --output=OUTPUT` does and prints, run in this process
  (without the CLI's start-up: the CLI itself runs in test_checkpoint_convert.py, test_electra.py and
  test_train_loop.py)."""
  lines = []
  workdir_lib.export_to_hf(workdir, output, log=lines.append)
  return "\n".join(lines)


@functools.cache
def load_bench(name: str):
  """bench/<name>.py as a module (bench/ is scripts, not a package)."""
  spec = importlib.util.spec_from_file_location(name, os.path.join(BENCH, f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
