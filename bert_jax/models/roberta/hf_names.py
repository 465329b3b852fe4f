"""RoBERTa <-> HF `RobertaForMaskedLM` / `RobertaModel` names: BERT's encoder rows under `roberta.`,
and the `lm_head` MLM head. No pooler or NSP head: RoBERTa pretrains with MLM only."""

from bert_jax.models import name_tables as nt
from bert_jax.models.bert import hf_names as bert_names

MLM_ROWS = [
    ("mlm/transform/kernel",                       "lm_head.dense.weight",                                 nt.dense_kernel),
    ("mlm/transform/bias",                         "lm_head.dense.bias",                                   nt.identity),
    ("mlm/layer_norm/scale",                       "lm_head.layer_norm.weight",                            nt.identity),
    ("mlm/layer_norm/bias",                        "lm_head.layer_norm.bias",                              nt.identity),
    ("mlm/output_bias",                            "lm_head.bias",                                         nt.vocab_rows),
]
POOLER_ROWS = [
    ("encoder/pooler/kernel",                      "roberta.pooler.dense.weight",                          nt.dense_kernel),
    ("encoder/pooler/bias",                        "roberta.pooler.dense.bias",                            nt.identity),
]
TIED_HF_KEYS = {"lm_head.decoder.weight": "roberta.embeddings.word_embeddings.weight",
                "lm_head.decoder.bias": "lm_head.bias"}
IGNORED_HF_KEYS = frozenset({"roberta.embeddings.position_ids", "roberta.embeddings.token_type_ids"})


def name_table(config):
  return {"encoder": bert_names.encoder_rows(config, "roberta"), "pooler": POOLER_ROWS, "mlm": MLM_ROWS}
