"""Test set-up: 8 simulated CPU devices, forced before JAX starts; TF kept off accelerators; one persistent JAX
compilation cache for the run's processes."""
import getpass
import os
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# The CLI tests start dozens of train/convert processes that compile the same tiny programs again (a resumed run,
# the killed run beside the whole one, the same config in several files); XLA:CPU executables cached on disk
# cut their start-up. The key is the program, the JAX version and the flags, so a stale entry is never used.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"bert_jax_test_xla_cache_{getpass.getuser()}"))

import jax  # noqa: E402  (must come after XLA_FLAGS)
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="session", autouse=True)
def _eight_devices():
  assert jax.device_count() == 8, f"conftest expected 8 simulated devices, got {jax.devices()}"
