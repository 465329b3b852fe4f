"""SpanBERT's objective `mlm_sbo` (Joshi et al. 2020): masked LM plus the span boundary objective (SBO).

Every masked token is predicted twice: by the MLM head from its own encoding, and by the SBO head
(models/span_boundary_head.py) from the encodings of its span's two boundary tokens and its place in the span.

Spans are not a data feature: they are read off the batch's masked_lm_positions here, in JAX, as maximal runs of
consecutive masked positions (span masking places spans that do not touch, so each run is one span). For a masked
position i the left boundary s-1 is the nearest unmasked position before it, the right one e+1 the nearest after it.
A masked token has no SBO target (weight 0) when
  - it is a padded slot (masked_lm_weights 0),
  - a boundary falls outside the row or on padding (input_mask 0), or for packed rows in another instance,
  - its place in the span is MAX_SPAN_TARGETS or more (facebookresearch/SpanBERT cuts longer spans the same way).
A span next to [CLS] or [SEP] takes that token as its boundary ([CLS]/[SEP] are never masked). The reference code
drops spans at the very start or end of its block instead, as it masks before adding [CLS]/[SEP]; the paper's
formula has no such exception, so we keep them.

  loss = MLM cross-entropy (mean over masked tokens) + SBO cross-entropy (mean over SBO targets)
as in the paper and the reference's span_bert_loss with --pair-loss-weight 1.0.

metrics.jsonl fields: mlm_loss, mlm_accuracy, sbo_loss, sbo_accuracy (over SBO targets).
"""

import jax
import jax.numpy as jnp

from bert_jax.models import span_boundary_head
from bert_jax.models.config import EncoderConfig, trunk_flops_per_sequence
from bert_jax.models.span_boundary_head import MAX_SPAN_TARGETS, POSITION_EMBEDDING_SIZE, SpanBoundaries
from bert_jax.objectives import base
from bert_jax.objectives.base import ratio
from bert_jax.objectives.masked_lm import MLM_KEYS, mlm_sums


def span_boundaries(positions_BxP, weights_BxP, input_mask_BxT, attention_segments_BxT=None) -> SpanBoundaries:
  """The boundaries of each masked slot's span, read from the masked positions (in any order)."""
  positions = jnp.asarray(positions_BxP, jnp.int32)
  batch, seq = input_mask_BxT.shape
  real = jnp.asarray(weights_BxP) > 0
  rows = jnp.broadcast_to(jnp.arange(batch)[:, None], positions.shape)
  masked_BxT = jnp.zeros((batch, seq), bool).at[rows, jnp.where(real, positions, seq)].set(True, mode="drop")
  index = jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch, seq))
  # The nearest unmasked position at or before (left) and at or after (right) each position; -1 / seq: none.
  left_BxT = jax.lax.cummax(jnp.where(masked_BxT, -1, index), axis=1)
  right_BxT = jax.lax.cummin(jnp.where(masked_BxT, seq, index), axis=1, reverse=True)
  at = jnp.clip(positions, 0, seq - 1)
  left = jnp.take_along_axis(left_BxT, at, axis=1)
  right = jnp.take_along_axis(right_BxT, at, axis=1)
  offset = at - left - 1
  left_in, right_in = jnp.clip(left, 0, seq - 1), jnp.clip(right, 0, seq - 1)
  mask = jnp.asarray(input_mask_BxT) > 0
  valid = (real & (left >= 0) & (right < seq) & (offset < MAX_SPAN_TARGETS)
           & jnp.take_along_axis(mask, left_in, axis=1) & jnp.take_along_axis(mask, right_in, axis=1))
  if attention_segments_BxT is not None:  # packed rows: both boundaries in the target's own instance
    segments = jnp.asarray(attention_segments_BxT)
    own = jnp.take_along_axis(segments, at, axis=1)
    valid &= (jnp.take_along_axis(segments, left_in, axis=1) == own) & (
        jnp.take_along_axis(segments, right_in, axis=1) == own)
  weights = jnp.where(valid, jnp.asarray(weights_BxP, jnp.float32), 0.0)
  return SpanBoundaries(left_in, right_in, jnp.clip(offset, 0, MAX_SPAN_TARGETS - 1), weights)


class SpanBoundaryObjective(base.Objective):
  name = "mlm_sbo"
  batch_keys = MLM_KEYS
  heads = span_boundary_head.HEADS
  log_fields = ("mlm_accuracy", "sbo_accuracy")

  def __init__(self, config: EncoderConfig, seq_len: int, predictions: int):
    self.config, self.seq_len, self.predictions = config, seq_len, predictions
    self.model = span_boundary_head.EncoderWithSpanBoundary(config, self.heads)

  def init_params(self, rng):
    ids = jnp.zeros((1, self.seq_len), jnp.int32)
    return self.model.init(rng, ids, ids, ids, jnp.zeros((1, self.predictions), jnp.int32))["params"]

  def boundaries(self, batch) -> SpanBoundaries:
    return span_boundaries(batch["masked_lm_positions"], batch["masked_lm_weights"], batch["input_mask"],
                           batch.get("attention_segments"))

  def apply(self, params, batch, rng, deterministic):
    return self.model.apply(
        {"params": params}, batch["input_ids"], batch["input_mask"], batch["segment_ids"],
        batch["masked_lm_positions"], span_boundaries=self.boundaries(batch),
        position_ids_BxT=batch.get("position_ids"), attention_segments_BxT=batch.get("attention_segments"),
        deterministic=deterministic, rngs={"dropout": rng})

  def loss_sums(self, params, batch, rng, deterministic):
    out = self.apply(params, batch, rng, deterministic)
    return {"mlm": mlm_sums(out["mlm_logits"], batch["masked_lm_ids"], batch["masked_lm_weights"]),
            "sbo": mlm_sums(out["sbo_logits"], batch["masked_lm_ids"], self.boundaries(batch).weights)}

  def denominators(self, batch):
    return {"mlm": jnp.maximum(jnp.sum(batch["masked_lm_weights"].astype(jnp.float32)), 1e-5),
            "sbo": jnp.maximum(jnp.sum(self.boundaries(batch).weights), 1e-5)}

  def loss(self, sums, denominators):
    return sums["mlm"]["loss_sum"] / denominators["mlm"] + sums["sbo"]["loss_sum"] / denominators["sbo"]

  def summaries(self, sums):
    m, s = sums["mlm"], sums["sbo"]
    out = {"mlm_loss": ratio(m["loss_sum"], m["weight_sum"]), "mlm_accuracy": ratio(m["correct_sum"], m["weight_sum"]),
           "sbo_loss": ratio(s["loss_sum"], s["weight_sum"]), "sbo_accuracy": ratio(s["correct_sum"], s["weight_sum"])}
    out["loss"] = out["mlm_loss"] + out["sbo_loss"]
    return out

  def flops_per_sequence(self):
    """Trunk + MLM head 6*P*(H*E + E*V) + SBO head 6*P*((2H + D)*H + H*E + E*V), both at the P masked slots."""
    c = self.config
    H, E, V, D, P = c.hidden_size, c.embedding_width, c.vocab_size, POSITION_EMBEDDING_SIZE, self.predictions
    mlm = 6 * P * (H * E + E * V)
    sbo = 6 * P * ((2 * H + D) * H + H * E + E * V)
    return float(trunk_flops_per_sequence(c, self.seq_len) + mlm + sbo)
