"""HF directories: write (config.json, model.safetensors, tokenizer files), read, and check logits.

The class written is the family's HF class holding exactly the params' sections (e.g. BERT with MLM and
NSP heads -> BertForPreTraining, RoBERTa with MLM -> RobertaForMaskedLM, ALBERT with MLM and SOP ->
AlbertForPreTraining); the check reloads the directory in transformers and compares logits with ours.
"""

import dataclasses
import functools
import json
import os

import jax
import numpy as np

from bert_jax.convert import hf_params
from bert_jax.data import hf_tokenizer
from bert_jax.models import name_tables as nt
from bert_jax.models import registry, span_boundary_head

# Side sections (Family.side_files) -> (file of the layout note written beside them, its content(config, shapes)).
SIDE_NOTES = {span_boundary_head.SECTION: (span_boundary_head.SIDE_LAYOUT_FILE, span_boundary_head.layout_note)}


def hf_config_dict(config, sections) -> dict:
  family = registry.family_of(config)
  return {"architectures": [family.architecture(sections)], **family.hf_config(config)}


def write_hf_dir(params, model_config, output_dir: str, dtype: str = "float32", vocab_file: str | None = None,
                 lower_case: bool = False, log=print) -> str:
  """Writes the directory; returns the HF architecture name. Sections no HF class holds (the family's side_files,
  e.g. SpanBERT's SBO head) go to files of their own beside model.safetensors, and `log` says so."""
  from safetensors.numpy import save_file  # the torch extra brings it (workdir.check_export_installed)
  os.makedirs(output_dir, exist_ok=True)
  sections = _exportable_sections(params, model_config)
  state = hf_params.params_to_hf(params, model_config, sections)
  # bfloat16 is ml_dtypes' (JAX's), which safetensors writes as BF16, rounded to nearest even as torch rounds
  np_dtype = {"float32": np.float32, "bfloat16": jax.numpy.bfloat16}[dtype]
  tensors = {k: np.ascontiguousarray(np.asarray(v, np.float32).astype(np_dtype)) for k, v in state.items()}
  hf = hf_config_dict(model_config, sections)
  family = registry.family_of(model_config)
  for section, file_name in family.side_files.items():
    if section in sections:
      names = [n for _, hf_name, _ in family.name_table(model_config)[section] for n in nt.hf_names(hf_name)]
      save_file({n: tensors.pop(n) for n in names}, os.path.join(output_dir, file_name), metadata={"format": "pt"})
      if section in SIDE_NOTES:
        note_file, note = SIDE_NOTES[section]
        with open(os.path.join(output_dir, note_file), "w") as f:
          json.dump(note(model_config, {n: state[n].shape for n in names}), f, indent=2)
      log(f"wrote the {section!r} head to {os.path.join(output_dir, file_name)} beside the HF files: "
          f"{hf['architectures'][0]} has no place for it (from_hf reads it back)")
    else:  # an earlier export's files: from_hf would read them back
      for stale in (file_name,) + ((SIDE_NOTES[section][0],) if section in SIDE_NOTES else ()):
        if os.path.exists(os.path.join(output_dir, stale)):
          os.remove(os.path.join(output_dir, stale))
  save_file(tensors, os.path.join(output_dir, "model.safetensors"), metadata={"format": "pt"})
  with open(os.path.join(output_dir, "config.json"), "w") as f:
    json.dump({**hf, "torch_dtype": dtype}, f, indent=2)
  if vocab_file:
    hf_tokenizer.save_hf_tokenizer(vocab_file, lower_case, output_dir, model_max_length=model_config.max_sequence_length)
  return hf["architectures"][0]


def write_hf_dirs(models: dict, output_dir: str, dtype: str = "float32", vocab_file: str | None = None,
                  lower_case: bool = False, log=print) -> dict:
  """One HF directory per exported model ({name: (params, config)}): a single model ('') in output_dir itself,
  several in output_dir/<name>, each with the tokenizer files. Returns {directory: (params, config, architecture)}."""
  written = {}
  for name, (params, model_config) in models.items():
    directory = os.path.join(output_dir, name) if name else output_dir
    written[directory] = (params, model_config, write_hf_dir(params, model_config, directory, dtype, vocab_file,
                                                             lower_case, log))
  return written


def _exportable_sections(params, model_config):
  """The params' sections, less a pooler that the family's MLM-only class has no place for."""
  sections = hf_params.param_sections(params)
  family = registry.family_of(model_config)
  try:
    family.architecture(sections)
  except ValueError:
    sections = [s for s in sections if s != "pooler"]
  return sections


def probe_batch(model_config):
  """(ids, mask, segments) int64 [2, 32]: a fixed batch with a padded row, for logits checks after export.
  Ids avoid the special range so that RoBERTa's HF position ids (counted from non-pad ids) equal ours."""
  rng = np.random.default_rng(0)
  seq = min(32, model_config.max_sequence_length)
  ids = rng.integers(5, model_config.vocab_size, (2, seq))
  mask = np.ones((2, seq), np.int64)
  mask[1, seq // 2:] = 0
  segments = (np.arange(seq)[None] >= seq // 3).astype(np.int64) * mask
  if model_config.type_vocab_size <= 1:
    segments = np.zeros_like(segments)
  return ids, mask, segments


def full_float32(check):
  """Runs a parity check's JAX side with float32 matmuls at full precision. XLA on a GPU computes float32 dots in
  TF32 by default (10-bit mantissa): a BERT-base forward then differs from PyTorch's by ~2e-3, over the 1e-4 that
  the checks hold conversions to (seen on an H200), although the weights are right."""
  @functools.wraps(check)
  def at_full_precision(*args, **kwargs):
    with jax.default_matmul_precision("highest"):
      return check(*args, **kwargs)
  return at_full_precision


def torch_inputs(model_config, ids, mask, segments) -> dict:
  """The keyword inputs of the family's HF classes as torch tensors: token_type_ids only where they take them
  (DistilBERT's take none; transformers 4.x refuses the argument)."""
  import torch
  inputs = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
  if registry.family_of(model_config).hf_token_type_ids and model_config.type_vocab_size:
    inputs["token_type_ids"] = torch.from_numpy(segments)
  return inputs


@full_float32
def check_hf_dir(params, model_config, output_dir: str, tolerance: float = 1e-4) -> float:
  """Loads the written directory in transformers and compares outputs on a fixed batch; returns max diff."""
  import torch
  import transformers
  with open(os.path.join(output_dir, "config.json")) as f:
    architecture = json.load(f)["architectures"][0]
  family = registry.family_of(model_config)
  hf = getattr(transformers, architecture).from_pretrained(output_dir, dtype=torch.float32).eval()
  ids, mask, segments = probe_batch(model_config)
  with torch.no_grad():
    out = hf(**torch_inputs(model_config, ids, mask, segments))
  fp32 = dataclasses.replace(model_config, dtype="float32", param_dtype="float32")
  heads = tuple(s for s in _exportable_sections(params, model_config)
                if s not in ("encoder", "pooler") and s not in family.side_files)  # transformers has no side heads
  # one compiled forward: op by op, a tiny model's forward compiles some 70 programs (3 s on 2 cores)
  ours = jax.jit(family.build_model(fp32, heads).apply)(
      {"params": jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), params)}, ids, mask, segments, None)
  diff = 0.0
  for our_key, hf_key in family.hf_output_names(architecture).items():
    if our_key in ours:
      a, b = np.asarray(ours[our_key]), getattr(out, hf_key).numpy()
      if our_key == "sequence_output":
        a, b = a[mask.astype(bool)], b[mask.astype(bool)]
      diff = max(diff, float(np.max(np.abs(a - b))))
  if diff > tolerance:
    raise ValueError(f"HF {architecture} outputs differ from ours by {diff:.3g} > {tolerance:g} after conversion")
  return diff


@full_float32
def check_read_back(params, model_config, output_dir: str, tolerance: float = 1e-4) -> float:
  """For an HF class the installed transformers lacks (NEZHA since v5): reads the written directory back with our
  own reader (config.json and weights) and compares its outputs with the params' on the probe batch; returns the
  max difference (the weights come back bit for bit from a float32 export; only another layout's float noise, or
  bfloat16 rounding, differs)."""
  back_params, back_config = read_hf_dir(output_dir)
  family = registry.family_of(model_config)
  heads = tuple(s for s in _exportable_sections(params, model_config) if s not in ("encoder", "pooler"))
  ids, mask, segments = probe_batch(model_config)
  outputs, models = [], {}
  for tree, config in ((params, model_config), (back_params, back_config)):
    fp32 = dataclasses.replace(config, dtype="float32", param_dtype="float32")
    if fp32 not in models:  # one compile when the layouts agree
      models[fp32] = jax.jit(family.build_model(fp32, heads).apply)
    outputs.append(models[fp32]({"params": jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), tree)},
                                ids, mask, segments))
  ours, back = outputs
  diff = max(float(np.max(np.abs(np.asarray(ours[k]) - np.asarray(back[k])))) for k in ours)
  if diff > tolerance:
    raise ValueError(f"{output_dir} read back gives outputs that differ from the params' by {diff:.3g} > {tolerance:g}")
  return diff


def load_safetensors(path: str) -> dict:
  from safetensors.numpy import load_file
  try:
    return load_file(path)
  except (TypeError, ValueError):  # bf16 tensors need torch to read
    from safetensors.torch import load_file as load_torch
    return {k: v.float().numpy() for k, v in load_torch(path).items()}


# Older hub checkpoints (bert-base-uncased, ...) name LayerNorm weights as TF did; transformers renames them on load
# (its "legacy" WeightRenaming), so the same directory must load here.
LEGACY_HF_SUFFIXES = (("LayerNorm.gamma", "LayerNorm.weight"), ("LayerNorm.beta", "LayerNorm.bias"))


def _modern_name(key: str) -> str:
  for legacy, modern in LEGACY_HF_SUFFIXES:
    if key.endswith(legacy):
      return key[:-len(legacy)] + modern
  return key


def load_state_dict(hf_dir: str) -> dict:
  """The directory's weights by their current HF names (legacy LayerNorm gamma/beta renamed as transformers does)."""
  st = os.path.join(hf_dir, "model.safetensors")
  if os.path.exists(st):
    state = load_safetensors(st)
  elif os.path.exists(os.path.join(hf_dir, "pytorch_model.bin")):
    import torch
    state = {k: v.float().numpy() for k, v in
             torch.load(os.path.join(hf_dir, "pytorch_model.bin"), map_location="cpu", weights_only=True).items()}
  else:
    raise FileNotFoundError(f"{hf_dir} has neither model.safetensors nor pytorch_model.bin")
  return {_modern_name(k): v for k, v in state.items()}


def config_from_hf_json(hf: dict, **overrides):
  """Our encoder config from an HF config.json dict; its model_type picks the family."""
  model_type = hf.get("model_type", "bert")
  matches = [f for f in registry.FAMILIES.values() if f.hf_model_type == model_type]
  if not matches:
    raise ValueError(f"HF model_type {model_type!r} is not a family bert_jax has "
                     f"({sorted(f.hf_model_type for f in registry.FAMILIES.values())})")
  return matches[0].config_from_hf(hf, **overrides)


def read_hf_dir(hf_dir: str, **config_overrides):
  """(params, encoder config) from an HF directory with model.safetensors or pytorch_model.bin and config.json,
  plus the heads the family writes beside them where their files are there (SpanBERT's span_boundary_head.safetensors).
  HF task-model prefixes (e.g. a classifier) are not pretraining sections and fail as unexpected keys."""
  with open(os.path.join(hf_dir, "config.json")) as f:
    model_config = config_from_hf_json(json.load(f), **config_overrides)
  state = load_state_dict(hf_dir)
  model_type = registry.family_of(model_config).hf_model_type
  prefix = model_type + "."
  if not any(k.startswith(prefix) for k in state):  # a bare *Model saves its keys without the prefix
    # ...unless they carry another family's prefix: ERNIE and BERT share a layout, and copies relabelled one way
    # or the other (config.json's model_type edited, weights not renamed) are about.
    named_for = sorted({f.hf_model_type for f in registry.FAMILIES.values()
                        if any(k.startswith(f.hf_model_type + ".") for k in state)})
    if named_for:
      raise ValueError(f"{hf_dir}: config.json says model_type {model_type!r} but the weights are named for "
                       f"{named_for[0]!r} ({named_for[0]}.*); set model_type to {named_for[0]!r} in config.json, or "
                       f"rename the weights to {prefix}*")
    state = {prefix + k: v for k, v in state.items()}
  for file_name in registry.family_of(model_config).side_files.values():  # heads written beside (SpanBERT's SBO)
    if os.path.exists(os.path.join(hf_dir, file_name)):
      state.update(load_safetensors(os.path.join(hf_dir, file_name)))
  return hf_params.hf_to_params(state, model_config), model_config


def read_hf_models(hf_dir: str, **config_overrides) -> dict:
  """{name: (params, encoder config)}: '' for a directory with config.json, else one entry per subdirectory that
  has one (as `to_hf` writes ELECTRA's discriminator/ and generator/)."""
  if os.path.exists(os.path.join(hf_dir, "config.json")):
    return {"": read_hf_dir(hf_dir, **config_overrides)}
  if not os.path.isdir(hf_dir):
    raise FileNotFoundError(f"HF directory {hf_dir} does not exist")
  if os.path.isdir(os.path.join(hf_dir, "checkpoints")):  # the other direction's input
    raise FileNotFoundError(f"{hf_dir} is a training workdir, not a HuggingFace directory: `convert to_hf "
                            f"--workdir={hf_dir}` exports it, and train/finetune start from it as it is")
  names = sorted(d for d in os.listdir(hf_dir) if os.path.exists(os.path.join(hf_dir, d, "config.json")))
  if not names:
    raise FileNotFoundError(f"{hf_dir} has no config.json, nor subdirectories with one")
  return {name: read_hf_dir(os.path.join(hf_dir, name), **config_overrides) for name in names}
