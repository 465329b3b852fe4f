"""The trunk with a chosen set of pretraining heads: what MLM-family objectives train and HF export checks.

  heads ⊆ {"mlm", "nsp", "sop"}; "nsp" and "sop" read the pooler (so they create encoder/pooler).
Output: {"sequence_output": [B, T, H], "mlm_logits": [B, P or T, V], "<nsp|sop>_logits": [B, 2] or [B, K, 2]}.
"""

import flax.linen as nn

from bert_jax.models import heads as heads_lib
from bert_jax.models.config import EncoderConfig
from bert_jax.models.encoder import Encoder

HEADS = ("mlm", "nsp", "sop")
SENTENCE_HEADS = ("nsp", "sop")


def encode_with_mlm(c: EncoderConfig, with_mlm: bool, deterministic: bool, input_ids_BxT, input_mask_BxT,
                    segment_ids_BxT, masked_lm_positions_BxP, position_ids_BxT, attention_segments_BxT):
  """The trunk (submodule `encoder`) and, with_mlm, the MLM head (`mlm`), built inside the calling module's compact
  __call__: (the encoder, {"sequence_output", ["mlm_logits"]}). Shared by the models that add other heads."""
  encoder = Encoder(c, deterministic, name="encoder")
  x = encoder(input_ids_BxT, input_mask_BxT, segment_ids_BxT, position_ids_BxT=position_ids_BxT,
              attention_segments_BxT=attention_segments_BxT)
  out = {"sequence_output": x}
  if with_mlm:
    out["mlm_logits"] = heads_lib.mlm_logits_at(heads_lib.MlmHead(c, name="mlm"), x, encoder.word_table(),
                                                masked_lm_positions_BxP)
  return encoder, out


class EncoderWithHeads(nn.Module):
  config: EncoderConfig
  heads: tuple[str, ...] = ("mlm",)

  @nn.compact
  def __call__(self, input_ids_BxT, input_mask_BxT, segment_ids_BxT, masked_lm_positions_BxP=None, *,
               position_ids_BxT=None, attention_segments_BxT=None, cls_positions_BxK=None, deterministic=True):
    """masked_lm_positions_BxP=None gives MLM logits at all T positions; cls_positions_BxK reads the
    sentence head at each packed instance's [CLS] instead of at row offset 0."""
    unknown = set(self.heads) - set(HEADS)
    if unknown:
      raise ValueError(f"unknown heads {sorted(unknown)}; choose from {HEADS}")
    c = self.config
    encoder, out = encode_with_mlm(c, "mlm" in self.heads, deterministic, input_ids_BxT, input_mask_BxT,
                                   segment_ids_BxT, masked_lm_positions_BxP, position_ids_BxT, attention_segments_BxT)
    x = out["sequence_output"]
    for name in SENTENCE_HEADS:
      if name in self.heads:
        out[f"{name}_logits"] = heads_lib.SentencePairHead(c, name=name)(encoder.pool(x, cls_positions_BxK))
    return out
