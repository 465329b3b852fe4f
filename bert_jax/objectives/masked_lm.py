"""Masked language modelling, optionally with a sentence-pair task on the pooled [CLS]:
  mlm      MLM only (RoBERTa)
  mlm_nsp  MLM + next-sentence prediction (BERT)
  mlm_sop  MLM + sentence-order prediction (ALBERT)
The sentence label comes from the data's `next_sentence_labels` either way: prepare writes NSP or SOP
labels (data.mode). Loss = MLM cross-entropy averaged over masked tokens + sentence cross-entropy averaged
over instances (packed rows: their real instance slots).

metrics.jsonl fields: mlm_loss, mlm_accuracy, and for a sentence task <task>_loss, <task>_accuracy.
"""

import jax
import jax.numpy as jnp

from bert_jax.models import pretraining
from bert_jax.models.config import EncoderConfig, trunk_flops_per_sequence
from bert_jax.objectives import base
from bert_jax.objectives.base import ratio

MLM_KEYS = ("input_ids", "input_mask", "segment_ids", "masked_lm_positions", "masked_lm_ids", "masked_lm_weights")


def cross_entropy(logits_NxC, labels_N):
  logits = logits_NxC.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  true_logit = jnp.take_along_axis(logits, labels_N[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return log_z - true_logit


def mlm_sums(logits_BxPxV, labels_BxP, weights_BxP):
  """Weighted sums over masked positions: dict(loss_sum, correct_sum, weight_sum)."""
  weights = weights_BxP.astype(jnp.float32)
  xent = cross_entropy(logits_BxPxV, labels_BxP)
  correct = (jnp.argmax(logits_BxPxV, axis=-1) == labels_BxP).astype(jnp.float32)
  return {"loss_sum": jnp.sum(xent * weights), "correct_sum": jnp.sum(correct * weights),
          "weight_sum": jnp.sum(weights)}


def sentence_sums(logits_Bx2, labels_B, weights_B=None):
  """Sums over instances: dict(loss_sum, correct_sum, count). Packed rows pass [B, K, 2], [B, K], [B, K]."""
  labels = labels_B.reshape(-1)
  logits = logits_Bx2.reshape(-1, 2)
  weights = jnp.ones(labels.shape, jnp.float32) if weights_B is None else weights_B.reshape(-1).astype(jnp.float32)
  xent = cross_entropy(logits, labels)
  correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
  return {"loss_sum": jnp.sum(xent * weights), "correct_sum": jnp.sum(correct * weights), "count": jnp.sum(weights)}


class MaskedLM(base.Objective):
  def __init__(self, config: EncoderConfig, seq_len: int, predictions: int, sentence_task: str | None = None):
    if sentence_task not in (None, "nsp", "sop"):
      raise ValueError(f"sentence_task {sentence_task!r} is not None, 'nsp' or 'sop'")
    self.config, self.seq_len, self.predictions, self.sentence_task = config, seq_len, predictions, sentence_task
    self.name = "mlm" + (f"_{sentence_task}" if sentence_task else "")
    self.heads = ("mlm",) + ((sentence_task,) if sentence_task else ())
    self.model = pretraining.EncoderWithHeads(config, self.heads)
    self.batch_keys = MLM_KEYS + (("next_sentence_labels",) if sentence_task else ())
    self.log_fields = ("mlm_accuracy",) + ((f"{sentence_task}_accuracy",) if sentence_task else ())

  def check_data(self, manifest):
    """A sentence task needs data prepared with it: NSP labels are not SOP labels, full sentences have none."""
    if manifest is None and self.sentence_task:
      print(f"WARNING: the train records have no manifest.json, so nothing checks that their "
            f"next_sentence_labels are {self.sentence_task.upper()} labels (data.mode={self.sentence_task!r})")
    mode = ((manifest or {}).get("instances") or {}).get("mode")
    if self.sentence_task and mode and mode != self.sentence_task:
      raise ValueError(f"objective {self.name!r} needs data prepared with data.mode={self.sentence_task!r}, but the "
                       f"train records were prepared with mode {mode!r}; prepare them again or change train.objective")

  def init_params(self, rng):
    ids = jnp.zeros((1, self.seq_len), jnp.int32)
    return self.model.init(rng, ids, ids, ids, jnp.zeros((1, self.predictions), jnp.int32))["params"]

  def apply(self, params, batch, rng, deterministic):
    return self.model.apply(
        {"params": params}, batch["input_ids"], batch["input_mask"], batch["segment_ids"],
        batch["masked_lm_positions"], position_ids_BxT=batch.get("position_ids"),
        attention_segments_BxT=batch.get("attention_segments"), cls_positions_BxK=batch.get("nsp_positions"),
        deterministic=deterministic, rngs={"dropout": rng})

  def loss_sums(self, params, batch, rng, deterministic):
    out = self.apply(params, batch, rng, deterministic)
    sums = {"mlm": mlm_sums(out["mlm_logits"], batch["masked_lm_ids"], batch["masked_lm_weights"])}
    if self.sentence_task:
      t = self.sentence_task
      sums[t] = sentence_sums(out[f"{t}_logits"], batch["next_sentence_labels"], batch.get("nsp_weights"))
    return sums

  def denominators(self, batch):
    d = {"mlm": jnp.maximum(jnp.sum(batch["masked_lm_weights"].astype(jnp.float32)), 1e-5)}
    if self.sentence_task:  # instances: rows, or the real instance slots of packed rows
      d["sentence"] = (jnp.maximum(jnp.sum(batch["nsp_weights"].astype(jnp.float32)), 1.0) if "nsp_weights" in batch
                       else jnp.float32(batch["input_ids"].shape[0]))
    return d

  def loss(self, sums, denominators):
    loss = sums["mlm"]["loss_sum"] / denominators["mlm"]
    if self.sentence_task:
      loss += sums[self.sentence_task]["loss_sum"] / denominators["sentence"]
    return loss

  def summaries(self, sums):
    m = sums["mlm"]
    out = {"mlm_loss": ratio(m["loss_sum"], m["weight_sum"]), "mlm_accuracy": ratio(m["correct_sum"], m["weight_sum"])}
    out["loss"] = out["mlm_loss"]
    if self.sentence_task:
      t, s = self.sentence_task, sums[self.sentence_task]
      out[f"{t}_loss"] = ratio(s["loss_sum"], s["count"])
      out[f"{t}_accuracy"] = ratio(s["correct_sum"], s["count"])
      out["loss"] = out["loss"] + out[f"{t}_loss"]
    return out

  def flops_per_sequence(self):
    """Trunk + MLM head 6*P*(H*E + E*V) at the masked positions (+ pooler and classifier 6*(H*H + 2*H))."""
    c = self.config
    H, E, V = c.hidden_size, c.embedding_width, c.vocab_size
    flops = trunk_flops_per_sequence(c, self.seq_len) + 6 * self.predictions * (H * E + E * V)
    if self.sentence_task:
      flops += 6 * (H * H + 2 * H)
    return float(flops)
