"""NEZHA <-> the transformers 4.x `NezhaForPreTraining` / `NezhaForMaskedLM` / `NezhaModel` names: BERT's rows under
the `nezha.` prefix, without a position table (positions are relative, inside the attention)."""

import re

from bert_jax.models import name_tables as nt
from bert_jax.models.bert import hf_names as bert_names

PREFIX = "nezha"
EMBEDDING_ROWS = [row for row in bert_names.EMBEDDING_ROWS if "position_embeddings" not in row[0]]
POOLER_ROWS = [(ours, hf.replace("bert.", PREFIX + ".", 1), t) for ours, hf, t in bert_names.POOLER_ROWS]
TIED_HF_KEYS = {"cls.predictions.decoder.weight": f"{PREFIX}.embeddings.word_embeddings.weight",
                "cls.predictions.decoder.bias": "cls.predictions.bias"}
IGNORED_HF_KEYS = frozenset({f"{PREFIX}.embeddings.token_type_ids"})
# transformers 4.x saved each layer's fixed [max_position_embeddings, max_position_embeddings, head_dim] relative
# table as a buffer; it is computed, not learned, so import leaves it out.
IGNORED_HF_KEY_PATTERN = re.compile(
    rf"{PREFIX}\.encoder\.layer\.\d+\.attention\.self\.relative_positions_encoding\.positions_encoding")


def name_table(config):
  qkv = bert_names.FUSED_QKV_ROWS if config.fused_qkv else bert_names.QKV_ROWS
  encoder = [(ours, hf.format(p=PREFIX), t) for ours, hf, t in EMBEDDING_ROWS]
  encoder += nt.expand_layers(qkv + bert_names.LAYER_ROWS, config.num_layers, p=PREFIX)
  return {"encoder": encoder, "pooler": POOLER_ROWS, "mlm": bert_names.MLM_ROWS, "nsp": bert_names.NSP_ROWS}
