"""Shared helpers for data tests: an independent writer of google-research/bert records."""
import numpy as np
import tensorflow as tf

GOOGLE_SPEC_LENGTHS = dict(input_ids="seq", input_mask="seq", segment_ids="seq", masked_lm_positions="pred",
                           masked_lm_ids="pred", masked_lm_weights="pred", next_sentence_labels=1)


def write_google_style_records(path, num, seq=32, pred=5, start=0, seed=0, weight=1.0):
  """Writes `num` records with tf.train.Example directly; input_ids[1] holds a unique example id."""
  rng = np.random.default_rng(seed)
  with tf.io.TFRecordWriter(path) as w:
    for i in range(start, start + num):
      length = int(rng.integers(10, seq + 1))
      ids = np.zeros(seq, np.int64)
      ids[:length] = rng.integers(10, 100, length)
      ids[0], ids[1], ids[length - 1] = 2, 1000 + i, 3
      mask = (np.arange(seq) < length).astype(np.int64)
      positions = np.zeros(pred, np.int64)
      positions[:2] = [2, 3]
      feature = {
          "input_ids": tf.train.Feature(int64_list=tf.train.Int64List(value=ids)),
          "input_mask": tf.train.Feature(int64_list=tf.train.Int64List(value=mask)),
          "segment_ids": tf.train.Feature(int64_list=tf.train.Int64List(value=np.zeros(seq, np.int64))),
          "masked_lm_positions": tf.train.Feature(int64_list=tf.train.Int64List(value=positions)),
          "masked_lm_ids": tf.train.Feature(int64_list=tf.train.Int64List(value=[11, 12] + [0] * (pred - 2))),
          "masked_lm_weights": tf.train.Feature(float_list=tf.train.FloatList(value=[weight, weight] + [0.0] * (pred - 2))),
          "next_sentence_labels": tf.train.Feature(int64_list=tf.train.Int64List(value=[i % 2])),
      }
      w.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
