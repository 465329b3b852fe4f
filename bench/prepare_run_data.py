"""Prepares a train run's data (what `python -m bert_jax.train` would prepare at start) and stops.

  python bench/prepare_run_data.py --config=base --workdir=gpu_work/grain_run --config.data.corpus=pydocs ...

It takes the train CLI's flags, so a GPU stage's own command line prepares its data here, on a machine with time to
spare; carried to the device, the run finds it by its settings hash and skips preparing
(`PREPARE_ONLY=1 bash bench/gpu_suite.sh grain|families_heldout`).
"""

from absl import flags

from bert_jax import inputs
from bert_jax.core import configlib


def main(config, flag_values):
  print(inputs.prepare_cached(config.data, flag_values.workdir))


def define_flags():
  flags.DEFINE_string("workdir", None, "the run's workdir: the data goes to WORKDIR/data/<settings hash>",
                      required=True)


if __name__ == "__main__":
  configlib.run_cli(main, define_flags, "config name in configs/ or a path")
