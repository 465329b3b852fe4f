"""Token, position, token-type (and ERNIE's task-type) embeddings, summed, normalised and dropped out.

The word table is gathered in fp32 (its gradient is an fp32 scatter-add); the small position and
token-type tables are one-hot matmuls (a scatter-add there serialises on a few rows).
Width is config.embedding_width: the hidden size, or ALBERT's smaller factorized E.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from bert_jax.layers import common
from bert_jax.layers import dropout as dropout_lib
from bert_jax.layers import peft as peft_lib


class GatherEmbed(nn.Embed):
  """nn.Embed that gathers rows from the param-dtype table and casts after.

  nn.Embed casts the whole table to the compute dtype first, so its gradient is a bf16 scatter-add,
  which GPUs run as compare-and-swap loops: 19% of a BERT-large step on an H100 (bench/RESULTS.md).
  """

  def __call__(self, ids):
    return jnp.take(self.embedding, ids, axis=0).astype(self.dtype)


class OneHotEmbed(nn.Embed):
  """Lookup as a one-hot matmul, for small tables (positions, token types): its gradient is a dense
  [rows, hidden] product instead of a scatter-add that serialises on a few rows."""

  def __call__(self, ids):
    one_hot = jax.nn.one_hot(ids, self.num_embeddings, dtype=self.dtype)
    return jnp.einsum("...v,vh->...h", one_hot, jnp.asarray(self.embedding, self.dtype))


class Embeddings(nn.Module):
  """(ids, segments, positions) [B, T] -> [B, T, E]; `word_table()` is the [V, E] table for a tied decoder."""
  config: "object"
  deterministic: bool = True

  def setup(self):
    c = self.config
    embed = lambda cls, size, axes: cls(size, c.embedding_width, dtype=c.dtype, param_dtype=c.param_dtype,
                                        embedding_init=common.normal_init(c, axes))
    self.word_embeddings = embed(GatherEmbed, c.padded_vocab_size, ("vocab", "embed"))
    if c.position_encoding == "absolute":  # relative positions (NEZHA) live in the attention, not here
      self.position_embeddings = embed(OneHotEmbed, c.max_position_embeddings, (None, "embed"))
    # One type (RoBERTa) is a single row added to every token, whatever the segment ids say; none (DistilBERT)
    # is no table at all.
    if c.type_vocab_size:
      self.token_type_embeddings = embed(OneHotEmbed, c.type_vocab_size, (None, "embed"))
    if c.task_type_vocab_size:  # ERNIE's task types (HF use_task_id)
      self.task_type_embeddings = embed(OneHotEmbed, c.task_type_vocab_size, (None, "embed"))
    if c.prompt_kind == "prompt":
      self.prompt_embeddings = peft_lib.prompt_param(self, c)
    self.layer_norm = common.layer_norm(c, None)
    self.dropout = dropout_lib.Dropout(c.hidden_dropout, deterministic=self.deterministic)

  def __call__(self, input_ids_BxT, segment_ids_BxT, position_ids_BxT):
    x = self.word_embeddings(input_ids_BxT)
    if self.config.prompt_kind == "prompt":  # soft prompt first: positions and segments are P longer than ids
      x = peft_lib.prepend_prompt(self.prompt_embeddings, x)
    if self.config.position_encoding == "absolute":  # relative: position ids are unused (distances are j - i)
      x += self.position_embeddings(position_ids_BxT)
    if self.config.type_vocab_size:
      segments = segment_ids_BxT if self.config.type_vocab_size > 1 else jnp.zeros_like(segment_ids_BxT)
      x += self.token_type_embeddings(segments)
    if self.config.task_type_vocab_size:
      # Task id 0 on every token, as HF's ERNIE when no task_type_ids are given: pretraining here is one task.
      x += self.task_type_embeddings(jnp.zeros_like(segment_ids_BxT))
    x = self.layer_norm(x)
    return self.dropout(x)

  def word_table(self):
    return self.word_embeddings.embedding
