"""Pretraining CLI: python -m bert_jax.train --config=tiny --workdir=runs/tiny [--config.train.steps=...]"""

from absl import flags

from bert_jax.core import configlib, distributed
from bert_jax.trainers import pretrain


def main(config, flag_values):
  distributed.initialize_from_env()
  pretrain.train_and_evaluate(config, flag_values.workdir)


def cli():
  def define_flags():
    flags.DEFINE_string("workdir", None, "where checkpoints, metrics.jsonl and TensorBoard files go", required=True)
  configlib.run_cli(main, define_flags, "config name in configs/ or a path")
