"""Checkpoint conversion I/O: workdir -> HF directory, HF directory -> params checkpoint, TF1 -> params.

  python -m bert_jax.convert to_hf   --workdir=runs/tiny --output=hf/tiny [--step=N] [--dtype=bfloat16]
  python -m bert_jax.convert from_hf --hf_dir=hf/bert-base --output=ckpt/bert-base
  python -m bert_jax.convert from_tf --tf_checkpoint=uncased_L-12_H-768_A-12/bert_model.ckpt \\
                                     --tf_config=uncased_L-12_H-768_A-12/bert_config.json --output=ckpt/base

The name mapping itself lives in convert.py; this module only reads and writes files.
"""

import dataclasses
import glob
import json
import os

import jax
import numpy as np

from bert_jax import checkpoint as checkpoint_lib
from bert_jax import convert

# TF1 (google-research/bert) variable -> HF name; TF kernels are [in, out] like Flax, so dense layers
# transpose on the way to HF. cls/seq_relationship/output_weights is stored [2, H] already.
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


def _with_current_defaults(saved: dict):
  """A saved run config on top of today's defaults, so fields added since it was written have values."""
  from bert_jax import configlib
  config = configlib.load("common")
  def merge(node, values):
    for k, v in values.items():
      if isinstance(v, dict) and k in node and hasattr(node[k], "items"):
        merge(node[k], v)
      else:
        node[k] = v
  with config.unlocked():
    merge(config, saved)
  return config


def load_workdir_params(workdir: str, step: int | None = None):
  """(params as numpy, BertConfig, ConfigDict) from a training workdir's checkpoint, on one device."""
  import orbax.checkpoint as ocp
  from bert_jax import optim, sharding, train
  from bert_jax.model import BertForPreTraining
  manager = ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")))
  step = manager.latest_step() if step is None else step
  if step is None or step not in manager.all_steps():
    raise FileNotFoundError(f"no checkpoint{'' if step is None else f' at step {step}'} in {workdir}/checkpoints "
                            f"(have {list(manager.all_steps())})")
  saved = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
  config = _with_current_defaults(saved)
  mesh = sharding.create_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
  model_config = train.model_config(config)
  tx, _ = optim.make_optimizer(config.optim, config.train.steps)
  rules = sharding.rules_from_config(config.mesh.logical_axis_rules)
  import flax.linen as nn
  with nn.logical_axis_rules(rules):
    _, abstract, shardings = train.abstract_train_state(
        BertForPreTraining(model_config), tx, mesh, rules, 0, config.data.max_seq_length,
        config.data.max_predictions_per_seq)
  try:
    state = checkpoint_lib.Checkpointer.restore_from(manager, step, abstract, shardings)
  except ValueError as e:
    raise ValueError(f"checkpoint {workdir} step {step} does not match its config: {e}") from e
  params = jax.tree_util.tree_map(np.asarray, jax.device_get(state.params))
  return params, model_config, config, step


def export_tokenizer(vocab_file: str, lower_case: bool, output_dir: str) -> None:
  """Writes tokenizer files that transformers.AutoTokenizer loads with the same ids as ours."""
  from transformers import BertTokenizerFast, PreTrainedTokenizerFast
  if not vocab_file.endswith(".model"):
    BertTokenizerFast(vocab_file=vocab_file, do_lower_case=lower_case).save_pretrained(output_dir)
    return
  import sentencepiece as spm
  from sentencepiece import sentencepiece_model_pb2
  from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
  sp = spm.SentencePieceProcessor(model_file=vocab_file)
  proto = sentencepiece_model_pb2.ModelProto()
  proto.ParseFromString(open(vocab_file, "rb").read())
  vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
  tok = Tokenizer(models.Unigram(vocab, unk_id=sp.unk_id(), byte_fallback=False))
  steps = [normalizers.Lowercase()] if lower_case else []
  steps += [normalizers.Precompiled(proto.normalizer_spec.precompiled_charsmap), normalizers.Strip(),
            normalizers.Replace(Regex(" {2,}"), " ")]
  tok.normalizer = normalizers.Sequence(steps)
  tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
  tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
  cls_id, sep_id = sp.piece_to_id("[CLS]"), sp.piece_to_id("[SEP]")
  tok.post_processor = processors.TemplateProcessing(
      single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
  fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                 sep_token="[SEP]", mask_token="[MASK]",
                                 model_input_names=["input_ids", "token_type_ids", "attention_mask"])
  fast.save_pretrained(output_dir)


def write_hf_dir(params, model_config, output_dir: str, dtype: str = "float32", vocab_file: str | None = None,
                 lower_case: bool = False) -> None:
  """config.json + model.safetensors (+ tokenizer files) for transformers.BertForPreTraining."""
  import torch
  from safetensors.torch import save_file
  os.makedirs(output_dir, exist_ok=True)
  state = convert.params_to_hf(params, model_config)
  torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
  tensors = {k: torch.from_numpy(np.asarray(v, np.float32)).to(torch_dtype).contiguous() for k, v in state.items()}
  save_file(tensors, os.path.join(output_dir, "model.safetensors"), metadata={"format": "pt"})
  with open(os.path.join(output_dir, "config.json"), "w") as f:
    json.dump({**convert.hf_config_dict(model_config), "torch_dtype": dtype}, f, indent=2)
  if vocab_file:
    export_tokenizer(vocab_file, lower_case, output_dir)


def probe_batch(model_config):
  """(ids, mask, segments) int64 [2, 32]: a fixed batch with a padded row, for logits checks after export."""
  rng = np.random.default_rng(0)
  seq = min(32, model_config.max_position_embeddings)
  ids = rng.integers(5, model_config.vocab_size, (2, seq))
  mask = np.ones((2, seq), np.int64)
  mask[1, seq // 2:] = 0
  segments = (np.arange(seq)[None] >= seq // 3).astype(np.int64) * mask
  return ids, mask, segments


def check_hf_dir(params, model_config, output_dir: str, tolerance: float = 1e-4) -> float:
  """Loads the written directory in transformers and compares logits on a fixed batch; returns max diff."""
  import torch
  from transformers import BertForPreTraining as HFBert
  from bert_jax.model import BertForPreTraining
  ids, mask, segments = probe_batch(model_config)
  hf = HFBert.from_pretrained(output_dir, torch_dtype=torch.float32).eval()
  with torch.no_grad():
    out = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
             token_type_ids=torch.from_numpy(segments))
  fp32 = dataclasses.replace(model_config, dtype="float32", param_dtype="float32")
  ours = BertForPreTraining(fp32).apply(
      {"params": jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), params)}, ids, mask, segments, None)
  diff = max(float(np.max(np.abs(np.asarray(ours["mlm_logits"]) - out.prediction_logits.numpy()))),
             float(np.max(np.abs(np.asarray(ours["nsp_logits"]) - out.seq_relationship_logits.numpy()))))
  if diff > tolerance:
    raise ValueError(f"HF logits differ from ours by {diff:.3g} > {tolerance:g} after conversion")
  return diff


def read_hf_dir(hf_dir: str, **config_overrides):
  """(params, BertConfig) from an HF directory with model.safetensors or pytorch_model.bin and config.json."""
  with open(os.path.join(hf_dir, "config.json")) as f:
    model_config = convert.bert_config_from_hf(json.load(f), **config_overrides)
  st = os.path.join(hf_dir, "model.safetensors")
  if os.path.exists(st):
    from safetensors.numpy import load_file
    try:
      state = load_file(st)
    except (TypeError, ValueError):  # bf16 tensors need torch to read
      from safetensors.torch import load_file as load_torch
      state = {k: v.float().numpy() for k, v in load_torch(st).items()}
  elif os.path.exists(os.path.join(hf_dir, "pytorch_model.bin")):
    import torch
    state = {k: v.float().numpy() for k, v in
             torch.load(os.path.join(hf_dir, "pytorch_model.bin"), map_location="cpu", weights_only=True).items()}
  else:
    raise FileNotFoundError(f"{hf_dir} has neither model.safetensors nor pytorch_model.bin")
  return convert.hf_to_params(state, model_config), model_config


def find_vocab(config, workdir: str) -> tuple[str | None, bool]:
  """(vocab file, lower_case) of a run: the config's vocab_file, else the manifest beside its train files,
  else the manifest of the data it prepared into WORKDIR/data."""
  from bert_jax.data import corpora, schema
  if config.data.vocab_file:
    return config.data.vocab_file, config.data.lower_case
  candidates = []
  if config.data.train_files:
    try:
      candidates.append(corpora.expand_globs(config.data.train_files))
    except FileNotFoundError:
      pass  # the data moved since training; the workdir cache may still know the vocabulary
  candidates += [[m] for m in sorted(glob.glob(os.path.join(workdir, "data", "*", "train", "*")))[-1:]]
  for files in candidates:
    manifest = schema.find_manifest(files)
    if manifest:
      return manifest["vocab"]["file"], manifest.get("lower_case", False)
  return None, False


def main(argv):
  from absl import flags
  f = flags.FLAGS
  command = argv[1] if len(argv) > 1 else None
  if command == "to_hf":
    params, model_config, config, step = load_workdir_params(f.workdir, f.step)
    vocab_file, lower_case = (f.vocab_file, f.lower_case) if f.vocab_file else find_vocab(config, f.workdir)
    write_hf_dir(params, model_config, f.output, f.dtype, vocab_file, lower_case)
    print(f"wrote {f.output} from {f.workdir} step {step}" + ("" if vocab_file else " (no vocabulary found: "
                                                              "pass --vocab_file for tokenizer files)"))
    try:
      import torch  # noqa: F401
      import transformers  # noqa: F401
    except ImportError:
      print("transformers/torch not installed: skipped the logits check")
      return
    diff = check_hf_dir(params, model_config, f.output, tolerance=f.tolerance if f.dtype == "float32" else 5e-2)
    print(f"checked: max |logit difference| vs transformers = {diff:.3g}")
  elif command in ("from_hf", "from_tf"):
    if command == "from_hf":
      params, model_config = read_hf_dir(f.hf_dir)
    else:
      with open(f.tf_config) as fh:
        model_config = convert.bert_config_from_hf(json.load(fh))
      params = convert.hf_to_params(tf1_to_hf_state(f.tf_checkpoint, model_config.num_layers), model_config)
    checkpoint_lib.save_params(f.output, params)
    with open(os.path.join(f.output, "bert_config.json"), "w") as fh:
      json.dump(convert.hf_config_dict(model_config), fh, indent=2)
    print(f"wrote params checkpoint {f.output}; train from it with --config.checkpoint.init_checkpoint={f.output}")
  else:
    raise SystemExit("usage: python -m bert_jax.convert {to_hf|from_hf|from_tf} [flags]; see --help")


def cli():
  from absl import app, flags
  flags.DEFINE_string("workdir", None, "to_hf: training workdir to read")
  flags.DEFINE_integer("step", None, "to_hf: checkpoint step (default: latest)")
  flags.DEFINE_string("output", None, "output directory", required=True)
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "to_hf: safetensors dtype")
  flags.DEFINE_string("vocab_file", None, "to_hf: vocabulary for the tokenizer files (default: the run's)")
  flags.DEFINE_bool("lower_case", False, "to_hf: with --vocab_file, whether it lower-cases")
  flags.DEFINE_float("tolerance", 1e-4, "to_hf: max logit difference accepted by the check")
  flags.DEFINE_string("hf_dir", None, "from_hf: directory with config.json and weights")
  flags.DEFINE_string("tf_checkpoint", None, "from_tf: checkpoint prefix, e.g. .../bert_model.ckpt")
  flags.DEFINE_string("tf_config", None, "from_tf: bert_config.json")
  app.run(main)
