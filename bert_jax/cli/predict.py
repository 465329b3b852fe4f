"""Inference CLI: python -m bert_jax.predict COMMAND --workdir=DIR [--input=lines.txt] [--output=out.jsonl]

  fill-mask  top-k tokens for each [MASK] / <mask> (a pretraining workdir)
  embed      pooled or mean vectors (.npy or .jsonl; any workdir)
  classify | tag | qa | choose   a fine-tuning workdir's task head
Lines come from --input (default: stdin); JSON lines go to --output (default: stdout). See
bert_jax/finetune/predict.py for each command's line format.
"""

from absl import app, flags, logging

from bert_jax.core import configlib
from bert_jax.finetune import predict


def main(argv):
  f = flags.FLAGS
  if not f["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs each restore at INFO, between the command's own lines
  if len(argv) != 2 or argv[1] not in predict.COMMANDS:
    raise app.UsageError(f"give one command, one of {', '.join(predict.COMMANDS)} (got {argv[1:]})")
  predict.run(argv[1], f.workdir, f.input, f.output, top_k=f.top_k, pooling=f.pooling, batch_size=f.batch_size,
              vocab_file=f.vocab_file)


def cli():
  flags.DEFINE_string("workdir", None, "pretraining workdir (fill-mask, embed) or fine-tuning workdir", required=True)
  flags.DEFINE_string("input", "-", "text file, one example per line ('-': stdin)")
  flags.DEFINE_string("output", "-", "JSON-lines file ('-': stdout); embed writes .npy when the name ends so")
  flags.DEFINE_integer("top_k", 5, "fill-mask: tokens per mask")
  flags.DEFINE_enum("pooling", "mean", ["mean", "pooled"], "embed: mean over real tokens, or the pooled [CLS]")
  flags.DEFINE_integer("batch_size", 32, "examples per jitted forward pass")
  flags.DEFINE_string("vocab_file", "", "vocabulary (default: the workdir's own)")
  configlib.describe_cli(__doc__)
  app.run(main)
