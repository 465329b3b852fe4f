"""TF1 (google-research/bert) checkpoints -> HF BERT state dicts (then our params through the BERT table).

TF kernels are [in, out] like Flax, so dense layers transpose on the way to HF.
cls/seq_relationship/output_weights is stored [2, H] already.
"""

import numpy as np

_TF_L = "bert/encoder/layer_{i}"
TF_EMBEDDING_AND_HEAD_MAP = [
    ("bert/embeddings/word_embeddings",            "bert.embeddings.word_embeddings.weight",      False),
    ("bert/embeddings/position_embeddings",        "bert.embeddings.position_embeddings.weight",  False),
    ("bert/embeddings/token_type_embeddings",      "bert.embeddings.token_type_embeddings.weight", False),
    ("bert/embeddings/LayerNorm/gamma",            "bert.embeddings.LayerNorm.weight",            False),
    ("bert/embeddings/LayerNorm/beta",             "bert.embeddings.LayerNorm.bias",              False),
    ("bert/pooler/dense/kernel",                   "bert.pooler.dense.weight",                    True),
    ("bert/pooler/dense/bias",                     "bert.pooler.dense.bias",                      False),
    ("cls/predictions/transform/dense/kernel",     "cls.predictions.transform.dense.weight",      True),
    ("cls/predictions/transform/dense/bias",       "cls.predictions.transform.dense.bias",        False),
    ("cls/predictions/transform/LayerNorm/gamma",  "cls.predictions.transform.LayerNorm.weight",  False),
    ("cls/predictions/transform/LayerNorm/beta",   "cls.predictions.transform.LayerNorm.bias",    False),
    ("cls/predictions/output_bias",                "cls.predictions.bias",                        False),
    ("cls/seq_relationship/output_weights",        "cls.seq_relationship.weight",                 False),
    ("cls/seq_relationship/output_bias",           "cls.seq_relationship.bias",                   False),
]
TF_LAYER_MAP = [
    (_TF_L + "/attention/self/query/kernel",       "bert.encoder.layer.{i}.attention.self.query.weight",      True),
    (_TF_L + "/attention/self/query/bias",         "bert.encoder.layer.{i}.attention.self.query.bias",        False),
    (_TF_L + "/attention/self/key/kernel",         "bert.encoder.layer.{i}.attention.self.key.weight",        True),
    (_TF_L + "/attention/self/key/bias",           "bert.encoder.layer.{i}.attention.self.key.bias",          False),
    (_TF_L + "/attention/self/value/kernel",       "bert.encoder.layer.{i}.attention.self.value.weight",      True),
    (_TF_L + "/attention/self/value/bias",         "bert.encoder.layer.{i}.attention.self.value.bias",        False),
    (_TF_L + "/attention/output/dense/kernel",     "bert.encoder.layer.{i}.attention.output.dense.weight",    True),
    (_TF_L + "/attention/output/dense/bias",       "bert.encoder.layer.{i}.attention.output.dense.bias",      False),
    (_TF_L + "/attention/output/LayerNorm/gamma",  "bert.encoder.layer.{i}.attention.output.LayerNorm.weight", False),
    (_TF_L + "/attention/output/LayerNorm/beta",   "bert.encoder.layer.{i}.attention.output.LayerNorm.bias",  False),
    (_TF_L + "/intermediate/dense/kernel",         "bert.encoder.layer.{i}.intermediate.dense.weight",        True),
    (_TF_L + "/intermediate/dense/bias",           "bert.encoder.layer.{i}.intermediate.dense.bias",          False),
    (_TF_L + "/output/dense/kernel",               "bert.encoder.layer.{i}.output.dense.weight",              True),
    (_TF_L + "/output/dense/bias",                 "bert.encoder.layer.{i}.output.dense.bias",                False),
    (_TF_L + "/output/LayerNorm/gamma",            "bert.encoder.layer.{i}.output.LayerNorm.weight",          False),
    (_TF_L + "/output/LayerNorm/beta",             "bert.encoder.layer.{i}.output.LayerNorm.bias",            False),
]


def tf1_to_hf_state(checkpoint_path: str, num_layers: int) -> dict[str, np.ndarray]:
  """Reads a google-research/bert TF1 checkpoint (optimizer slots ignored) into an HF state dict."""
  import tensorflow as tf
  reader = tf.train.load_checkpoint(checkpoint_path)
  available = set(reader.get_variable_to_shape_map())
  rows = list(TF_EMBEDDING_AND_HEAD_MAP)
  for i in range(num_layers):
    rows += [(tf_name.format(i=i), hf.format(i=i), t) for tf_name, hf, t in TF_LAYER_MAP]
  missing = [tf_name for tf_name, _, _ in rows if tf_name not in available]
  if missing:
    raise KeyError(f"TF checkpoint {checkpoint_path} lacks {missing[:5]} (is num_hidden_layers={num_layers} right?)")
  return {hf: (reader.get_tensor(name).T if transpose else reader.get_tensor(name)).astype(np.float32)
          for name, hf, transpose in rows}
