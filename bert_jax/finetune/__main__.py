"""`python -m bert_jax.finetune`: see bert_jax/cli/finetune.py."""
from bert_jax.cli import finetune

finetune.cli()
