"""The environment of the CLI subprocesses that tests start."""
import os


def cli_env(devices: int = 1, **extra) -> dict:
  """os.environ for a CLI run on `devices` simulated CPU devices (conftest leaves XLA_FLAGS without a device
  count, so one), with TensorFlow's logs quiet and output unbuffered."""
  return {**os.environ, "XLA_FLAGS": xla_flags(devices), "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1",
          **extra}


def xla_flags(devices: int) -> str:
  """This process's XLA_FLAGS (conftest's, without a device count) for a run on `devices` simulated CPU devices."""
  flags = os.environ.get("XLA_FLAGS", "")
  if devices > 1:
    flags = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
  return flags
