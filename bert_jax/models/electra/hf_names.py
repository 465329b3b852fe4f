"""ELECTRA <-> HF `ElectraForPreTraining` (discriminator) / `ElectraForMaskedLM` (generator) / `ElectraModel` names.

Both HF classes hold a whole `electra.` trunk: BERT's embedding and layer rows under `electra.`, plus
`electra.embeddings_project` when the embedding width differs from the hidden size. The discriminator's head
is `discriminator_predictions` (dense H -> H, act, dense_prediction H -> 1); the generator's is
`generator_predictions` (dense H -> E, gelu, LayerNorm) and `generator_lm_head` (E -> V, tied to the word
embeddings, with its own bias).
"""

from bert_jax.models import name_tables as nt
from bert_jax.models.bert import hf_names as bert_names

PROJECTION_ROWS = [
    ("encoder/embedding_projection/kernel",        "electra.embeddings_project.weight",                    nt.dense_kernel),
    ("encoder/embedding_projection/bias",          "electra.embeddings_project.bias",                      nt.identity),
]
MLM_ROWS = [  # the generator's head
    ("mlm/transform/kernel",                       "generator_predictions.dense.weight",                   nt.dense_kernel),
    ("mlm/transform/bias",                         "generator_predictions.dense.bias",                     nt.identity),
    ("mlm/layer_norm/scale",                       "generator_predictions.LayerNorm.weight",               nt.identity),
    ("mlm/layer_norm/bias",                        "generator_predictions.LayerNorm.bias",                 nt.identity),
    ("mlm/output_bias",                            "generator_lm_head.bias",                               nt.vocab_rows),
]
RTD_ROWS = [  # the discriminator's replaced-token-detection head
    ("rtd/transform/kernel",                       "discriminator_predictions.dense.weight",               nt.dense_kernel),
    ("rtd/transform/bias",                         "discriminator_predictions.dense.bias",                 nt.identity),
    ("rtd/classifier/kernel",                      "discriminator_predictions.dense_prediction.weight",    nt.dense_kernel),
    ("rtd/classifier/bias",                        "discriminator_predictions.dense_prediction.bias",      nt.identity),
]
TIED_HF_KEYS = {"generator_lm_head.weight": "electra.embeddings.word_embeddings.weight"}
IGNORED_HF_KEYS = frozenset({"electra.embeddings.position_ids", "electra.embeddings.token_type_ids"})


def name_table(config):
  encoder = bert_names.encoder_rows(config, "electra") + (PROJECTION_ROWS if config.embedding_size else [])
  return {"encoder": encoder, "mlm": MLM_ROWS, "rtd": RTD_ROWS}
