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
from bert_jax.layers import peft as peft_lib
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
  # Another encoder's Embeddings module to read instead of owning one (ELECTRA's generator shares the
  # discriminator's); its params stay where that module lives.
  shared_embeddings: nn.Module | None = None

  def setup(self):
    c = self.config
    if self.shared_embeddings is None:
      self.embeddings = embeddings_lib.Embeddings(c, self.deterministic)
    if c.embedding_size:
      self.embedding_projection = common.dense(c, c.hidden_size, ("embed", "mlp"), None)
    self.pooler = common.dense(c, c.hidden_size, ("embed", "mlp"), None)
    for name, module in transformer.build_stack(c, self.deterministic).items():
      setattr(self, name, module)  # the stack's own parameter names, directly under encoder/

  def __call__(self, input_ids_BxT, input_mask_BxT, segment_ids_BxT, *, position_ids_BxT=None,
               attention_segments_BxT=None, keep_prompt_outputs=False):
    """position_ids_BxT defaults to 0..T-1 (plus the family's offset; RoBERTa counts non-pad ids, as HF); attention_segments_BxT (packed rows)
    restricts attention to tokens with the same id. With a soft prompt (prompt_kind='prompt') the output
    leaves out the P prompt positions unless keep_prompt_outputs: then it is [B, P+T, H], position 0 being
    the first prompt token (what HF peft's sequence classifiers pool)."""
    c = self.config
    seq_len = input_ids_BxT.shape[1] + peft_lib.prompt_tokens(c)
    if seq_len > c.max_sequence_length:
      raise ValueError(f"sequence length {seq_len} exceeds the position table ({c.max_position_embeddings} "
                       f"positions, offset {c.position_offset}); truncate inputs or raise max_position_embeddings"
                       + (f" (the soft prompt takes {c.prompt_length})" if peft_lib.prompt_tokens(c) else ""))
    if peft_lib.prompt_tokens(c):
      input_mask_BxT, segment_ids_BxT, position_ids_BxT = peft_lib.extend_for_prompt(
          c, input_mask_BxT, segment_ids_BxT, position_ids_BxT, attention_segments_BxT)
    if position_ids_BxT is None and c.position_padding_idx is not None:
      # HF RoBERTa: real tokens count from padding_idx + 1 wherever padding sits (left-padded rows too); padding
      # tokens take padding_idx. Ids offset here, as explicit position ids are.
      real = (input_ids_BxT != c.position_padding_idx).astype(jnp.int32)
      position_ids_BxT = jnp.cumsum(real, axis=-1, dtype=jnp.int32) * real + c.position_padding_idx - c.position_offset
    if position_ids_BxT is None:
      position_ids_BxT = jnp.broadcast_to(jnp.arange(seq_len, dtype=jnp.int32), segment_ids_BxT.shape)
    x = self._embeddings()(input_ids_BxT, segment_ids_BxT, position_ids_BxT + c.position_offset)
    if c.embedding_size:
      x = self.embedding_projection(x)
    x = common.constrain_BxTxH(x)
    mask = attention_mask(input_mask_BxT, attention_segments_BxT)
    x = transformer.run_stack(c, lambda name: getattr(self, name), x, mask)
    if keep_prompt_outputs or not peft_lib.prompt_tokens(c):
      return x
    return x[:, peft_lib.prompt_tokens(c):]

  def pool(self, x_BxTxH, cls_positions_BxK=None):
    """tanh(dense(h[CLS])) [B, H]; packed rows give each instance's [CLS] position: [B, K, H]."""
    cls = x_BxTxH[:, 0] if cls_positions_BxK is None else common.gather_rows(x_BxTxH, cls_positions_BxK)
    return jnp.tanh(self.pooler(cls))

  def word_table(self):
    """The [V_padded, E] word embedding table, for decoders tied to it."""
    return self._embeddings().word_table()

  def _embeddings(self):
    return self.embeddings if self.shared_embeddings is None else self.shared_embeddings
