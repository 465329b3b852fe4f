"""Pretraining CLI: python -m bert_jax.train --config=NAME --workdir=DIR [--config.SECTION.KEY=VALUE ...]

  python -m bert_jax.train --config=tiny --workdir=runs/tiny                    # the CPU demo on pydocs
  python -m bert_jax.train --config=base --workdir=runs/base \\
      --config.data.train_files='data/wiki/train/*.tfrecord' --config.train.steps=100000

--config names a file in configs/ (the list is in --config's help below) or a path; any of its fields can be
overridden with --config.SECTION.KEY=VALUE, and a misspelled key fails naming the closest ones. Running again on
a workdir resumes from its newest checkpoint. README "Usage" describes every config section.
"""

from absl import flags

from bert_jax.core import configlib, distributed
from bert_jax.trainers import pretrain


def main(config, flag_values):
  distributed.initialize_from_env()
  pretrain.train_and_evaluate(config, flag_values.workdir)


def cli():
  def define_flags():
    flags.DEFINE_string("workdir", None, "where checkpoints, metrics.jsonl and TensorBoard files go", required=True)
  configlib.run_cli(main, define_flags, "config name in configs/ or a path", __doc__)
