"""Config files: `--config=NAME` -> configs/NAME.py (or a path), and override-key checking.

Configs are locked ConfigDicts, so an unknown key can never be set; this module turns an unknown
override into a one-line error that lists the closest valid keys, before flag parsing starts.
"""

import difflib
import importlib.util
import os
import re

import ml_collections

CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs")


def available() -> list[str]:
  return sorted(f[:-3] for f in os.listdir(CONFIGS_DIR) if f.endswith(".py") and not f.startswith("_")
                and f != "common.py")


def resolve_path(name_or_path: str) -> str:
  """configs/NAME.py for a bare name, else the path itself (a `:arg` suffix is kept)."""
  path, sep, arg = name_or_path.partition(":")
  if os.path.exists(path):
    return name_or_path
  candidate = os.path.join(CONFIGS_DIR, f"{path}.py")
  if os.path.exists(candidate):
    return candidate + sep + arg
  raise FileNotFoundError(f"no config {name_or_path!r}: not a file, and not one of {available()}")


def load(name_or_path: str, overrides: dict | None = None) -> ml_collections.ConfigDict:
  """The config's get_config(), with dotted-key overrides applied (unknown keys fail)."""
  path = resolve_path(name_or_path).partition(":")[0]
  spec = importlib.util.spec_from_file_location(f"bert_jax_config_{os.path.basename(path)[:-3]}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  if overrides:
    check_keys(config, overrides)
    config.update_from_flattened_dict(overrides)
  return config


def flat_keys(config, prefix="") -> list[str]:
  keys = []
  for k, v in config.items():
    full = f"{prefix}{k}"
    keys += flat_keys(v, full + ".") if isinstance(v, ml_collections.ConfigDict) else [full]
  return keys


def check_keys(config, keys) -> None:
  valid = set(flat_keys(config))
  for key in keys:
    if key in valid:
      continue
    close = difflib.get_close_matches(key, sorted(valid), n=5, cutoff=0.6)
    if not close:  # a bad section name: suggest keys that share the leaf
      close = sorted(k for k in valid if k.rsplit(".", 1)[-1] == key.rsplit(".", 1)[-1])[:5]
    hint = f"; closest: {', '.join(close)}" if close else f"; valid sections: {sorted({k.split('.')[0] for k in valid})}"
    raise KeyError(f"unknown config key {key!r}{hint}")


_OVERRIDE = re.compile(r"^--config\.([A-Za-z0-9_.]+)(=|$)")


def rewrite_argv(argv: list[str]) -> list[str]:
  """Resolves --config=NAME to a path and checks every --config.KEY=... against that config."""
  out, config_arg = [], None
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      config_arg = resolve_path(arg.split("=", 1)[1])
      arg = "--config=" + config_arg
    elif arg == "--config" and i + 1 < len(argv):
      argv[i + 1] = config_arg = resolve_path(argv[i + 1])
    out.append(arg)
  if config_arg is not None:
    keys = [m.group(1) for a in argv if (m := _OVERRIDE.match(a))]
    if keys:
      check_keys(load(config_arg), keys)
  return out


def run_cli(main, define_flags, config_help: str, doc: str | None = None) -> None:
  """The shared entry point: --config=NAME resolved in configs/ (typos in overrides fail, naming the closest
  key), then main(config, flags.FLAGS) with absl logging at WARNING unless --verbosity is given. --help prints
  `doc` and the flags (describe_cli)."""
  import sys
  from absl import app, flags, logging
  from ml_collections import config_flags
  try:
    argv = rewrite_argv(list(sys.argv))
  except (KeyError, FileNotFoundError) as e:
    print(f"error: {e.args[0]}", file=sys.stderr)
    sys.exit(2)
  config_flags.DEFINE_config_file("config", None, f"{config_help}; in configs/: {', '.join(available())}. Its "
                                  f"fields are overridden as --config.SECTION.KEY=VALUE", lock_config=True)
  define_flags()
  flags.mark_flag_as_required("config")
  describe_cli(doc)

  def run(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)  # Orbax is chatty at INFO
    main(flags.FLAGS.config, flags.FLAGS)
  app.run(run, argv=argv)


def describe_cli(doc: str | None) -> None:
  """What --help prints for `python -m bert_jax.X`: absl shows __main__'s docstring and the flags key to the main
  module, but the entry modules are one-line shims and the flags are defined in bert_jax.cli and here, so --help
  printed a pointer to a file and no flag. Hands `doc` (when given) and bert_jax's flags to the main module; call
  it once the flags are defined."""
  import sys
  from absl import flags
  if doc:
    sys.modules["__main__"].__doc__ = doc
  for module, defined in flags.FLAGS.flags_by_module_dict().items():
    if module.startswith("bert_jax."):
      for flag in defined:
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)


def with_current_defaults(saved: dict) -> ml_collections.ConfigDict:
  """A saved run config on top of today's defaults, so fields added since it was written have values."""
  config = load("common")

  def merge(node, values):
    for k, v in values.items():
      if isinstance(v, dict) and k in node and hasattr(node[k], "items"):
        merge(node[k], v)
      else:
        node[k] = v
  with config.unlocked():
    merge(config, saved)
  return config
