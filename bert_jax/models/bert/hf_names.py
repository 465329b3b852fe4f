"""BERT <-> HF `BertForPreTraining` / `BertForMaskedLM` / `BertModel` names (RoBERTa reuses the layer rows)."""

from bert_jax.models import name_tables as nt

# our path template                                HF name template                                 transform
LAYER_ROWS = [
    ("encoder/layer_{i}/attention/output/kernel",  "{p}.encoder.layer.{i}.attention.output.dense.weight",  nt.attn_out_kernel),
    ("encoder/layer_{i}/attention/output/bias",    "{p}.encoder.layer.{i}.attention.output.dense.bias",    nt.identity),
    ("encoder/layer_{i}/attention_layer_norm/scale", "{p}.encoder.layer.{i}.attention.output.LayerNorm.weight", nt.identity),
    ("encoder/layer_{i}/attention_layer_norm/bias",  "{p}.encoder.layer.{i}.attention.output.LayerNorm.bias",  nt.identity),
    ("encoder/layer_{i}/intermediate/kernel",      "{p}.encoder.layer.{i}.intermediate.dense.weight",      nt.dense_kernel),
    ("encoder/layer_{i}/intermediate/bias",        "{p}.encoder.layer.{i}.intermediate.dense.bias",        nt.identity),
    ("encoder/layer_{i}/output/kernel",            "{p}.encoder.layer.{i}.output.dense.weight",            nt.dense_kernel),
    ("encoder/layer_{i}/output/bias",              "{p}.encoder.layer.{i}.output.dense.bias",              nt.identity),
    ("encoder/layer_{i}/output_layer_norm/scale",  "{p}.encoder.layer.{i}.output.LayerNorm.weight",        nt.identity),
    ("encoder/layer_{i}/output_layer_norm/bias",   "{p}.encoder.layer.{i}.output.LayerNorm.bias",          nt.identity),
]
QKV_ROWS = [
    ("encoder/layer_{i}/attention/query/kernel",   "{p}.encoder.layer.{i}.attention.self.query.weight",    nt.qkv_kernel),
    ("encoder/layer_{i}/attention/query/bias",     "{p}.encoder.layer.{i}.attention.self.query.bias",      nt.qkv_bias),
    ("encoder/layer_{i}/attention/key/kernel",     "{p}.encoder.layer.{i}.attention.self.key.weight",      nt.qkv_kernel),
    ("encoder/layer_{i}/attention/key/bias",       "{p}.encoder.layer.{i}.attention.self.key.bias",        nt.qkv_bias),
    ("encoder/layer_{i}/attention/value/kernel",   "{p}.encoder.layer.{i}.attention.self.value.weight",    nt.qkv_kernel),
    ("encoder/layer_{i}/attention/value/bias",     "{p}.encoder.layer.{i}.attention.self.value.bias",      nt.qkv_bias),
]
_QKV = tuple("{p}.encoder.layer.{i}.attention.self." + name for name in ("query", "key", "value"))
FUSED_QKV_ROWS = [  # instead of QKV_ROWS when config.fused_qkv
    ("encoder/layer_{i}/attention/qkv/kernel",     tuple(n + ".weight" for n in _QKV),                     nt.fused_qkv_kernel),
    ("encoder/layer_{i}/attention/qkv/bias",       tuple(n + ".bias" for n in _QKV),                       nt.fused_qkv_bias),
]
EMBEDDING_ROWS = [
    ("encoder/embeddings/word_embeddings/embedding",       "{p}.embeddings.word_embeddings.weight",        nt.vocab_rows),
    ("encoder/embeddings/position_embeddings/embedding",   "{p}.embeddings.position_embeddings.weight",    nt.identity),
    ("encoder/embeddings/token_type_embeddings/embedding", "{p}.embeddings.token_type_embeddings.weight",  nt.identity),
    ("encoder/embeddings/layer_norm/scale",                "{p}.embeddings.LayerNorm.weight",              nt.identity),
    ("encoder/embeddings/layer_norm/bias",                 "{p}.embeddings.LayerNorm.bias",                nt.identity),
]
POOLER_ROWS = [
    ("encoder/pooler/kernel",                      "bert.pooler.dense.weight",                             nt.dense_kernel),
    ("encoder/pooler/bias",                        "bert.pooler.dense.bias",                               nt.identity),
]
MLM_ROWS = [
    ("mlm/transform/kernel",                       "cls.predictions.transform.dense.weight",               nt.dense_kernel),
    ("mlm/transform/bias",                         "cls.predictions.transform.dense.bias",                 nt.identity),
    ("mlm/layer_norm/scale",                       "cls.predictions.transform.LayerNorm.weight",           nt.identity),
    ("mlm/layer_norm/bias",                        "cls.predictions.transform.LayerNorm.bias",             nt.identity),
    ("mlm/output_bias",                            "cls.predictions.bias",                                 nt.vocab_rows),
]
NSP_ROWS = [
    ("nsp/classifier/kernel",                      "cls.seq_relationship.weight",                          nt.dense_kernel),
    ("nsp/classifier/bias",                        "cls.seq_relationship.bias",                            nt.identity),
]
# HF keeps these beside the canonical ones: tied copies.
TIED_HF_KEYS = {"cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
                "cls.predictions.decoder.bias": "cls.predictions.bias"}
IGNORED_HF_KEYS = frozenset({"bert.embeddings.position_ids", "bert.embeddings.token_type_ids"})


def encoder_rows(config, prefix: str):
  """Embedding and layer rows of a BERT-layout encoder whose HF names start with `prefix`."""
  qkv = FUSED_QKV_ROWS if config.fused_qkv else QKV_ROWS
  rows = [(ours, hf.format(p=prefix), t) for ours, hf, t in EMBEDDING_ROWS]
  return rows + nt.expand_layers(qkv + LAYER_ROWS, config.num_layers, p=prefix)


def name_table(config):
  return {"encoder": encoder_rows(config, "bert"), "pooler": POOLER_ROWS, "mlm": MLM_ROWS, "nsp": NSP_ROWS}
