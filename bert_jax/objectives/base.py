"""What a pretraining objective is, to the trainer.

The trainer (trainers/pretrain.py), eval, metrics.jsonl, checkpointing and export call only this
interface; they never name a loss or a head. An objective owns:
  - its model (the trunk plus its heads, or two models for ELECTRA-style objectives) and its init,
  - the batch keys it reads,
  - its loss as sums (numerators and denominators), so gradient accumulation over microbatches divides
    by the whole batch's weights and four microbatches of 8 equal one batch of 32,
  - its summaries (the metrics.jsonl fields it adds, `loss` included) and its console fields,
  - its FLOPs per sequence, for MFU.
"""

import abc

import jax
import jax.numpy as jnp


def ratio(num, den):
  """num / den for summary fields, 0 where den is 0 (no masked tokens, nothing flagged)."""
  return num / jnp.maximum(den, 1e-5)


class Objective(abc.ABC):
  name: str = ""
  batch_keys: tuple[str, ...] = ()
  heads: tuple[str, ...] = ()        # parameter subtrees it trains beside encoder/ (export sections)
  log_fields: tuple[str, ...] = ()   # summaries shown on the console's train/eval lines

  @abc.abstractmethod
  def init_params(self, rng: jax.Array):
    """Fresh, logically boxed params (nn.Partitioned leaves), from shapes only."""

  @abc.abstractmethod
  def loss_sums(self, params, batch: dict, rng: jax.Array, deterministic: bool) -> dict:
    """A pytree of sums over this (micro)batch, additive across microbatches and eval batches."""

  @abc.abstractmethod
  def denominators(self, batch: dict) -> dict:
    """Normalisers computed on the whole global batch (e.g. masked-token weight, sequence count)."""

  @abc.abstractmethod
  def loss(self, sums: dict, denominators: dict) -> jax.Array:
    """The scalar training loss from sums and whole-batch denominators."""

  @abc.abstractmethod
  def summaries(self, sums: dict) -> dict:
    """Metrics from (accumulated) sums: `loss` plus the objective's own fields."""

  @abc.abstractmethod
  def flops_per_sequence(self) -> float:
    """Training FLOPs per sequence of every model the step runs (for MFU)."""

  def exported_models(self, params) -> dict:
    """The HF-exportable models in a trained params tree: name -> (params holding `encoder` and head sections,
    their encoder config). The first is the one fine-tuning starts from; a single model is named ''."""
    return {"": (params, self.config)}

  def param_rules(self) -> tuple:
    """core.param_rules.ParamRule's the optimizer applies (e.g. freezing a distillation teacher)."""
    return ()

  def init_sources(self) -> dict:
    """Subtrees the trainer loads from elsewhere on a fresh start (not on resume): name -> (path of a workdir,
    params checkpoint or HF directory, the subtree's encoder config). E.g. a distillation teacher."""
    return {}

  def finish_init(self, params):
    """Completes fresh params once init_sources are loaded (pure jnp; the trainer jits it in the state's
    shardings), e.g. a student copied from its teacher's layers."""
    return params

  def check_data(self, manifest: dict | None) -> None:
    """Fails at start when prepared data (its manifest, if any) does not suit this objective."""

  def check_batch_keys(self, batch: dict) -> None:
    missing = [k for k in self.batch_keys if k not in batch]
    if missing:
      raise KeyError(f"objective {self.name!r} needs batch keys {missing}; the data has {sorted(batch)} "
                     f"(was it prepared for another objective?)")
