"""Test set-up: 8 simulated CPU devices for this process, forced before JAX starts, and one for the CLI
subprocesses unless a test asks for more (cli_helpers.cli_env); TF kept off accelerators; one persistent JAX
compilation cache and one corpus cache for the run's processes; XLA's backend at optimization level 0 in the pytest
processes and 1 in the CLI runs."""
import atexit
import getpass
import os
import shutil
import tempfile

# LLVM at -O1 compiles XLA:CPU programs in under half the time of the default -O2, and the tiny models' steps run
# as fast (2-layer train step: compile 11.2 -> 4.9 s, step 18.7 -> 18.1 ms); matmuls are library calls either way.
# The CLI runs train for up to 200 steps and keep -O1: at -O0 a tiny step (batch 16 of 32 tokens, dropout on) took
# 98 ms instead of 36 (scratch timing, 2026-11-28). The tests in the pytest processes compile far more programs
# than they run steps, and compile at -O0: test_train, test_families and test_fp8, cold cache, one worker each, the
# two levels side by side on 2 cores: 595 s at -O1, 535 s at -O0; test_distill, test_peft, test_packing and
# test_span_boundary: 382 and 329 s (2026-11-28).
# XLA_FLAGS as the user gave them: the xdist workers inherit the controller's environment, changed below.
_USER_FLAGS = os.environ.setdefault("BERT_JAX_TEST_USER_XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))


def _at_level(level: int) -> str:
  """The user's XLA_FLAGS, with the backend at `level` unless they chose one."""
  if "--xla_backend_optimization_level" in _USER_FLAGS:
    return _USER_FLAGS
  return f"{_USER_FLAGS} --xla_backend_optimization_level={level}".strip()


_FLAGS = _at_level(1)  # the CLI subprocesses'
os.environ["BERT_JAX_TEST_XLA_FLAGS"] = _at_level(0)  # this process's, less the device count (cli_helpers)
os.environ["XLA_FLAGS"] = _at_level(0) + " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# gs:// paths through gcsfs, which the GCS emulator of tests/gcs_helpers.py can serve (TensorFlow's GCS client has no
# endpoint setting). epath decides once per process, at its first path, so this is set before any test runs.
os.environ["EPATH_USE_TF"] = "0"
# The CLI runs share one pydocs build (corpora.run_cache_dir), new for each test run so that it is always the
# current code's: made here by the pytest process that is not an xdist worker; the workers inherit it.
if "PYTEST_XDIST_WORKER" not in os.environ:
  os.environ["BERT_JAX_CACHE"] = tempfile.mkdtemp(prefix="bert_jax_test_cache_")
  atexit.register(shutil.rmtree, os.environ["BERT_JAX_CACHE"], True)
# The CLI tests start dozens of train/convert processes that compile the same tiny programs again (a resumed run,
# the killed run beside the whole one, the same config in several files); XLA:CPU executables cached on disk
# cut their start-up. The key is the program, the JAX version and the flags, so a stale entry is never used.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"bert_jax_test_xla_cache_{getpass.getuser()}"))
# Every program, not only those that took over JAX's default 1 s to compile: a tiny run's eval step, optimizer
# init and data-side programs compile in under a second each, and a CLI run whose programs are all cached starts
# about 3.5 s sooner (a 6-step `tiny` run on 2 cores, its second time: 17.4 -> 14.1 s).
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax  # noqa: E402  (must come after XLA_FLAGS)

jax.config.update("jax_default_matmul_precision", "highest")
assert jax.device_count() == 8, f"conftest expected 8 simulated devices, got {jax.devices()}"
# The backend has read XLA_FLAGS. The train/convert/finetune CLIs that tests start run on one device, as on a
# laptop, unless a test passes cli_helpers.cli_env(devices=8): 8 simulated devices on 2 cores slow a CLI run by
# a third, and the sharded steps are tested in this process (each objective's sharded = one device).
os.environ["XLA_FLAGS"] = _FLAGS


# pytest-xdist hands each worker whole files in collection order (scripts/test.sh: --dist=loadfile
# --no-loadscope-reorder). The end-to-end files go first, longest first, so that the last files handed out are short
# ones and the workers finish together; xdist's default order (most tests first) put these files, which hold few
# tests, last, where one of them can keep a worker busy for minutes while the other has nothing left. By the
# worker-seconds each took in a full run on 2 cores (2026-11-27), longest first:
LONGEST_FIRST = ("test_family_runs.py", "test_finetune.py", "test_variant_runs.py", "test_electra.py",
                 "test_train_loop.py", "test_families.py", "test_multihost.py", "test_checkpoint_convert.py",
                 "test_fp8.py", "test_train.py", "test_peft.py", "test_distill.py")


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order
