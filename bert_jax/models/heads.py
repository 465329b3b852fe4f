"""Pretraining heads on the trunk's outputs; an objective decides which it builds and what it feeds them.

  MlmHead           h [B, P, H] -> transform (H -> E) -> act -> LayerNorm -> tied decoder [B, P, V] + bias
  SentencePairHead  pooled [B, H] (or [B, K, H] for packed rows) -> [.., 2] (NSP or ALBERT's SOP)
"""

import flax.linen as nn
import jax.numpy as jnp

from bert_jax.layers import common
from bert_jax.models.config import EncoderConfig


class MlmHead(nn.Module):
  """Masked-LM logits over the real (unpadded) vocabulary, decoded with the word embedding table."""
  config: EncoderConfig

  @nn.compact
  def __call__(self, h_BxPxH, word_table_VxE):
    c = self.config
    h = common.activation(c.hidden_act)(common.dense(c, c.embedding_width, ("embed", "mlp"), "transform")(h_BxPxH))
    h = common.layer_norm(c, "layer_norm")(h)
    logits = jnp.einsum("...e,ve->...v", h, jnp.asarray(word_table_VxE, c.dtype))
    bias = self.param("output_bias", common.zeros_init(("vocab",)), (c.padded_vocab_size,), c.param_dtype)
    logits = logits + jnp.asarray(bias, logits.dtype)
    return logits[..., :c.vocab_size]  # padded rows never win the softmax


class SentencePairHead(nn.Module):
  """Two-way classifier on the pooled [CLS]: next-sentence (NSP) or sentence-order (SOP) prediction."""
  config: EncoderConfig

  @nn.compact
  def __call__(self, pooled_BxH):
    return common.dense(self.config, 2, ("mlp", None), "classifier")(pooled_BxH)
