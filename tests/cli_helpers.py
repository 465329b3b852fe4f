"""The environment of the CLI subprocesses that tests start."""
import os


def cli_env(devices: int = 1, **extra) -> dict:
  """os.environ for a CLI run on `devices` simulated CPU devices (conftest leaves XLA_FLAGS without a device
  count, so one), with TensorFlow's logs quiet and output unbuffered."""
  flags = os.environ.get("XLA_FLAGS", "")
  if devices > 1:
    flags = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
  return {**os.environ, "XLA_FLAGS": flags, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1", **extra}
