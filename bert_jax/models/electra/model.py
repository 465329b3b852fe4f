"""ELECTRA's modules: the replaced-token-detection head, one model with chosen heads (what HF export checks),
and the generator + discriminator pair trained in one step.

  ElectraWithHeads    heads ⊆ {"mlm", "rtd"}: ("rtd",) is the discriminator (HF ElectraForPreTraining),
                      ("mlm",) the generator (ElectraForMaskedLM), () the bare trunk (ElectraModel)
  ElectraPretrainer   params {encoder: discriminator trunk (owns the embeddings), rtd: its head,
                      generator: {encoder: trunk without embeddings, mlm: head tied to the shared word table}}
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bert_jax.layers import common
from bert_jax.models import heads as heads_lib
from bert_jax.models.config import EncoderConfig
from bert_jax.models.encoder import Encoder

HEADS = ("mlm", "rtd")


class RtdHead(nn.Module):
  """h [B, T, H] -> dense H -> H -> act -> dense H -> 1: a replaced-or-original logit per token [B, T]."""
  config: EncoderConfig

  @nn.compact
  def __call__(self, h_BxTxH):
    c = self.config
    h = common.activation(c.hidden_act)(common.dense(c, c.hidden_size, ("embed", "mlp"), "transform")(h_BxTxH))
    return common.dense(c, 1, ("mlp", None), "classifier")(h)[..., 0]


class ElectraWithHeads(nn.Module):
  """One ELECTRA model: the trunk under `encoder` plus the chosen heads.

  Output: {"sequence_output": [B, T, H], "mlm_logits": [B, P or T, V], "rtd_logits": [B, T]}."""
  config: EncoderConfig
  heads: tuple[str, ...] = ("rtd",)
  shared_embeddings: Any = None  # the discriminator's Embeddings, when this is the generator in training

  @nn.compact
  def __call__(self, input_ids_BxT, input_mask_BxT, segment_ids_BxT, masked_lm_positions_BxP=None, *,
               position_ids_BxT=None, attention_segments_BxT=None, deterministic=True):
    unknown = set(self.heads) - set(HEADS)
    if unknown:
      raise ValueError(f"unknown ELECTRA heads {sorted(unknown)}; choose from {HEADS}")
    c = self.config
    encoder = Encoder(c, deterministic, self.shared_embeddings, name="encoder")
    x = encoder(input_ids_BxT, input_mask_BxT, segment_ids_BxT, position_ids_BxT=position_ids_BxT,
                attention_segments_BxT=attention_segments_BxT)
    out = {"sequence_output": x}
    if "mlm" in self.heads:
      out["mlm_logits"] = heads_lib.mlm_logits_at(heads_lib.MlmHead(c, name="mlm"), x, encoder.word_table(),
                                                  masked_lm_positions_BxP)
    if "rtd" in self.heads:
      out["rtd_logits"] = RtdHead(c, name="rtd")(x)
    return out


def scatter_at(ids_BxT, positions_BxP, values_BxP, weights_BxP):
  """ids with values written at the positions whose weight is > 0; padded slots (weight 0) write nothing."""
  batch, seq = ids_BxT.shape
  rows = jnp.broadcast_to(jnp.arange(batch)[:, None], positions_BxP.shape)
  cols = jnp.where(weights_BxP > 0, positions_BxP, seq)  # out of range: dropped
  return jnp.asarray(ids_BxT).at[rows, cols].set(jnp.asarray(values_BxP).astype(ids_BxT.dtype), mode="drop")


class ElectraPretrainer(nn.Module):
  """Generator MLM on the masked input, tokens sampled from it at the masked positions (no gradient through
  the sample), and the discriminator on the result. Needs a "sample" rng (and "dropout" when training).

  Output: mlm_logits [B, P, V] (generator), sampled_ids [B, P], corrupted_ids [B, T] (the discriminator's
  input), rtd_labels [B, T] (1 where corrupted differs from the original), rtd_logits [B, T]."""
  discriminator: EncoderConfig
  generator: EncoderConfig
  temperature: float = 1.0

  @nn.compact
  def __call__(self, input_ids_BxT, input_mask_BxT, segment_ids_BxT, masked_lm_positions_BxP, masked_lm_ids_BxP,
               masked_lm_weights_BxP, *, position_ids_BxT=None, attention_segments_BxT=None, deterministic=True):
    trunk = dict(position_ids_BxT=position_ids_BxT, attention_segments_BxT=attention_segments_BxT)
    discriminator = Encoder(self.discriminator, deterministic, name="encoder")
    generator = ElectraWithHeads(self.generator, ("mlm",), discriminator.embeddings, name="generator")
    mlm_logits = generator(input_ids_BxT, input_mask_BxT, segment_ids_BxT, masked_lm_positions_BxP,
                           deterministic=deterministic, **trunk)["mlm_logits"]
    # Gumbel-max sampling from softmax(logits / temperature).
    scaled = jax.lax.stop_gradient(mlm_logits.astype(jnp.float32)) / self.temperature
    sampled = jax.random.categorical(self.make_rng("sample"), scaled, axis=-1).astype(input_ids_BxT.dtype)
    original = scatter_at(input_ids_BxT, masked_lm_positions_BxP, masked_lm_ids_BxP, masked_lm_weights_BxP)
    corrupted = scatter_at(original, masked_lm_positions_BxP, sampled, masked_lm_weights_BxP)
    labels = ((corrupted != original) & (input_mask_BxT > 0)).astype(jnp.int32)
    x = discriminator(corrupted, input_mask_BxT, segment_ids_BxT, **trunk)
    rtd_logits = RtdHead(self.discriminator, name="rtd")(x)
    return {"mlm_logits": mlm_logits, "sampled_ids": sampled, "corrupted_ids": corrupted, "rtd_labels": labels,
            "rtd_logits": rtd_logits}
