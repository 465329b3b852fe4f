"""ELECTRA replaced-token detection (Clark et al. 2020): a small MLM generator and a discriminator in one step.

The generator (hidden size x `generator_hidden_fraction`, sharing the discriminator's embeddings) predicts the
masked tokens; a token sampled from its softmax replaces each masked one (no gradient flows through the sample);
the discriminator labels every real token original (0) or replaced (1). A sampled token equal to the original
counts as original, as in the paper.

  loss = generator MLM cross-entropy (mean over masked tokens) + rtd_weight x RTD sigmoid cross-entropy (mean
         over real tokens)

Settings (the run config's `electra` section): generator_hidden_fraction (paper: 1/4 small and large, 1/3 base),
rtd_weight (lambda, 50). metrics.jsonl fields: mlm_loss, mlm_accuracy (the generator), rtd_loss, rtd_accuracy
(the discriminator, over real tokens), replaced_fraction (real tokens replaced: 1 - replaced_fraction is the
accuracy of calling every token original), and, as google-research/electra reports them, rtd_precision (replaced
among the tokens flagged; 0 while none is flagged), rtd_recall (flagged among the replaced) and rtd_auc (the
chance that a replaced token scores above an original one). A small discriminator can rank replaced tokens above
original ones (auc > 0.5) long before it is ever confident enough to flag one, which accuracy cannot show.
"""

import dataclasses

import jax
import jax.numpy as jnp

from bert_jax.models import electra as electra_lib
from bert_jax.models.config import EncoderConfig, trunk_flops_per_sequence
from bert_jax.models.electra import model as model_lib
from bert_jax.objectives import base
from bert_jax.objectives.base import ratio
from bert_jax.objectives.masked_lm import MLM_KEYS, mlm_sums


@dataclasses.dataclass(frozen=True)
class ElectraSettings:
  generator_hidden_fraction: float = 0.25
  rtd_weight: float = 50.0


# rtd_auc comes from logit histograms, which add over microbatches, devices and eval batches like every other sum:
# 4096 bins over [-40, 40] resolve 0.02 in logit. A trained discriminator puts most original tokens well below -12,
# so a narrower range would tie them in its edge bin; logits beyond +-40 (sigmoid within 4e-18 of 0 or 1) still do.
AUC_BINS = 4096
AUC_LOGIT_RANGE = 40.0


def rtd_sums(logits_BxT, labels_BxT, mask_BxT):
  """Sums over real tokens: dict(loss_sum, correct_sum, replaced_sum, count, flagged_sum, true_flagged_sum,
  replaced_hist, original_hist), the last two [AUC_BINS] counts of logits."""
  logits = logits_BxT.astype(jnp.float32)
  labels = labels_BxT.astype(jnp.float32)
  weights = mask_BxT.astype(jnp.float32)
  xent = jnp.logaddexp(0.0, logits) - logits * labels  # sigmoid cross-entropy, stable for large |logits|
  flagged = (logits > 0).astype(jnp.float32)
  correct = (flagged == labels).astype(jnp.float32)
  bins = jnp.clip(jnp.floor((logits + AUC_LOGIT_RANGE) * (AUC_BINS / (2 * AUC_LOGIT_RANGE))), 0, AUC_BINS - 1)
  histogram = lambda w: jax.ops.segment_sum((w * weights).ravel(), bins.astype(jnp.int32).ravel(), AUC_BINS)
  return {"loss_sum": jnp.sum(xent * weights), "correct_sum": jnp.sum(correct * weights),
          "replaced_sum": jnp.sum(labels * weights), "count": jnp.sum(weights),
          "flagged_sum": jnp.sum(flagged * weights), "true_flagged_sum": jnp.sum(flagged * labels * weights),
          "replaced_hist": histogram(labels), "original_hist": histogram(1.0 - labels)}


def auc_from_histograms(positive_hist, negative_hist):
  """Area under the ROC curve from score histograms (ascending bins): P(positive > negative), a tie within a bin
  counted half."""
  negatives_below = jnp.cumsum(negative_hist) - negative_hist
  pairs = jnp.sum(positive_hist) * jnp.sum(negative_hist)
  return ratio(jnp.sum(positive_hist * (negatives_below + 0.5 * negative_hist)), pairs)


class Electra(base.Objective):
  name = "electra"
  batch_keys = MLM_KEYS
  heads = ("rtd",)  # the discriminator's; the generator is a whole model of its own under generator/
  log_fields = ("mlm_accuracy", "rtd_accuracy", "replaced_fraction", "rtd_auc")

  def __init__(self, config: EncoderConfig, seq_len: int, predictions: int, settings: dict | None = None):
    if type(config).family != "electra":
      raise ValueError(f"objective 'electra' needs model.family='electra', got {type(config).family!r}")
    known = {f.name for f in dataclasses.fields(ElectraSettings)}
    unknown = sorted(set(settings or {}) - known)
    if unknown:
      raise ValueError(f"unknown electra settings {unknown}; known: {sorted(known)}")
    self.settings = ElectraSettings(**(settings or {}))
    self.config, self.seq_len, self.predictions = config, seq_len, predictions
    self.generator_config = electra_lib.generator_config(config, self.settings.generator_hidden_fraction)
    self.model = model_lib.ElectraPretrainer(config, self.generator_config)

  def init_params(self, rng):
    ids = jnp.zeros((1, self.seq_len), jnp.int32)
    slots = jnp.zeros((1, self.predictions), jnp.int32)
    return self.model.init({"params": rng, "sample": rng}, ids, ids, ids, slots, slots,
                           jnp.zeros((1, self.predictions), jnp.float32))["params"]

  def apply(self, params, batch, rng, deterministic):
    dropout_rng, sample_rng = jax.random.split(rng)
    return self.model.apply(
        {"params": params}, batch["input_ids"], batch["input_mask"], batch["segment_ids"],
        batch["masked_lm_positions"], batch["masked_lm_ids"], batch["masked_lm_weights"],
        position_ids_BxT=batch.get("position_ids"), attention_segments_BxT=batch.get("attention_segments"),
        deterministic=deterministic, rngs={"dropout": dropout_rng, "sample": sample_rng})

  def loss_sums(self, params, batch, rng, deterministic):
    out = self.apply(params, batch, rng, deterministic)
    return {"mlm": mlm_sums(out["mlm_logits"], batch["masked_lm_ids"], batch["masked_lm_weights"]),
            "rtd": rtd_sums(out["rtd_logits"], out["rtd_labels"], batch["input_mask"])}

  def denominators(self, batch):
    return {"mlm": jnp.maximum(jnp.sum(batch["masked_lm_weights"].astype(jnp.float32)), 1e-5),
            "rtd": jnp.maximum(jnp.sum(batch["input_mask"].astype(jnp.float32)), 1.0)}

  def loss(self, sums, denominators):
    return (sums["mlm"]["loss_sum"] / denominators["mlm"]
            + self.settings.rtd_weight * sums["rtd"]["loss_sum"] / denominators["rtd"])

  def summaries(self, sums):
    m, r = sums["mlm"], sums["rtd"]
    out = {"mlm_loss": ratio(m["loss_sum"], m["weight_sum"]), "mlm_accuracy": ratio(m["correct_sum"], m["weight_sum"]),
           "rtd_loss": ratio(r["loss_sum"], r["count"]), "rtd_accuracy": ratio(r["correct_sum"], r["count"]),
           "replaced_fraction": ratio(r["replaced_sum"], r["count"]),
           "rtd_precision": ratio(r["true_flagged_sum"], r["flagged_sum"]),
           "rtd_recall": ratio(r["true_flagged_sum"], r["replaced_sum"]),
           "rtd_auc": auc_from_histograms(r["replaced_hist"], r["original_hist"])}
    out["loss"] = out["mlm_loss"] + self.settings.rtd_weight * out["rtd_loss"]
    return out

  def flops_per_sequence(self):
    """Both models: discriminator trunk + RTD head 6*T*(H*H + H); generator trunk (its E -> H_g projection
    included) + MLM head 6*P*(H_g*E + E*V) at the masked positions. Sampling is not counted."""
    d, g = self.config, self.generator_config
    T, E, V = self.seq_len, d.embedding_width, d.vocab_size
    discriminator = trunk_flops_per_sequence(d, T) + 6 * T * (d.hidden_size * d.hidden_size + d.hidden_size)
    generator = trunk_flops_per_sequence(g, T) + 6 * self.predictions * (g.hidden_size * E + E * V)
    return float(discriminator + generator)

  def exported_models(self, params):
    """The discriminator (fine-tuning starts from it) and the generator, each a whole model with the shared
    embeddings in its own encoder."""
    embeddings = params["encoder"]["embeddings"]
    generator = {"encoder": {**params["generator"]["encoder"], "embeddings": embeddings},
                 "mlm": params["generator"]["mlm"]}
    return {"discriminator": ({"encoder": params["encoder"], "rtd": params["rtd"]}, self.config),
            "generator": (generator, self.generator_config)}


def params_from_models(discriminator, generator, log=print):
  """The training tree from the two exported models' params (the inverse of Electra.exported_models), as
  `convert from_hf` reads an HF discriminator/generator pair. The discriminator's embeddings are the shared
  ones; a generator whose embeddings differ (trained untied) has them dropped, and `log` says by how much."""
  shared, own = discriminator["encoder"]["embeddings"], generator["encoder"]["embeddings"]
  worst = max(float(abs(a - b).max()) if a.shape == b.shape else float("inf") for a, b in zip(
      jax.tree_util.tree_leaves(shared), jax.tree_util.tree_leaves(own)))
  if worst > 0:
    log(f"the generator's embeddings differ from the discriminator's (max |difference| {worst:.3g}); ELECTRA shares "
        f"them, so the discriminator's are used for both")
  return {"encoder": discriminator["encoder"], "rtd": discriminator["rtd"],
          "generator": {"encoder": {k: v for k, v in generator["encoder"].items() if k != "embeddings"},
                        "mlm": generator["mlm"]}}
