"""MLM and NSP losses and accuracies (pure jnp, computed in float32).

The *_sums functions return numerators and denominators so that gradient accumulation
over microbatches can divide by the whole batch's weight, which makes four microbatches
of 8 give exactly the update of one batch of 32.
"""

import jax
import jax.numpy as jnp


def _cross_entropy(logits_NxC, labels_N):
  logits = logits_NxC.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  true_logit = jnp.take_along_axis(logits, labels_N[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return log_z - true_logit


def mlm_sums(logits_BxPxV, labels_BxP, weights_BxP):
  """Weighted sums over masked positions: dict(loss_sum, correct_sum, weight_sum)."""
  weights = weights_BxP.astype(jnp.float32)
  xent = _cross_entropy(logits_BxPxV, labels_BxP)
  correct = (jnp.argmax(logits_BxPxV, axis=-1) == labels_BxP).astype(jnp.float32)
  return {"loss_sum": jnp.sum(xent * weights), "correct_sum": jnp.sum(correct * weights),
          "weight_sum": jnp.sum(weights)}


def nsp_sums(logits_Bx2, labels_B, weights_B=None):
  """Sums over the batch: dict(loss_sum, correct_sum, count).

  Packed rows pass logits [B, K, 2], labels [B, K] and weights [B, K] (0 for an empty slot).
  """
  labels = labels_B.reshape(-1)
  logits = logits_Bx2.reshape(-1, 2)
  weights = jnp.ones(labels.shape, jnp.float32) if weights_B is None else weights_B.reshape(-1).astype(jnp.float32)
  xent = _cross_entropy(logits, labels)
  correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
  return {"loss_sum": jnp.sum(xent * weights), "correct_sum": jnp.sum(correct * weights),
          "count": jnp.sum(weights)}


def mlm_loss(logits_BxPxV, labels_BxP, weights_BxP):
  """Weighted cross-entropy over masked positions; returns (loss, accuracy)."""
  s = mlm_sums(logits_BxPxV, labels_BxP, weights_BxP)
  denom = jnp.maximum(s["weight_sum"], 1e-5)
  return s["loss_sum"] / denom, s["correct_sum"] / denom


def nsp_loss(logits_Bx2, labels_B):
  """Mean cross-entropy of the next-sentence classifier; returns (loss, accuracy)."""
  s = nsp_sums(logits_Bx2, labels_B)
  return s["loss_sum"] / s["count"], s["correct_sum"] / s["count"]
