"""Small configs and batches for training tests."""
import fcntl
import os
import pathlib
import shutil

import numpy as np

from bert_jax.core import configlib, optim, sharding
from bert_jax.core.train_state import create_train_state
from bert_jax.models.bert import BertConfig
from bert_jax.objectives import registry as objectives
from bert_jax.trainers import pretrain
from cli_helpers import run_module

# Every sharded dim divides by 8: heads 8, embed 128, mlp 512, vocab 1024.
SMALL = BertConfig(vocab_size=1024, hidden_size=128, num_layers=2, num_heads=8, intermediate_size=512,
                   max_position_embeddings=64, hidden_dropout=0.0, attention_dropout=0.0)
SEQ, PRED = 32, 5


def config(**overrides):
  base = {"train.deterministic": True, "optim.warmup_steps": 2, "train.steps": 10, "mesh.data": -1}
  base.update(overrides)
  return configlib.load("tiny", base)


def random_batch(batch, seed=0, vocab=1024):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(SEQ // 2, SEQ + 1, batch)
  mask = (np.arange(SEQ)[None] < lengths[:, None]).astype(np.int32)
  ids = rng.integers(5, vocab, (batch, SEQ)).astype(np.int32) * mask
  seg = ((np.arange(SEQ)[None] >= (lengths // 2)[:, None]) * mask).astype(np.int32)
  pos = np.stack([np.sort(rng.choice(np.arange(1, SEQ // 2), PRED, replace=False)) for _ in range(batch)])
  weights = (rng.random((batch, PRED)) < 0.8).astype(np.float32)
  return dict(input_ids=ids, input_mask=mask, segment_ids=seg, masked_lm_positions=pos.astype(np.int32),
              masked_lm_ids=rng.integers(5, vocab, (batch, PRED)).astype(np.int32), masked_lm_weights=weights,
              next_sentence_labels=rng.integers(0, 2, batch).astype(np.int32))


def objective_for(cfg, model_config=SMALL):
  """The run config's objective (train.objective) on model_config, for SEQ/PRED batches."""
  return objectives.make_objective(cfg.train.objective, model_config, SEQ, PRED)


def build(cfg, mesh, model_config=SMALL):
  """(state, train_step_fn, eval_step_fn, rules) for a config and mesh, under the rules."""
  import flax.linen as nn
  rules = sharding.rules_from_config(cfg.mesh.logical_axis_rules)
  objective = objective_for(cfg, model_config)
  tx, schedule = optim.make_optimizer(cfg.optim, cfg.train.steps)
  with nn.logical_axis_rules(rules):
    state, shardings = create_train_state(objective.init_params, tx, mesh, rules, 0)
    step_fn, eval_fn = pretrain.make_step_functions(cfg, objective, tx, schedule, mesh, shardings)
  return state, step_fn, eval_fn, rules


def run_steps(cfg, mesh, batches, model_config=SMALL):
  import flax.linen as nn
  state, step_fn, _, rules = build(cfg, mesh, model_config)
  losses = []
  with nn.logical_axis_rules(rules):
    for b in batches:
      state, m = step_fn(state, sharding.global_batch(b, mesh))
      losses.append(float(m["loss"]))
  return state, losses


# The pydocs CLI runs' settings (the family, variant and shared BERT runs): 120 steps of 16 at seq 64, evals at 0, 60
# and 120 on 4 batches, checkpoints at 60 and 120.
PYDOCS_STEPS = 120
PYDOCS_SHORT = ["--config.train.batch_size=16", "--config.optim.warmup_steps=30", "--config.train.eval_every=60",
                "--config.train.eval_batches=4", "--config.train.log_every=40", "--config.checkpoint.every_steps=60",
                "--config.data.max_seq_length=64", "--config.data.max_predictions_per_seq=10",
                # one masked copy of pydocs, prepared in the CLI's process: 5 s instead of 12 s, and 120 steps of 16
                # use a tenth of it
                "--config.data.dupe_factor=1", "--config.data.prepare_workers=1"]


def pretrained_tiny():
  """`bert_tiny` (the Quick start's `tiny`) pretrained on pydocs through the CLI with PYDOCS_SHORT (vocabulary
  8000), once per test run: test_family_runs checks that it learns and exports, and the files that only read a
  pretrained workdir (fine-tuning, prediction, export, distillation) share it across xdist workers. The first to
  ask builds it in $BERT_JAX_CACHE (conftest: new for each run) under a file lock; the others wait for it, then
  reuse it. Returns the workdir (a pathlib.Path)."""
  workdir = pathlib.Path(os.environ["BERT_JAX_CACHE"]) / "pretrained-bert-tiny"
  with open(f"{workdir}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not (workdir / "COMPLETE").exists():
      shutil.rmtree(workdir, ignore_errors=True)  # a build that failed part-way
      run_module("bert_jax.train", "--config=bert_tiny", f"--workdir={workdir}",
                 f"--config.train.steps={PYDOCS_STEPS}", *PYDOCS_SHORT)
      (workdir / "COMPLETE").touch()
  return workdir
