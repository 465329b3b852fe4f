"""`python -m bert_jax.convert`: see bert_jax/cli/convert.py."""
from bert_jax.cli import convert

convert.cli()
