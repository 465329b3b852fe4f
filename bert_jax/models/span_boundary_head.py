"""SpanBERT's span boundary objective (SBO) head (Joshi et al. 2020) and the model that trains it beside MLM.

Each masked token x_i of a masked span x_s..x_e is predicted from the encodings of the two tokens just outside the
span, x_{s-1} and x_{e+1}, and an embedding of its place in the span, p_{i-s} (0-based; the paper writes p_{i-s+1}):
  h0 = [x_{s-1}; x_{e+1}; p_{i-s}]               2H + D
  h1 = LayerNorm(act(W1 h0 + b1))                H
  y  = LayerNorm(act(W2 h1 + b2))                E (= H in BERT)
  logits = y W_word^T + bias                     the decoder tied to the word embeddings, with a bias of its own
Sizes and details follow facebookresearch/SpanBERT (pretraining/fairseq/models/pair_bert.py,
BertPairTargetPredictionHead, with the paper's command line): MAX_SPAN_TARGETS relative positions
(--max-pair-targets 15: a longer span's later tokens are no SBO targets), POSITION_EMBEDDING_SIZE = D
(--pair-positional-embedding-size 200), no dropout, the trunk's activation and LayerNorm epsilon, the last layer's
encodings. The boundaries themselves come from the batch's masked positions (objectives/span_boundary.py).

  SpanBoundaryHead          (x [B, T, H], boundaries, word table) -> SBO logits [B, P, V]
  EncoderWithSpanBoundary   the trunk under `encoder`, the MLM head under `mlm` and this head under `sbo`
  SIDE_FILE, SIDE_ROWS      HF has no class with an SBO head: export writes it beside model.safetensors in this
                            file, under our parameter paths and layout (kernels [in, out]), through these rows
"""

from typing import NamedTuple

import flax.linen as nn
import jax.numpy as jnp

from bert_jax.layers import common
from bert_jax.models import name_tables as nt
from bert_jax.models import pretraining
from bert_jax.models.config import EncoderConfig

SECTION = "sbo"
HEADS = ("mlm", SECTION)
MAX_SPAN_TARGETS = 15          # relative positions with an embedding (SpanBERT's --max-pair-targets)
POSITION_EMBEDDING_SIZE = 200  # D (SpanBERT's --pair-positional-embedding-size)
SIDE_FILE = "span_boundary_head.safetensors"
SIDE_LAYOUT_FILE = "span_boundary_head.json"

# our path (also the tensor's name in SIDE_FILE)   transform (the bias loses its padded vocabulary rows)
SIDE_ROWS = [(path, path, transform) for path, transform in [
    ("sbo/position_embeddings",    nt.identity),
    ("sbo/dense_1/kernel",         nt.identity),
    ("sbo/dense_1/bias",           nt.identity),
    ("sbo/layer_norm_1/scale",     nt.identity),
    ("sbo/layer_norm_1/bias",      nt.identity),
    ("sbo/dense_2/kernel",         nt.identity),
    ("sbo/dense_2/bias",           nt.identity),
    ("sbo/layer_norm_2/scale",     nt.identity),
    ("sbo/layer_norm_2/bias",      nt.identity),
    ("sbo/output_bias",            nt.vocab_rows),
]]
# Where each tensor sits in facebookresearch/SpanBERT's BertPairTargetPredictionHead (torch Linear weights are
# [out, in]: transpose our kernels), for the layout note written beside SIDE_FILE.
REFERENCE_NAMES = {
    "sbo/position_embeddings": "position_embeddings.weight",
    "sbo/dense_1/kernel": "mlp_layer_norm.linear1.weight (transposed)",
    "sbo/dense_1/bias": "mlp_layer_norm.linear1.bias",
    "sbo/layer_norm_1/scale": "mlp_layer_norm.layer_norm1.gamma",
    "sbo/layer_norm_1/bias": "mlp_layer_norm.layer_norm1.beta",
    "sbo/dense_2/kernel": "mlp_layer_norm.linear2.weight (transposed)",
    "sbo/dense_2/bias": "mlp_layer_norm.linear2.bias",
    "sbo/layer_norm_2/scale": "mlp_layer_norm.layer_norm2.gamma",
    "sbo/layer_norm_2/bias": "mlp_layer_norm.layer_norm2.beta",
    "sbo/output_bias": "bias",
}


class SpanBoundaries(NamedTuple):
  """Per masked slot [B, P]: the positions of the span's left (s-1) and right (e+1) boundary tokens and the slot's
  0-based place in its span (i - s), all clipped into range; `weights` is 0 where a slot has no SBO target."""
  left: jnp.ndarray
  right: jnp.ndarray
  offset: jnp.ndarray
  weights: jnp.ndarray


def one_token_spans(centers_BxP, seq_len: int) -> SpanBoundaries:
  """Each center read as a one-token span (its neighbours as boundaries): what the model uses when no boundaries
  are given (HF checks and shape inference)."""
  centers = jnp.asarray(centers_BxP, jnp.int32)
  return SpanBoundaries(jnp.maximum(centers - 1, 0), jnp.minimum(centers + 1, seq_len - 1), jnp.zeros_like(centers),
                        jnp.ones(centers.shape, jnp.float32))


class SpanBoundaryHead(nn.Module):
  """SBO logits over the real (unpadded) vocabulary at each slot, from its span's boundary encodings."""
  config: EncoderConfig

  @nn.compact
  def __call__(self, x_BxTxH, boundaries: SpanBoundaries, word_table_VxE):
    c = self.config
    act = common.activation(c.hidden_act)
    # The table is small (15 x 200) and 200 need not divide a mesh axis: replicated.
    table = self.param("position_embeddings", common.normal_init(c, (None, None)),
                       (MAX_SPAN_TARGETS, POSITION_EMBEDDING_SIZE), c.param_dtype)
    left = common.gather_rows(x_BxTxH, boundaries.left)
    right = common.gather_rows(x_BxTxH, boundaries.right)
    position = jnp.take(jnp.asarray(table, c.dtype), jnp.clip(boundaries.offset, 0, MAX_SPAN_TARGETS - 1), axis=0)
    h = jnp.concatenate([left, right, position.astype(left.dtype)], axis=-1)
    # 2H + D need not divide the fsdp axis either, so the input side of W1 is replicated.
    h = common.layer_norm(c, "layer_norm_1", "mlp")(act(common.dense(c, c.hidden_size, (None, "mlp"), "dense_1")(h)))
    h = common.layer_norm(c, "layer_norm_2")(act(common.dense(c, c.embedding_width, ("mlp", "embed"), "dense_2")(h)))
    logits = jnp.einsum("...e,ve->...v", h, jnp.asarray(word_table_VxE, c.dtype))
    bias = self.param("output_bias", common.zeros_init(("vocab",)), (c.padded_vocab_size,), c.param_dtype)
    logits = logits + jnp.asarray(bias, logits.dtype)
    return logits[..., :c.vocab_size]  # padded rows never win the softmax


class EncoderWithSpanBoundary(nn.Module):
  """The trunk with the MLM head (`mlm`, as models.pretraining.EncoderWithHeads has it) and the SBO head (`sbo`).

  Output: {"sequence_output": [B, T, H], "mlm_logits": [B, P or T, V], "sbo_logits": [B, P or T, V]}. Without
  span_boundaries each MLM position (every position when masked_lm_positions is None) is read as a one-token span.
  """
  config: EncoderConfig
  heads: tuple[str, ...] = HEADS

  @nn.compact
  def __call__(self, input_ids_BxT, input_mask_BxT, segment_ids_BxT, masked_lm_positions_BxP=None, *,
               span_boundaries: SpanBoundaries | None = None, position_ids_BxT=None, attention_segments_BxT=None,
               deterministic=True):
    unknown = set(self.heads) - set(HEADS)
    if unknown:
      raise ValueError(f"unknown heads {sorted(unknown)} beside the span boundary head; choose from {HEADS}")
    c = self.config
    encoder, out = pretraining.encode_with_mlm(c, "mlm" in self.heads, deterministic, input_ids_BxT, input_mask_BxT,
                                               segment_ids_BxT, masked_lm_positions_BxP, position_ids_BxT,
                                               attention_segments_BxT)
    x = out["sequence_output"]
    if SECTION in self.heads:
      if span_boundaries is None:
        seq_len = input_ids_BxT.shape[1]
        centers = (masked_lm_positions_BxP if masked_lm_positions_BxP is not None
                   else jnp.broadcast_to(jnp.arange(seq_len), input_ids_BxT.shape))
        span_boundaries = one_token_spans(centers, seq_len)
      out["sbo_logits"] = SpanBoundaryHead(c, name=SECTION)(x, span_boundaries, encoder.word_table())
    return out


def with_span_boundary(other_model):
  """A Family.model: EncoderWithSpanBoundary when the heads include `sbo`, else other_model(config, heads)."""
  def build(config: EncoderConfig, heads: tuple[str, ...]):
    heads = tuple(heads)
    return EncoderWithSpanBoundary(config, heads) if SECTION in heads else other_model(config, heads)
  return build


def layout_note(config: EncoderConfig, shapes: dict) -> dict:
  """What SIDE_LAYOUT_FILE says beside SIDE_FILE: the formula, the sizes and each tensor's shape and place in
  facebookresearch/SpanBERT's head ({name: shape} of the tensors written)."""
  return {
      "what": "SpanBERT span boundary objective (SBO) head, trained by bert_jax's mlm_sbo objective; the HF class "
              "beside it has no place for it",
      "formula": "h0 = [x_{s-1}; x_{e+1}; position_embeddings[i-s]]; h1 = layer_norm_1(act(h0 @ dense_1/kernel + "
                 "dense_1/bias)); y = layer_norm_2(act(h1 @ dense_2/kernel + dense_2/bias)); logits = y @ "
                 "word_embeddings^T + output_bias (x: the encoder's last layer; s..e: the masked span; i: the target)",
      "names": "bert_jax parameter paths; kernels are [in, out] (torch Linear weights are their transpose)",
      "act": config.hidden_act, "layer_norm_eps": config.layer_norm_eps, "max_span_targets": MAX_SPAN_TARGETS,
      "position_embedding_size": POSITION_EMBEDDING_SIZE, "decoder": "tied to the word embeddings",
      "tensors": {name: {"shape": list(shape), "facebookresearch/SpanBERT": "cls.pair_target_predictions."
                         + REFERENCE_NAMES[name]} for name, shape in sorted(shapes.items())},
  }
