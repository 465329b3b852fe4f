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


def mlm_logits_at(head: MlmHead, x_BxTxH, word_table_VxE, positions_BxP=None):
  """The head's logits at the masked positions [B, P, V] (positions None: at all T). Rows are gathered before the
  head unless config.mlm_all_positions asks for HF's way (the head at every position, then a gather)."""
  gather_first = positions_BxP is not None and not head.config.mlm_all_positions
  logits = head(common.gather_rows(x_BxTxH, positions_BxP) if gather_first else x_BxTxH, word_table_VxE)
  if positions_BxP is not None and not gather_first:
    logits = jnp.take_along_axis(logits, positions_BxP[..., None].astype(jnp.int32), axis=1)
  return logits


class SentencePairHead(nn.Module):
  """Two-way classifier on the pooled [CLS]: next-sentence (NSP) or sentence-order (SOP) prediction."""
  config: EncoderConfig

  @nn.compact
  def __call__(self, pooled_BxH):
    return common.dense(self.config, 2, ("mlp", None), "classifier")(pooled_BxH)
