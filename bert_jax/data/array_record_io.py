"""ArrayRecord shards of pretraining examples, read and written without TensorFlow.

Each record is a serialized `tf.train.Example` in google-research/bert's schema (schema.py), the same
message the TFRecord shards hold, so the files also read with TFDS/MaxText-style tools that expect
Examples in ArrayRecord. ArrayRecord gives random access by record index, which is what Grain's global
shuffle, per-process sharding and exact resume are built on.

The Example message class is built here from its descriptor (tensorflow/core/example/example.proto,
the six messages it needs) in a private descriptor pool: `protobuf` parses and writes it, so neither
TensorFlow nor its protos are imported, and a process that also imports TensorFlow sees no clash.

  python -m bert_jax.data.array_record_io --input='data/wiki/train/*.tfrecord' --output_dir=data/wiki/train
converts existing TFRecords (e.g. google-research/bert's) to ArrayRecord shards of the same examples,
reading them with Grain's TFRecord reader (no TensorFlow either).
"""

import glob
import os

import grain
import numpy as np
from array_record.python import array_record_module
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from bert_jax.data import schema

SUFFIX = ".array_record"
# One record per chunk: every record can be read alone (Grain's recommendation for random access).
WRITER_OPTIONS = "group_size:1"


def _example_class():
  field = descriptor_pb2.FieldDescriptorProto
  proto = descriptor_pb2.FileDescriptorProto(name="bert_jax/tf_example.proto", package="tensorflow",
                                             syntax="proto3")
  for name, kind in (("BytesList", field.TYPE_BYTES), ("FloatList", field.TYPE_FLOAT),
                     ("Int64List", field.TYPE_INT64)):
    proto.message_type.add(name=name).field.add(name="value", number=1, type=kind, label=field.LABEL_REPEATED)
  feature = proto.message_type.add(name="Feature")
  feature.oneof_decl.add(name="kind")
  for number, (name, kind) in enumerate((("bytes_list", "BytesList"), ("float_list", "FloatList"),
                                         ("int64_list", "Int64List")), 1):
    feature.field.add(name=name, number=number, type=field.TYPE_MESSAGE, label=field.LABEL_OPTIONAL,
                      type_name=f".tensorflow.{kind}", oneof_index=0)
  features = proto.message_type.add(name="Features")
  entry = features.nested_type.add(name="FeatureEntry")
  entry.field.add(name="key", number=1, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
  entry.field.add(name="value", number=2, type=field.TYPE_MESSAGE, label=field.LABEL_OPTIONAL,
                  type_name=".tensorflow.Feature")
  entry.options.map_entry = True
  features.field.add(name="feature", number=1, type=field.TYPE_MESSAGE, label=field.LABEL_REPEATED,
                     type_name=".tensorflow.Features.FeatureEntry")
  proto.message_type.add(name="Example").field.add(name="features", number=1, type=field.TYPE_MESSAGE,
                                                   label=field.LABEL_OPTIONAL, type_name=".tensorflow.Features")
  pool = descriptor_pool.DescriptorPool()
  pool.Add(proto)
  return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.Example"))


Example = _example_class()


def serialize(features: dict, row: int) -> bytes:
  """Row `row` of stacked instance features -> a serialized tf.train.Example (as schema.serialize, no TF)."""
  example = Example()
  for name, values in features.items():
    feature = example.features.feature[name]
    if name in schema.FLOAT_KEYS:
      feature.float_list.value.extend(np.asarray(values[row], np.float32).tolist())
    else:
      feature.int64_list.value.extend(np.asarray(values[row], np.int64).tolist())
  return example.SerializeToString(deterministic=True)


def parse(serialized: bytes, names=None) -> dict[str, np.ndarray]:
  """A serialized Example -> {name: int32 or float32 array}, every feature it holds or those in `names` (the
  others, of any kind, left unread as tf.io.parse_single_example leaves them)."""
  out = {}
  for name, feature in Example.FromString(serialized).features.feature.items():
    if names is not None and name not in names:
      continue
    kind = feature.WhichOneof("kind")
    if kind == "int64_list":
      out[name] = np.array(feature.int64_list.value, np.int32)
    elif kind == "float_list":
      out[name] = np.array(feature.float_list.value, np.float32)
    else:
      raise ValueError(f"feature {name!r} holds {kind}; pretraining examples hold only int64 and float lists")
  return out


def record_lengths(serialized: bytes) -> dict[str, int]:
  """Feature name -> length (as schema.record_lengths, without TF)."""
  return {name: len(values) for name, values in parse(serialized).items()}


class ShardWriter:
  """Writes serialized examples to one ArrayRecord file."""

  def __init__(self, path: str):
    self.path = path
    self._writer = array_record_module.ArrayRecordWriter(path, WRITER_OPTIONS)

  def write(self, record: bytes) -> None:
    self._writer.write(record)

  def close(self) -> None:
    self._writer.close()


def num_records(path: str) -> int:
  reader = array_record_module.ArrayRecordReader(path)
  try:
    return reader.num_records()
  finally:
    reader.close()


def read_records(path: str, indices=None) -> list[bytes]:
  """The serialized records of one file (all, or those at `indices`)."""
  reader = array_record_module.ArrayRecordReader(path)
  try:
    return reader.read_all() if indices is None else reader.read(list(indices))
  finally:
    reader.close()


def iter_records(path: str, block: int = 10_000):
  """The serialized records of a TFRecord or ArrayRecord file, in order, `block` at a time in memory."""
  if not path.endswith(SUFFIX):
    yield from grain.experimental.TFRecordIterDataset(path)
    return
  total = num_records(path)
  for start in range(0, total, block):
    yield from read_records(path, range(start, min(start + block, total)))


FORMATS = ("tfrecord", "array_record")


def check_formats(formats) -> tuple[str, ...]:
  formats = tuple(formats)
  unknown = [f for f in formats if f not in FORMATS]
  if unknown or not formats:
    raise ValueError(f"formats {list(formats)}: choose one or more of {list(FORMATS)}")
  return formats


def open_writers(tfrecord_path: str, formats) -> list:
  """One writer per format for a shard named by its TFRecord path (the ArrayRecord file sits beside it, see
  shard_path); TensorFlow is imported only when TFRecords are asked for."""
  writers = []
  if "tfrecord" in formats:
    import tensorflow as tf
    writers.append(tf.io.TFRecordWriter(tfrecord_path))
  if "array_record" in formats:
    writers.append(ShardWriter(shard_path(tfrecord_path)))
  return writers


def shard_path(tfrecord_path: str) -> str:
  """The ArrayRecord file that sits beside (or replaces) a TFRecord shard: same name, other suffix."""
  stem = tfrecord_path[:-len(".tfrecord")] if tfrecord_path.endswith(".tfrecord") else tfrecord_path
  return stem + SUFFIX


def convert_tfrecords(files, output_dir: str) -> dict[str, int]:
  """Copies each TFRecord file's records, in order, to OUTPUT_DIR/<same name>.array_record; returns counts.

  Reads with Grain's TFRecord reader, so no TensorFlow is needed."""
  os.makedirs(output_dir, exist_ok=True)
  counts = {}
  for path in files:
    out = os.path.join(output_dir, os.path.basename(shard_path(path)))
    writer = ShardWriter(out + ".tmp")
    count = 0
    for record in grain.experimental.TFRecordIterDataset(path):
      writer.write(record)
      count += 1
    writer.close()
    os.replace(out + ".tmp", out)
    counts[os.path.basename(out)] = count
  return counts


def convert_split(tfrecord_files, output_dir: str, log=print) -> list[str]:
  """ArrayRecord copies of `tfrecord_files` in `output_dir` (made once; later calls reuse them)."""
  wanted = [os.path.join(output_dir, os.path.basename(shard_path(f))) for f in tfrecord_files]
  missing = [f for f, out in zip(tfrecord_files, wanted) if not os.path.exists(out)]
  if missing:
    log(f"converting {len(missing)} TFRecord file(s) to ArrayRecord in {output_dir} (once; later runs reuse them)")
    convert_tfrecords(missing, output_dir)
  return wanted


def main(argv):
  del argv
  from absl import flags
  f = flags.FLAGS
  files = sorted(m for p in f.input.split(",") for m in glob.glob(os.path.expanduser(p.strip())))
  if not files:
    raise SystemExit(f"error: --input={f.input!r} matched no files")
  counts = convert_tfrecords(files, f.output_dir)
  print(f"wrote {sum(counts.values()):,} records in {len(counts)} ArrayRecord file(s) to {f.output_dir}")


def cli():
  from absl import app, flags
  flags.DEFINE_string("input", None, "TFRecord glob(s), comma-separated", required=True)
  flags.DEFINE_string("output_dir", None, "where the .array_record files go (same names)", required=True)
  app.run(main)


if __name__ == "__main__":
  cli()
