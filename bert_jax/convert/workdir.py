"""Reading params out of a training workdir or a params checkpoint, with no optimizer, objective or mesh.

  load_workdir_params  a workdir's newest (or given) checkpoint -> (params, encoder config, run config, step)
  restore_params       init_checkpoint: a workdir or a params checkpoint, converted to the run's layout and
                       placed in its shardings; a checkpoint of another family fails naming both
  find_vocab           the vocabulary a run trained with
"""

import glob
import json
import os

import jax
import numpy as np

from bert_jax.convert import hf_params
from bert_jax.core import checkpoint as checkpoint_lib
from bert_jax.core import configlib
from bert_jax.data import corpora, schema
from bert_jax.models import registry

PARAMS_CONFIG_FILE = "model_config.json"  # beside a params checkpoint: {"family": ..., "hf_config": {...}}


def load_workdir_params(workdir: str, step: int | None = None):
  """(params as numpy, encoder config, run ConfigDict, step) from a training workdir's checkpoint."""
  manager, latest = checkpoint_lib.latest_step(os.path.join(workdir, "checkpoints"))
  step = latest if step is None else step
  if step is None or step not in manager.all_steps():
    raise FileNotFoundError(f"no checkpoint{'' if step is None else f' at step {step}'} in {workdir}/checkpoints "
                            f"(have {list(manager.all_steps())})")
  config = configlib.with_current_defaults(checkpoint_lib.load_saved_config(manager, step))
  model_config = registry.encoder_config(config.model.to_dict(), dropout_off=config.train.deterministic)
  params = checkpoint_lib.load_saved_params(manager, step)
  return jax.tree_util.tree_map(np.asarray, params), model_config, config, step


def write_params_checkpoint(directory: str, params, model_config) -> None:
  """A params-only checkpoint plus the family and HF config that say what it holds."""
  checkpoint_lib.save_params(directory, params)
  family = registry.family_of(model_config)
  with open(os.path.join(directory, PARAMS_CONFIG_FILE), "w") as f:
    json.dump({"family": family.name, "hf_config": family.hf_config(model_config)}, f, indent=2)


def _read_params(directory: str):
  """(params, family name or None) of a workdir or a params checkpoint."""
  if os.path.isdir(os.path.join(directory, "checkpoints")):
    params, model_config, _, _ = load_workdir_params(directory)
    return params, type(model_config).family
  family = None
  config_file = os.path.join(directory, PARAMS_CONFIG_FILE)
  if os.path.exists(config_file):
    with open(config_file) as f:
      family = json.load(f)["family"]
  return checkpoint_lib.load_params(directory), family


def restore_params(directory: str, like_params, shardings, model_config, keep=None, log=print):
  """Params from init_checkpoint (a workdir or a params checkpoint) in this run's layout and shardings.

  keep(path) -> bool selects the subtrees taken from the checkpoint (default: all of like_params); the
  others keep like_params' values (e.g. fresh heads), as do heads the checkpoint lacks (an HF *ForMaskedLM
  starting an MLM+SOP run: the SOP head is new, and `log` says so). Shapes must match.
  """
  directory = os.path.abspath(directory)
  params, family = _read_params(directory)
  ours = type(model_config).family
  if family is not None and family != ours:
    raise ValueError(f"init_checkpoint {directory} is a {family!r} checkpoint but this run's model family is "
                     f"{ours!r}; start from a {ours} checkpoint or set model.family={family!r}")
  return fit_params(params, like_params, shardings, model_config, f"init_checkpoint {directory}", keep, log)


def fit_params(params, like_params, shardings, model_config, where: str, keep=None, log=print):
  """Saved params (host arrays, any layout) put into a model's fresh params and shardings: layout converted,
  the pooler as the model uses it, heads the saved params lack (or keep() declines) left fresh, shapes checked."""
  params = hf_params.to_layout(params, model_config, where=where)
  params = _pooler_as_in(params, like_params)
  keep = keep or (lambda top: True)
  merged = {}
  for top, like in like_params.items():
    if not keep(top):
      merged[top] = like
      continue
    if top not in params:
      if top == "encoder":
        raise ValueError(f"{where} has no encoder params (it has {sorted(params)})")
      log(f"{where} has no {top!r} head (it has {sorted(params)}): {top!r} starts fresh")
      merged[top] = like
      continue
    if jax.tree_util.tree_structure(params[top]) != jax.tree_util.tree_structure(like):
      raise ValueError(f"{where}: {top!r} has a different parameter tree than this model "
                       f"(num_layers, layer_sharing or heads differ?)")
    merged[top] = jax.tree_util.tree_map_with_path(lambda p, x, l: _place(where, top, p, x, l), params[top], like)
  return jax.tree_util.tree_map(lambda x, s: x if isinstance(x, jax.Array) and x.sharding == s
                                else jax.device_put(np.asarray(x), s), merged, shardings)


def _pooler_as_in(params, like_params):
  """The pooler is the one trunk part only some objectives create: a checkpoint's pooler this run never reads
  (HF roberta-base has one, an MLM-only run does not) is left out, and a run that reads a pooler the
  checkpoint lacks starts it fresh."""
  encoder, like = dict(params.get("encoder", {})), like_params.get("encoder", {})
  if "pooler" in encoder and "pooler" not in like:
    del encoder["pooler"]
  elif "pooler" in like and "pooler" not in encoder and encoder:
    encoder["pooler"] = jax.tree_util.tree_map(np.asarray, jax.device_get(like["pooler"]))
  return {**params, "encoder": encoder} if encoder else params


def _place(where, top, path, x, like):
  if x.shape != like.shape:
    raise ValueError(f"{where}: {top}{jax.tree_util.keystr(path)} has shape {x.shape}, "
                     f"this model needs {like.shape}")
  return np.asarray(x, like.dtype)


def find_vocab(config, workdir: str) -> tuple[str | None, bool]:
  """(vocab file, lower_case) of a run: the config's vocab_file, else the manifest beside its train files,
  else the manifest of the data it prepared into WORKDIR/data."""
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
