"""Fine-tuning models: the shared encoder trunk (models/encoder.py, same `encoder/` params as pretraining)
plus a task head, for every family.

  SequenceClassifier  [CLS] pooled -> dropout -> classifier [B, num_labels] (1 label: regression).
                      Families without a pooler (RoBERTa) use a head-owned dense+tanh on <s> instead,
                      as HF's RobertaClassificationHead does (dropouts per family: EncoderConfig). classifier_pooling='mean' feeds the mean of
                      the real tokens' outputs to the classifier instead (no pooler, no dense).
  TokenClassifier     sequence_output -> dropout -> classifier [B, T, num_labels]
  QuestionAnswering   sequence_output (-> dropout, DistilBERT) -> qa_outputs [B, T, 2] -> start/end logits [B, T]
  MultipleChoice      [B, C, T] -> the sequence classifier with one output on each choice's pair -> logits [B, C]
"""

import flax.linen as nn
import jax.numpy as jnp

from bert_jax.layers import common
from bert_jax.layers import dropout as dropout_lib
from bert_jax.models.config import EncoderConfig
from bert_jax.models.encoder import Encoder

POOLINGS = ("cls", "mean")
ENCODER_PARAMS = ("encoder",)  # everything else is the head's, new at fine-tuning


def mean_over_tokens(x_BxTxH, input_mask_BxT):
  """[B, H] float32: the mean of the outputs at real (mask 1) positions."""
  weights_BxTx1 = input_mask_BxT[..., None].astype(jnp.float32)
  return jnp.sum(x_BxTxH.astype(jnp.float32) * weights_BxTx1, axis=1) / jnp.maximum(jnp.sum(weights_BxTx1, 1), 1.0)


class SequenceClassifier(nn.Module):
  config: EncoderConfig
  num_labels: int = 2

  @nn.compact
  def __call__(self, input_ids_BxT, input_mask_BxT, segment_ids_BxT, *, deterministic=True):
    return {"logits": self.classify(input_ids_BxT, input_mask_BxT, segment_ids_BxT, deterministic)}

  def classify(self, input_ids_BxT, input_mask_BxT, segment_ids_BxT, deterministic, input_dropout=True):
    """[B, num_labels] float32 logits; builds the encoder and head inside the calling compact method."""
    c = self.config
    dropout = lambda x, rate=c.hidden_dropout: dropout_lib.Dropout(rate, deterministic=deterministic)(x)
    encoder = Encoder(c, deterministic, name="encoder")
    if c.classifier_pooling not in POOLINGS:
      raise ValueError(f"classifier_pooling {c.classifier_pooling!r} is not one of {POOLINGS}")
    mean = c.classifier_pooling == "mean"
    # With a soft prompt, position 0 is its first token, pooled as HF peft's sequence classifiers do.
    x = encoder(input_ids_BxT, input_mask_BxT, segment_ids_BxT, keep_prompt_outputs=not mean)
    if mean:  # over the text's own tokens: a soft prompt's outputs are left out
      pooled = mean_over_tokens(x, input_mask_BxT)
    elif c.use_pooler:
      pooled = encoder.pool(x)
    else:
      act = {"tanh": jnp.tanh, "relu": nn.relu, "gelu": common.activation("gelu")}[c.classifier_activation]
      first = dropout(x[:, 0]) if c.classifier_input_dropout and input_dropout else x[:, 0]
      pooled = act(common.dense(c, c.hidden_size, ("embed", "mlp"), "classifier_dense")(first))
    # a family's own classifier rate applies only while dropout is on: hidden_dropout=0 means no dropout anywhere
    rate = c.classifier_dropout if c.classifier_dropout is not None and c.hidden_dropout else c.hidden_dropout
    logits = common.dense(c, self.num_labels, ("mlp", None), "classifier")(dropout(pooled, rate))
    return logits.astype(jnp.float32)


class MultipleChoice(SequenceClassifier):
  """Each choice's pair through the sequence classifier's encoder and head with one output: [B, C] scores, for a
  softmax over the choices. Inputs are [B, C, T] (any leading dims). Without a pooler the head's dense reads
  [CLS] undropped, as HF's RobertaForMultipleChoice (its pooler) and ElectraForMultipleChoice (its summary) do."""
  num_labels: int = 1

  @nn.compact
  def __call__(self, input_ids_BxCxT, input_mask_BxCxT, segment_ids_BxCxT, *, deterministic=True):
    if self.num_labels != 1:
      raise ValueError(f"a multiple-choice head scores each choice with one output, not {self.num_labels}")
    flat = [x.reshape(-1, x.shape[-1]) for x in (input_ids_BxCxT, input_mask_BxCxT, segment_ids_BxCxT)]
    logits = self.classify(*flat, deterministic, input_dropout=False)
    return {"logits": logits.reshape(input_ids_BxCxT.shape[:-1])}


class TokenClassifier(nn.Module):
  config: EncoderConfig
  num_labels: int = 2

  @nn.compact
  def __call__(self, input_ids_BxT, input_mask_BxT, segment_ids_BxT, *, deterministic=True):
    c = self.config
    x = Encoder(c, deterministic, name="encoder")(input_ids_BxT, input_mask_BxT, segment_ids_BxT)
    x = dropout_lib.Dropout(c.hidden_dropout, deterministic=deterministic)(x)
    logits = common.dense(c, self.num_labels, ("embed", None), "classifier")(x)
    return {"logits": logits.astype(jnp.float32)}


class QuestionAnswering(nn.Module):
  config: EncoderConfig
  num_labels: int = 2  # start and end; kept for a uniform constructor

  @nn.compact
  def __call__(self, input_ids_BxT, input_mask_BxT, segment_ids_BxT, *, deterministic=True):
    x = Encoder(self.config, deterministic, name="encoder")(input_ids_BxT, input_mask_BxT, segment_ids_BxT)
    if self.config.qa_dropout and self.config.hidden_dropout:  # no dropout anywhere at hidden_dropout=0
      x = dropout_lib.Dropout(self.config.qa_dropout, deterministic=deterministic)(x)
    logits = common.dense(self.config, 2, ("embed", None), "qa_outputs")(x).astype(jnp.float32)
    # Padding can never be an answer boundary.
    logits = jnp.where(input_mask_BxT[..., None] > 0, logits, -1e9)
    return {"start_logits": logits[..., 0], "end_logits": logits[..., 1]}


MODELS = {"classification": SequenceClassifier, "regression": SequenceClassifier,
          "tagging": TokenClassifier, "qa": QuestionAnswering, "multiple_choice": MultipleChoice}
