"""`python -m bert_jax.train --config=NAME --workdir=DIR [--config.a.b=...]`: see bert_jax/cli/train.py."""
from bert_jax.cli.train import cli

if __name__ == "__main__":
  cli()
