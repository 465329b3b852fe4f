"""Exports of models fine-tuned with a parameter-efficient method (finetune/peft_methods.py).

  LoRA     -> DIR/hf        the LoRA update merged into the kernels: a plain transformers task model
           -> DIR/hf_peft   base/ (the transformers task model LoRA was trained on) + adapter/ (HF `peft`:
                            adapter_config.json, adapter_model.safetensors, the head in modules_to_save)
  prompt   -> DIR/hf_peft   base/ + adapter/ (peft prompt tuning; sequence classification and regression)
  adapters, prefix, and every method
           -> DIR/bert_jax_peft  our own format (below): Houlsby/Pfeiffer adapters are non-linear and cannot be
                            merged into the dense weights, and `peft` has no Houlsby adapter; our prefix tuning
                            feeds keys/values straight into attention, which transformers 5 encoders take no
                            cache for.

`peft.PeftModel.from_pretrained(AutoModelFor<Task>.from_pretrained(DIR/hf_peft/base), DIR/hf_peft/adapter)`
gives our logits (checked on export, to 1e-4). With a soft prompt the HF sequence classifier pools the first
prompt token, and so does ours (heads.SequenceClassifier). A QA adapter has no task_type (PEFT_TASKS), so it loads
as a plain PeftModel, which passes token_type_ids on.

Our format, DIR/bert_jax_peft:
  model.safetensors   every parameter under its '/'-joined Flax path (encoder/layer_0/ffn_adapter/down/kernel,
                      ...), float32, in the layout the config names (scan_layers)
  bert_jax_peft.json  {"format": "bert_jax_peft/1", "family", "encoder_config": {EncoderConfig fields},
                      "task": {"kind", "num_labels", "label_names"}, "method", "trainable_params": [paths]}
read_native() gives (params, encoder config, task info) back; heads.MODELS[kind](config, num_labels) runs them.
"""

import dataclasses
import json
import os

import jax
import numpy as np

from bert_jax.convert import hf_dir
from bert_jax.finetune import heads, peft_methods, task_export
from bert_jax.layers import peft as peft_lib
from bert_jax.models import name_tables as nt
from bert_jax.models import registry

NATIVE_FORMAT = "bert_jax_peft/1"
NATIVE_CONFIG = "bert_jax_peft.json"
# Our task kind -> peft TaskType. QA has none (a plain PeftModel, the head in modules_to_save): peft's
# PeftModelForQuestionAnswering takes token_type_ids but never passes them on (peft 0.21, and main in 2026-08), so a
# QUESTION_ANS adapter reads every token of a question/context pair as segment A.
PEFT_TASKS = {"classification": "SEQ_CLS", "regression": "SEQ_CLS", "tagging": "TOKEN_CLS", "qa": None,
              "multiple_choice": None}  # peft has no multiple-choice task type


def _numpy(params):
  return jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), jax.device_get(params))


def merged(params, model_config):
  """(params, config) with the LoRA update folded into the kernels and LoRA off: a plain model. Fails for the
  methods that cannot be merged (adapters, prompts, prefixes)."""
  if model_config.adapter_kind != "none" or model_config.prompt_kind != "none":
    raise ValueError(f"only LoRA merges into the base weights; this model has adapter_kind="
                     f"{model_config.adapter_kind!r}, prompt_kind={model_config.prompt_kind!r}: use write_native")
  if not model_config.lora_rank:
    return _numpy(params), model_config
  return (peft_lib.merge_lora(_numpy(params), peft_lib.lora_scale(model_config)),
          dataclasses.replace(model_config, lora_rank=0))


def write_merged_hf_dir(params, model_config, spec, output_dir: str, vocab_file=None, lower_case=False) -> float:
  """LoRA merged into a transformers task model; returns its max logit difference from ours (checked)."""
  params, config = merged(params, model_config)
  task_export.write_hf_dir(params, config, spec, output_dir, vocab_file, lower_case)
  fp32 = heads.MODELS[spec.kind](dataclasses.replace(config, dtype="float32"), num_labels=spec.num_labels)
  return task_export.check_hf_dir(fp32, params, spec, output_dir)


def _lora_modules(params, model_config):
  """{HF module name: (A [r, in], B [out, r])} of every LoRA pair, through the family's name table."""
  flat = nt.flatten(nt.unscan_params(_numpy(params), model_config.num_layers))
  tables = registry.family_of(model_config).name_table(model_config)
  hf_of = {ours: hf for _, rows in tables.items() for ours, hf, _ in rows}
  modules = {}
  for path in sorted(p for p in flat if p.endswith("_lora/lora_a")):
    scope, lora = path[:-len("/lora_a")].rsplit("/", 1)
    target = lora[:-len("_lora")]
    a, b = flat[path], flat[path[:-1] + "b"]
    kernel = f"{scope}/{target}/kernel"
    if kernel in hf_of:
      hf = hf_of[kernel]
    elif target in ("query", "key", "value") and f"{scope}/qkv/kernel" in hf_of:  # fused QKV: one slot's name
      hf = hf_of[f"{scope}/qkv/kernel"][("query", "key", "value").index(target)]
    else:
      raise KeyError(f"no HF name for {kernel!r} (LoRA {path!r}) in the {type(model_config).family} table")
    rank = a.shape[-1]
    modules[hf[:-len(".weight")]] = (a.reshape(-1, rank).T, b.reshape(rank, -1).T)
  return modules


def _head_modules(base_params, base_config, kind: str) -> list[str]:
  """The HF task model's top-level modules outside the encoder (classifier, pre_classifier, qa_outputs...):
  peft saves them whole beside the adapter (modules_to_save)."""
  encoder_prefix = registry.family_of(base_config).hf_model_type + "."
  state = task_export.params_to_hf(base_params, base_config, kind)
  return sorted({name.split(".")[0] for name in state if not name.startswith(encoder_prefix)})


def _peft_config(model_config, spec, head_modules, lora_modules=()):
  import peft
  if spec.kind not in PEFT_TASKS:
    raise ValueError(f"no HF peft task type for task kind {spec.kind!r}; known: {sorted(PEFT_TASKS)}")
  task_type = PEFT_TASKS[spec.kind]
  c = model_config
  if c.lora_rank and c.adapter_kind == "none" and c.prompt_kind == "none":
    return peft.LoraConfig(task_type=task_type, r=c.lora_rank, lora_alpha=c.lora_alpha, lora_dropout=c.lora_dropout,
                           target_modules=sorted(lora_modules), modules_to_save=list(head_modules)), "lora"
  if c.prompt_kind == "prompt" and not c.lora_rank and c.adapter_kind == "none":
    if task_type != "SEQ_CLS":
      raise ValueError(f"prompt tuning exports to HF peft for sequence classification/regression only, not "
                       f"{spec.kind!r} (peft keeps the prompt positions in token outputs, we drop them); use "
                       f"write_native")
    return peft.PromptTuningConfig(task_type=task_type, num_virtual_tokens=c.prompt_length,
                                   modules_to_save=list(head_modules),
                                   token_dim=c.embedding_width, num_transformer_submodules=1,
                                   num_attention_heads=c.num_heads, num_layers=c.num_layers), "prompt"
  raise ValueError(f"HF peft export covers LoRA alone or a soft prompt alone; this model has adapter_kind="
                   f"{c.adapter_kind!r}, lora_rank={c.lora_rank}, prompt_kind={c.prompt_kind!r}: use write_native")


def write_peft_dir(params, model_config, spec, output_dir: str, vocab_file=None, lower_case=False) -> str:
  """output_dir/base (transformers task model) + output_dir/adapter (HF peft); returns the adapter dir."""
  import peft
  import torch
  import transformers
  modules = _lora_modules(params, model_config) if model_config.lora_rank else {}
  base_params, _ = peft_methods.split_peft(_numpy(params))
  base_config = peft_methods.without_peft(model_config)
  peft_config, kind = _peft_config(model_config, spec, _head_modules(base_params, base_config, spec.kind), modules)
  base_dir, adapter_dir = os.path.join(output_dir, "base"), os.path.join(output_dir, "adapter")
  task_export.write_hf_dir(base_params, base_config, spec, base_dir, vocab_file, lower_case)
  base = getattr(transformers, task_export.hf_class(base_config, spec.kind)).from_pretrained(
      base_dir, dtype=torch.float32)
  model = peft.get_peft_model(base, peft_config)
  named = dict(model.named_parameters())
  with torch.no_grad():
    if kind == "lora":
      for module, (a, b) in modules.items():
        for which, value in (("lora_A", a), ("lora_B", b)):
          name = f"base_model.model.{module}.{which}.default.weight"
          if name not in named:
            raise KeyError(f"peft model has no {name!r}; its LoRA params: "
                           f"{[n for n in named if 'lora_' in n][:4]}")
          named[name].copy_(torch.from_numpy(np.ascontiguousarray(value)))
      placed = 2 * len(modules)
      have = sum(1 for n in named if ".lora_A." in n or ".lora_B." in n)
      if placed != have:
        raise ValueError(f"peft made {have} LoRA matrices but we have {placed}")
    else:
      prompt = np.asarray(peft_methods.split_peft(_numpy(params))[1]["encoder"]["embeddings"]["prompt_embeddings"])
      model.prompt_encoder["default"].embedding.weight.copy_(torch.from_numpy(prompt))
  model.save_pretrained(adapter_dir)
  return adapter_dir


@hf_dir.full_float32
def check_peft_dir(params, model_config, spec, output_dir: str, tolerance: float = 1e-4) -> float:
  """Loads output_dir/base in transformers and output_dir/adapter in peft; returns the max logit difference
  from ours on a fixed padded batch (fails above tolerance)."""
  import peft
  import torch
  import transformers
  base_config = peft_methods.without_peft(model_config)
  base = getattr(transformers, task_export.hf_class(base_config, spec.kind)).from_pretrained(
      os.path.join(output_dir, "base"), dtype=torch.float32)
  hf = peft.PeftModel.from_pretrained(base, os.path.join(output_dir, "adapter")).eval()
  ids, mask, segments = hf_dir.probe_batch(model_config)
  seq = min(ids.shape[1], model_config.max_sequence_length - peft_lib.prompt_tokens(model_config))
  ids, mask, segments = task_export.as_task_inputs(spec.kind, ids[:, :seq], mask[:, :seq], segments[:, :seq])
  with torch.no_grad():
    out = hf(**hf_dir.torch_inputs(base_config, ids, mask, segments))
  fp32 = dataclasses.replace(model_config, dtype="float32", lora_dropout=0.0)
  model = heads.MODELS[spec.kind](fp32, num_labels=spec.num_labels)
  ours = jax.jit(model.apply)({"params": _numpy(params)}, ids, mask, segments)  # one compile, not one per op
  diff = task_export.logit_difference(ours, out, mask, spec.kind)
  if diff > tolerance:
    raise ValueError(f"HF peft model logits differ from ours by {diff:.3g} > {tolerance:g} ({output_dir})")
  return diff


def write_native(params, model_config, spec, output_dir: str, trainable_paths=()) -> str:
  """Our format (module docstring): every parameter plus the config that rebuilds the model."""
  from safetensors.numpy import save_file
  os.makedirs(output_dir, exist_ok=True)
  flat = {k: np.ascontiguousarray(v) for k, v in nt.flatten(_numpy(params)).items()}
  save_file(flat, os.path.join(output_dir, "model.safetensors"), metadata={"format": NATIVE_FORMAT})
  info = {"format": NATIVE_FORMAT, "family": type(model_config).family,
          "encoder_config": {f.name: getattr(model_config, f.name) for f in dataclasses.fields(model_config)},
          "task": {"kind": spec.kind, "num_labels": spec.num_labels, "label_names": list(spec.label_names or [])},
          "method": peft_methods.method_of_config(model_config), "trainable_params": sorted(trainable_paths)}
  with open(os.path.join(output_dir, NATIVE_CONFIG), "w") as f:
    json.dump(info, f, indent=2)
  return output_dir


def read_native(directory: str):
  """(params, encoder config, task info) of a write_native directory."""
  from safetensors.numpy import load_file
  config_file = os.path.join(directory, NATIVE_CONFIG)
  if not os.path.exists(config_file):
    raise FileNotFoundError(f"{directory} has no {NATIVE_CONFIG}: not a bert_jax PEFT export")
  with open(config_file) as f:
    info = json.load(f)
  if info.get("format") != NATIVE_FORMAT:
    raise ValueError(f"{config_file} has format {info.get('format')!r}; this version reads {NATIVE_FORMAT!r}")
  fields = dict(info["encoder_config"])
  fields["lora_targets"] = tuple(fields.get("lora_targets", ()))
  model_config = registry.get_family(info["family"]).config_cls(**fields)
  params = nt.unflatten(load_file(os.path.join(directory, "model.safetensors")))
  return params, model_config, info["task"]


def export_all(params, model_config, spec, workdir: str, vocab_file=None, lower_case=False, trainable_paths=(),
               log=print) -> dict:
  """Every export the model's method allows (module docstring), each checked; returns their logit differences."""
  out = {}
  native = write_native(params, model_config, spec, os.path.join(workdir, "bert_jax_peft"), trainable_paths)
  log(f"wrote {native} (bert_jax format: params + config)")
  c = model_config
  only_lora = c.lora_rank and c.adapter_kind == "none" and c.prompt_kind == "none"
  if only_lora:
    out["hf_max_logit_diff"] = write_merged_hf_dir(params, c, spec, os.path.join(workdir, "hf"), vocab_file,
                                                   lower_case)
    log(f"wrote {workdir}/hf (LoRA merged); {task_export.describe_check(c, spec.kind, out['hf_max_logit_diff'])}")
  prompt_only = c.prompt_kind == "prompt" and not c.lora_rank and c.adapter_kind == "none"
  if only_lora or (prompt_only and PEFT_TASKS.get(spec.kind) == "SEQ_CLS"):
    import transformers
    name = task_export.hf_class(peft_methods.without_peft(c), spec.kind)
    if not hasattr(transformers, name):  # NEZHA in transformers 5: peft needs the torch model to write an adapter
      log(f"no HF peft export: transformers {transformers.__version__} has no {name} class")
      return out
    peft_dir = os.path.join(workdir, "hf_peft")
    write_peft_dir(params, c, spec, peft_dir, vocab_file, lower_case)
    out["peft_max_logit_diff"] = check_peft_dir(params, c, spec, peft_dir)
    log(f"wrote {peft_dir} (HF peft adapter + base); logits match ours to {out['peft_max_logit_diff']:.2g}")
  return out
