"""DistilBERT <-> HF `DistilBertForMaskedLM` / `DistilBertModel` names (transformers' modeling_distilbert.py):
no token-type embeddings and no pooler; the MLM head is vocab_transform -> act -> vocab_layer_norm ->
vocab_projector, whose weight is tied to the word embeddings and whose bias is its own."""

from bert_jax.models import name_tables as nt

# our path template                                 HF name template                                      transform
EMBEDDING_ROWS = [
    ("encoder/embeddings/word_embeddings/embedding",     "distilbert.embeddings.word_embeddings.weight",     nt.vocab_rows),
    ("encoder/embeddings/position_embeddings/embedding", "distilbert.embeddings.position_embeddings.weight", nt.identity),
    ("encoder/embeddings/layer_norm/scale",              "distilbert.embeddings.LayerNorm.weight",           nt.identity),
    ("encoder/embeddings/layer_norm/bias",               "distilbert.embeddings.LayerNorm.bias",             nt.identity),
]
_LAYER = "distilbert.transformer.layer.{i}."
QKV_ROWS = [
    ("encoder/layer_{i}/attention/query/kernel",     _LAYER + "attention.q_lin.weight",   nt.qkv_kernel),
    ("encoder/layer_{i}/attention/query/bias",       _LAYER + "attention.q_lin.bias",     nt.qkv_bias),
    ("encoder/layer_{i}/attention/key/kernel",       _LAYER + "attention.k_lin.weight",   nt.qkv_kernel),
    ("encoder/layer_{i}/attention/key/bias",         _LAYER + "attention.k_lin.bias",     nt.qkv_bias),
    ("encoder/layer_{i}/attention/value/kernel",     _LAYER + "attention.v_lin.weight",   nt.qkv_kernel),
    ("encoder/layer_{i}/attention/value/bias",       _LAYER + "attention.v_lin.bias",     nt.qkv_bias),
]
_QKV = tuple(_LAYER + f"attention.{name}_lin" for name in ("q", "k", "v"))
FUSED_QKV_ROWS = [  # instead of QKV_ROWS when config.fused_qkv
    ("encoder/layer_{i}/attention/qkv/kernel",       tuple(n + ".weight" for n in _QKV),  nt.fused_qkv_kernel),
    ("encoder/layer_{i}/attention/qkv/bias",         tuple(n + ".bias" for n in _QKV),    nt.fused_qkv_bias),
]
LAYER_ROWS = [
    ("encoder/layer_{i}/attention/output/kernel",    _LAYER + "attention.out_lin.weight", nt.attn_out_kernel),
    ("encoder/layer_{i}/attention/output/bias",      _LAYER + "attention.out_lin.bias",   nt.identity),
    ("encoder/layer_{i}/attention_layer_norm/scale", _LAYER + "sa_layer_norm.weight",     nt.identity),
    ("encoder/layer_{i}/attention_layer_norm/bias",  _LAYER + "sa_layer_norm.bias",       nt.identity),
    ("encoder/layer_{i}/intermediate/kernel",        _LAYER + "ffn.lin1.weight",          nt.dense_kernel),
    ("encoder/layer_{i}/intermediate/bias",          _LAYER + "ffn.lin1.bias",            nt.identity),
    ("encoder/layer_{i}/output/kernel",              _LAYER + "ffn.lin2.weight",          nt.dense_kernel),
    ("encoder/layer_{i}/output/bias",                _LAYER + "ffn.lin2.bias",            nt.identity),
    ("encoder/layer_{i}/output_layer_norm/scale",    _LAYER + "output_layer_norm.weight", nt.identity),
    ("encoder/layer_{i}/output_layer_norm/bias",     _LAYER + "output_layer_norm.bias",   nt.identity),
]
MLM_ROWS = [
    ("mlm/transform/kernel",                         "vocab_transform.weight",            nt.dense_kernel),
    ("mlm/transform/bias",                           "vocab_transform.bias",              nt.identity),
    ("mlm/layer_norm/scale",                         "vocab_layer_norm.weight",           nt.identity),
    ("mlm/layer_norm/bias",                          "vocab_layer_norm.bias",             nt.identity),
    ("mlm/output_bias",                              "vocab_projector.bias",              nt.vocab_rows),
]
TIED_HF_KEYS = {"vocab_projector.weight": "distilbert.embeddings.word_embeddings.weight"}
IGNORED_HF_KEYS = frozenset({"distilbert.embeddings.position_ids"})


def name_table(config):
  qkv = FUSED_QKV_ROWS if config.fused_qkv else QKV_ROWS
  return {"encoder": EMBEDDING_ROWS + nt.expand_layers(qkv + LAYER_ROWS, config.num_layers), "mlm": MLM_ROWS}
