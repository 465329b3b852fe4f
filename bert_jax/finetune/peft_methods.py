"""Fine-tuning methods as data: which parameters train (core/param_rules rules) and which encoder-config
fields switch a method's blocks on (layers/peft.py), plus putting a pretrained encoder into a model that
has PEFT parameters the checkpoint never had.

  method    trains (besides the task head, which no rule matches, so it trains)
  full      everything
  frozen    nothing in encoder/ (feature extraction)
  houlsby   the adapters (after attention and FFN) and the encoder's LayerNorms, as Houlsby et al. do
  pfeiffer  the adapters (after the FFN) and the encoder's LayerNorms
  prompt    the soft prompt
  prefix    the per-layer key/value prefixes
  lora      the LoRA matrices

The pooler stays frozen for every parameter-efficient method, as in HF peft (whose sequence-classification
models save only the classifier beside the adapter), so that exports load in `peft` unchanged.
"""

import dataclasses
from typing import Any, Mapping

from bert_jax.convert import workdir as workdir_lib
from bert_jax.core.param_rules import ParamRule
from bert_jax.layers import peft as peft_lib

METHODS = ("full", "frozen", "houlsby", "pfeiffer", "prompt", "prefix", "lora")
PEFT_METHODS = METHODS[2:]
_ENCODER_FROZEN = ParamRule(r"^encoder/", trainable=False)
_TRAINED = {
    "houlsby": (r"_adapter/", r"^encoder/.*layer_norm/"),
    "pfeiffer": (r"_adapter/", r"^encoder/.*layer_norm/"),
    "prompt": (r"/prompt_embeddings$",),
    "prefix": (r"/prefix/",),
    "lora": (r"_lora/lora_[ab]$",),
}
# The `peft` settings section of the fine-tuning config (configs/finetune.py) and their defaults.
SETTINGS = {"adapter_size": 64, "lora_rank": 8, "lora_alpha": 16.0, "lora_dropout": 0.1,
            "lora_targets": "query,value", "prompt_length": 20}


def _check_method(method: str) -> None:
  if method not in METHODS:
    raise ValueError(f"fine-tuning method {method!r} is not one of {METHODS}")


def default_rules(method: str) -> tuple[ParamRule, ...]:
  """The parameter rules of a method (first match decides; unmatched parameters, the head, train)."""
  _check_method(method)
  if method == "full":
    return ()
  return tuple(ParamRule(p) for p in _TRAINED.get(method, ())) + (_ENCODER_FROZEN,)


def model_overrides(method: str, settings: Mapping[str, Any] | None = None) -> dict:
  """EncoderConfig fields that give the model the method's blocks. settings: the config's `peft` section
  (keys of SETTINGS; missing ones take SETTINGS' defaults)."""
  _check_method(method)
  s = {**SETTINGS, **{k: v for k, v in dict(settings or {}).items() if v is not None}}
  unknown = sorted(set(s) - set(SETTINGS))
  if unknown:
    raise ValueError(f"unknown peft settings {unknown}; known: {sorted(SETTINGS)}")
  if method in ("houlsby", "pfeiffer"):
    return {"adapter_kind": method, "adapter_size": int(s["adapter_size"])}
  if method in ("prompt", "prefix"):
    return {"prompt_kind": method, "prompt_length": int(s["prompt_length"])}
  if method == "lora":
    if int(s["lora_rank"]) < 1:
      raise ValueError(f"method lora needs peft.lora_rank >= 1, got {s['lora_rank']}")
    targets = s["lora_targets"]
    targets = tuple(t.strip() for t in (targets.split(",") if isinstance(targets, str) else targets) if t.strip())
    return {"lora_rank": int(s["lora_rank"]), "lora_alpha": float(s["lora_alpha"]),
            "lora_dropout": float(s["lora_dropout"]), "lora_targets": targets}
  return {}


def method_of_config(model_config) -> str:
  """The parameter-efficient method an encoder config carries ('full' when none; several: the first)."""
  if model_config.lora_rank:
    return "lora"
  if model_config.adapter_kind != "none":
    return model_config.adapter_kind
  if model_config.prompt_kind != "none":
    return model_config.prompt_kind
  return "full"


def without_peft(model_config):
  """The same encoder config with every PEFT block off (the base model)."""
  return dataclasses.replace(model_config, adapter_kind="none", lora_rank=0, prompt_kind="none")


def has_peft_params(params) -> bool:
  return bool(split_peft(params)[1])


def split_peft(tree, prefix: str = ""):
  """(base tree, PEFT tree): the subtrees whose path layers/peft.py's blocks create go to the second."""
  base, extra = {}, {}
  for key, value in tree.items():
    path = f"{prefix}/{key}" if prefix else str(key)
    if peft_lib.is_peft_path(path):
      extra[key] = value
    elif isinstance(value, Mapping):
      b, e = split_peft(value, path)
      base[key] = b
      if e:
        extra[key] = e
    else:
      base[key] = value
  return base, extra


def join_peft(base, extra):
  """Inverse of split_peft."""
  out = dict(base)
  for key, value in extra.items():
    out[key] = join_peft(out[key], value) if key in out and isinstance(value, Mapping) else value
  return out


def fit_params(params, like_params, shardings, model_config, where: str, keep=None, log=print,
               saved_vocab_size: int | None = None):
  """convert.workdir.fit_params for a model with PEFT blocks: the pretrained (PEFT-free) params fill the base
  parameters, and the PEFT parameters keep their fresh values from like_params."""
  like_base, like_peft = split_peft(like_params)
  if not like_peft:
    return workdir_lib.fit_params(params, like_params, shardings, model_config, where, keep, log, saved_vocab_size)
  saved_base, saved_peft = split_peft(params)
  if saved_peft:
    paths = sorted(_paths(saved_peft))[:4]
    raise ValueError(f"{where} already holds parameter-efficient parameters ({', '.join(paths)}, ...); start from "
                     f"a pretraining checkpoint, or merge/export the fine-tuned one first (finetune/peft_export.py)")
  fitted = workdir_lib.fit_params(saved_base, like_base, split_peft(shardings)[0], without_peft(model_config),
                                  where, keep, log, saved_vocab_size)
  return join_peft(fitted, like_peft)


def _paths(tree, prefix=""):
  for key, value in tree.items():
    path = f"{prefix}/{key}" if prefix else str(key)
    if isinstance(value, Mapping):
      yield from _paths(value, path)
    else:
      yield path

