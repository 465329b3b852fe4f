"""`python -m bert_jax.predict COMMAND --workdir=DIR [--input=...] [--output=...]`: see bert_jax/cli/predict.py."""
from bert_jax.cli.predict import cli

if __name__ == "__main__":
  cli()
