"""ALBERT <-> HF `AlbertForPreTraining` / `AlbertForMaskedLM` / `AlbertModel` names.

HF ALBERT stores layer groups: layer i uses group i * num_hidden_groups // num_layers. Sharing 'all'
is one group (our encoder/shared_layer/layer); sharing 'none' is one group per layer (our
encoder/layer_{i}). Sharing only attention or only the FFN has no HF equivalent.
"""

from bert_jax.models import name_tables as nt

_G = "albert.encoder.albert_layer_groups.{g}.albert_layers.0."
# our path under the layer's prefix   HF name under the group's prefix   transform
LAYER_ROWS = [
    ("attention/query/kernel",        "attention.query.weight",            nt.qkv_kernel),
    ("attention/query/bias",          "attention.query.bias",              nt.qkv_bias),
    ("attention/key/kernel",          "attention.key.weight",              nt.qkv_kernel),
    ("attention/key/bias",            "attention.key.bias",                nt.qkv_bias),
    ("attention/value/kernel",        "attention.value.weight",            nt.qkv_kernel),
    ("attention/value/bias",          "attention.value.bias",              nt.qkv_bias),
    ("attention/output/kernel",       "attention.dense.weight",            nt.attn_out_kernel),
    ("attention/output/bias",         "attention.dense.bias",              nt.identity),
    ("attention_layer_norm/scale",    "attention.LayerNorm.weight",        nt.identity),
    ("attention_layer_norm/bias",     "attention.LayerNorm.bias",          nt.identity),
    ("intermediate/kernel",           "ffn.weight",                        nt.dense_kernel),
    ("intermediate/bias",             "ffn.bias",                          nt.identity),
    ("output/kernel",                 "ffn_output.weight",                 nt.dense_kernel),
    ("output/bias",                   "ffn_output.bias",                   nt.identity),
    ("output_layer_norm/scale",       "full_layer_layer_norm.weight",      nt.identity),
    ("output_layer_norm/bias",        "full_layer_layer_norm.bias",        nt.identity),
]
_QKV = tuple(f"attention.{n}" for n in ("query", "key", "value"))
FUSED_QKV_ROWS = [
    ("attention/qkv/kernel",          tuple(n + ".weight" for n in _QKV),  nt.fused_qkv_kernel),
    ("attention/qkv/bias",            tuple(n + ".bias" for n in _QKV),    nt.fused_qkv_bias),
]
EMBEDDING_ROWS = [
    ("encoder/embeddings/word_embeddings/embedding",       "albert.embeddings.word_embeddings.weight",       nt.vocab_rows),
    ("encoder/embeddings/position_embeddings/embedding",   "albert.embeddings.position_embeddings.weight",   nt.identity),
    ("encoder/embeddings/token_type_embeddings/embedding", "albert.embeddings.token_type_embeddings.weight", nt.identity),
    ("encoder/embeddings/layer_norm/scale",                "albert.embeddings.LayerNorm.weight",             nt.identity),
    ("encoder/embeddings/layer_norm/bias",                 "albert.embeddings.LayerNorm.bias",               nt.identity),
    ("encoder/embedding_projection/kernel",    "albert.encoder.embedding_hidden_mapping_in.weight",          nt.dense_kernel),
    ("encoder/embedding_projection/bias",      "albert.encoder.embedding_hidden_mapping_in.bias",            nt.identity),
]
POOLER_ROWS = [
    ("encoder/pooler/kernel",         "albert.pooler.weight",              nt.dense_kernel),
    ("encoder/pooler/bias",           "albert.pooler.bias",                nt.identity),
]
MLM_ROWS = [
    ("mlm/transform/kernel",          "predictions.dense.weight",          nt.dense_kernel),
    ("mlm/transform/bias",            "predictions.dense.bias",            nt.identity),
    ("mlm/layer_norm/scale",          "predictions.LayerNorm.weight",      nt.identity),
    ("mlm/layer_norm/bias",           "predictions.LayerNorm.bias",        nt.identity),
    ("mlm/output_bias",               "predictions.bias",                  nt.vocab_rows),
]
SOP_ROWS = [
    ("sop/classifier/kernel",         "sop_classifier.classifier.weight",  nt.dense_kernel),
    ("sop/classifier/bias",           "sop_classifier.classifier.bias",    nt.identity),
]
TIED_HF_KEYS = {"predictions.decoder.weight": "albert.embeddings.word_embeddings.weight",
                "predictions.decoder.bias": "predictions.bias"}
IGNORED_HF_KEYS = frozenset({"albert.embeddings.position_ids", "albert.embeddings.token_type_ids"})


def num_hidden_groups(config) -> int:
  if config.layer_sharing == "all":
    return 1
  if config.layer_sharing == "none":
    return config.num_layers
  raise ValueError(f"layer_sharing={config.layer_sharing!r} has no HF ALBERT equivalent (HF shares whole layers "
                   f"only); export needs layer_sharing 'all' or 'none'")


def _layer_rows(config, ours_prefix: str, group: int):
  qkv = LAYER_ROWS[6:] if config.fused_qkv else LAYER_ROWS
  rows = (FUSED_QKV_ROWS if config.fused_qkv else []) + qkv
  return [(f"{ours_prefix}/{ours}", (_G.format(g=group) + hf) if isinstance(hf, str)
           else tuple(_G.format(g=group) + n for n in hf), t) for ours, hf, t in rows]


def name_table(config):
  num_hidden_groups(config)  # refuses attention-/FFN-only sharing, which HF has no names for
  # By the sharing, not the group count: a 1-layer unshared model is also 1 group, but its params are per layer.
  if config.layer_sharing == "all":
    layers = _layer_rows(config, "encoder/shared_layer/layer", 0)
  else:
    layers = [row for i in range(config.num_layers) for row in _layer_rows(config, f"encoder/layer_{i}", i)]
  return {"encoder": EMBEDDING_ROWS + layers, "pooler": POOLER_ROWS, "mlm": MLM_ROWS, "sop": SOP_ROWS}
