"""ERNIE <-> HF `ErnieForPreTraining` / `ErnieForMaskedLM` / `ErnieModel` names: BERT's rows under `ernie.`
(ErnieModel is BertModel's layout), plus the task-type table when the config has one (HF use_task_id)."""

from bert_jax.models import name_tables as nt
from bert_jax.models.bert import hf_names as bert_names

PREFIX = "ernie"
TASK_TYPE_ROW = ("encoder/embeddings/task_type_embeddings/embedding", "ernie.embeddings.task_type_embeddings.weight",
                 nt.identity)
POOLER_ROWS = [(ours, hf.replace("bert.", PREFIX + ".", 1), t) for ours, hf, t in bert_names.POOLER_ROWS]
# The heads keep BERT's names (`cls.predictions.*`, `cls.seq_relationship.*`).
MLM_ROWS, NSP_ROWS = bert_names.MLM_ROWS, bert_names.NSP_ROWS
TIED_HF_KEYS = {"cls.predictions.decoder.weight": "ernie.embeddings.word_embeddings.weight",
                "cls.predictions.decoder.bias": "cls.predictions.bias"}
IGNORED_HF_KEYS = frozenset({"ernie.embeddings.position_ids", "ernie.embeddings.token_type_ids"})


def name_table(config):
  encoder = bert_names.encoder_rows(config, PREFIX) + ([TASK_TYPE_ROW] if config.task_type_vocab_size else [])
  return {"encoder": encoder, "pooler": POOLER_ROWS, "mlm": MLM_ROWS, "nsp": NSP_ROWS}
