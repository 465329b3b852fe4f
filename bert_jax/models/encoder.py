"""The shared encoder trunk: embeddings (factorized for ALBERT), the layer stack, and the pooler.

Pretraining objectives and fine-tuning heads all run this one module under the name `encoder`:
  encoder/embeddings/{word_embeddings, position_embeddings, token_type_embeddings}/embedding, layer_norm
  encoder/embedding_projection          (only when embedding_size is set: ALBERT's E -> H)
  encoder/<layer stack>                 (see layers/transformer.py: layer_{i}, layers/layer, shared_layer, ...)
  encoder/pooler                        (created only when a head calls pool())
"""

import flax.linen as nn
import jax.numpy as jnp

from bert_jax.layers import attention as attention_lib
from bert_jax.layers import common
from bert_jax.layers import embeddings as embeddings_lib
from bert_jax.layers import transformer
from bert_jax.models.config import EncoderConfig


def attention_mask(input_mask_BxT, attention_segments_BxT=None) -> attention_lib.AttentionMask:
  """Padding mask, or for packed rows a mask that keeps attention inside each instance."""
  if attention_segments_BxT is None:
    return attention_lib.AttentionMask(attention_lib.padding_mask_Bx1x1xS(input_mask_BxT),
                                       jnp.sum(input_mask_BxT, axis=-1, dtype=jnp.int32), input_mask_BxT)
  return attention_lib.AttentionMask(attention_lib.segment_mask_Bx1xTxS(attention_segments_BxT, input_mask_BxT),
                                     None, attention_segments_BxT * input_mask_BxT)


class Encoder(nn.Module):
  """[B, T] ids -> [B, T, H] hidden states; pool() and word_table() serve the heads."""
  config: EncoderConfig
  deterministic: bool = True

  def setup(self):
    c = self.config
    self.embeddings = embeddings_lib.Embeddings(c, self.deterministic)
    if c.embedding_size:
      self.embedding_projection = common.dense(c, c.hidden_size, ("embed", "mlp"), None)
    self.pooler = common.dense(c, c.hidden_size, ("embed", "mlp"), None)
    for name, module in transformer.build_stack(c, self.deterministic).items():
      setattr(self, name, module)  # the stack's own parameter names, directly under encoder/

  def __call__(self, input_ids_BxT, input_mask_BxT, segment_ids_BxT, *, position_ids_BxT=None,
               attention_segments_BxT=None):
    """position_ids_BxT defaults to 0..T-1 (plus the family's offset); attention_segments_BxT (packed rows)
    restricts attention to tokens with the same id."""
    c = self.config
    seq_len = input_ids_BxT.shape[1]
    if seq_len > c.max_sequence_length:
      raise ValueError(f"sequence length {seq_len} exceeds the position table ({c.max_position_embeddings} "
                       f"positions, offset {c.position_offset}); truncate inputs or raise max_position_embeddings")
    if position_ids_BxT is None:
      position_ids_BxT = jnp.broadcast_to(jnp.arange(seq_len, dtype=jnp.int32), input_ids_BxT.shape)
    x = self.embeddings(input_ids_BxT, segment_ids_BxT, position_ids_BxT + c.position_offset)
    if c.embedding_size:
      x = self.embedding_projection(x)
    x = common.constrain_BxTxH(x)
    mask = attention_mask(input_mask_BxT, attention_segments_BxT)
    return transformer.run_stack(c, lambda name: getattr(self, name), x, mask)

  def pool(self, x_BxTxH, cls_positions_BxK=None):
    """tanh(dense(h[CLS])) [B, H]; packed rows give each instance's [CLS] position: [B, K, H]."""
    cls = x_BxTxH[:, 0] if cls_positions_BxK is None else common.gather_rows(x_BxTxH, cls_positions_BxK)
    return jnp.tanh(self.pooler(cls))

  def word_table(self):
    """The [V_padded, E] word embedding table, for decoders tied to it."""
    return self.embeddings.word_table()
