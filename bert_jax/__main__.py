"""`python -m bert_jax` is `python -m bert_jax.train`."""
from bert_jax.cli.train import cli

cli()
