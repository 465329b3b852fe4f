"""Fine-tuning CLI: python -m bert_jax.finetune --config=finetune --init_checkpoint=runs/tiny --workdir=runs/ft"""

from absl import flags

from bert_jax.core import configlib, distributed
from bert_jax.trainers import finetune


def main(config, flag_values):
  distributed.initialize_from_env()
  finetune.finetune(config, flag_values.workdir, flag_values.init_checkpoint)


def cli():
  def define_flags():
    flags.DEFINE_string("workdir", None, "where params, metrics.jsonl, result.json and hf/ go", required=True)
    flags.DEFINE_string("init_checkpoint", "", "pretraining workdir (overrides config.init_checkpoint)")
  configlib.run_cli(main, define_flags, "config name in configs/ (e.g. finetune) or a path")
