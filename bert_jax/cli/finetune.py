"""Fine-tuning CLI: python -m bert_jax.finetune --config=finetune --init_checkpoint=RUN --workdir=DIR [--config.K=V ...]

  python -m bert_jax.finetune --config=finetune --init_checkpoint=runs/tiny --workdir=runs/ft-demo  # offline demo
  ... --config.task.name=glue/mrpc --config.task.data_dir=~/tensorflow_datasets                   # a TFDS task
  ... --config.task.name=files --config.task.kind=classification|regression|tagging|qa|multiple_choice \\
      --config.task.train_file=train.jsonl --config.task.eval_file=dev.jsonl \\
      --config.task.text_keys=sentence1,sentence2 --config.task.label_key=label                   # .jsonl/.tsv

--init_checkpoint is a pretraining workdir (python -m bert_jax.train). configs/finetune.py comments every field;
running again on a workdir resumes it.
"""

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
  configlib.run_cli(main, define_flags, "config name in configs/ (e.g. finetune) or a path", __doc__)
