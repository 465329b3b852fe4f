"""Fine-tuning models: the pretrained encoder (same parameter names) plus a task head.

  BertForSequenceClassification  pooled [CLS] -> dropout -> classifier [B, num_labels] (1 label: regression)
  BertForTokenClassification     sequence_output -> dropout -> classifier [B, T, num_labels]
  BertForQuestionAnswering       sequence_output -> qa_outputs [B, T, 2] -> start/end logits [B, T]

The embeddings/encoder/pooler subtrees are exactly BertForPreTraining's, so a pretraining checkpoint's
params load into them unchanged; the head's params are new.
"""

import flax.linen as nn
import jax.numpy as jnp

from bert_jax import attention as attention_lib
from bert_jax import dropout as dropout_lib
from bert_jax.model import BertConfig, Embeddings, Encoder, _dense

HEAD_PARAMS = ("classifier", "qa_outputs")  # everything else comes from pretraining
ENCODER_PARAMS = ("embeddings", "encoder", "pooler")


class _Trunk(nn.Module):
  """Embeddings + encoder + pooler under their pretraining names, at the caller's scope."""
  config: BertConfig

  def encode(self, input_ids_BxT, input_mask_BxT, segment_ids_BxT, deterministic):
    c = self.config
    positions = jnp.broadcast_to(jnp.arange(input_ids_BxT.shape[1], dtype=jnp.int32), input_ids_BxT.shape)
    mask = attention_lib.AttentionMask(attention_lib.padding_mask_Bx1x1xS(input_mask_BxT),
                                       jnp.sum(input_mask_BxT, axis=-1, dtype=jnp.int32), input_mask_BxT)
    x, _ = Embeddings(c, deterministic, name="embeddings")(input_ids_BxT, segment_ids_BxT, positions)
    x = Encoder(c, deterministic, name="encoder")(x, mask)
    pooled = jnp.tanh(_dense(c, c.hidden_size, ("embed", "mlp"), "pooler")(x[:, 0]))
    return x, pooled


class BertForSequenceClassification(_Trunk):
  num_labels: int = 2

  @nn.compact
  def __call__(self, input_ids_BxT, input_mask_BxT, segment_ids_BxT, *, deterministic=True):
    _, pooled = self.encode(input_ids_BxT, input_mask_BxT, segment_ids_BxT, deterministic)
    pooled = dropout_lib.Dropout(self.config.hidden_dropout, deterministic=deterministic)(pooled)
    logits = _dense(self.config, self.num_labels, ("mlp", None), "classifier")(pooled)
    return {"logits": logits.astype(jnp.float32)}


class BertForTokenClassification(_Trunk):
  num_labels: int = 2

  @nn.compact
  def __call__(self, input_ids_BxT, input_mask_BxT, segment_ids_BxT, *, deterministic=True):
    x, _ = self.encode(input_ids_BxT, input_mask_BxT, segment_ids_BxT, deterministic)
    x = dropout_lib.Dropout(self.config.hidden_dropout, deterministic=deterministic)(x)
    logits = _dense(self.config, self.num_labels, ("embed", None), "classifier")(x)
    return {"logits": logits.astype(jnp.float32)}


class BertForQuestionAnswering(_Trunk):
  num_labels: int = 2  # start and end; kept for a uniform constructor

  @nn.compact
  def __call__(self, input_ids_BxT, input_mask_BxT, segment_ids_BxT, *, deterministic=True):
    x, _ = self.encode(input_ids_BxT, input_mask_BxT, segment_ids_BxT, deterministic)
    logits = _dense(self.config, 2, ("embed", None), "qa_outputs")(x).astype(jnp.float32)
    # Padding can never be an answer boundary.
    logits = jnp.where(input_mask_BxT[..., None] > 0, logits, -1e9)
    return {"start_logits": logits[..., 0], "end_logits": logits[..., 1]}


MODELS = {"classification": BertForSequenceClassification, "regression": BertForSequenceClassification,
          "tagging": BertForTokenClassification, "qa": BertForQuestionAnswering}
