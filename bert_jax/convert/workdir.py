"""Reading params out of a training workdir or a params checkpoint, with no optimizer or mesh (the run's objective
names the models it exports).

  load_workdir_models  a workdir's newest (or given) checkpoint -> its HF-exportable models (ELECTRA: two)
  load_workdir_params  the first of them -> (params, encoder config, run config, step): what fine-tuning reads
  restore_params       init_checkpoint: a workdir or a params checkpoint, converted to the run's layout and
                       placed in its shardings; a checkpoint of another family fails naming both
  find_vocab           the vocabulary a run trained with
  export_to_hf         a workdir's models as HF directories with tokenizer files, their logits checked in transformers
"""

import dataclasses
import glob
import importlib
import json
import os

import jax
import numpy as np
from etils import epath

from bert_jax.convert import hf_dir, hf_params
from bert_jax.core import checkpoint as checkpoint_lib
from bert_jax.core import configlib, param_rules, storage
from bert_jax.data import corpora, schema
from bert_jax.models import registry
from bert_jax.objectives import electra
from bert_jax.objectives import registry as objectives

PARAMS_CONFIG_FILE = "model_config.json"  # beside a params checkpoint: {"family": ..., "hf_config": {...}}


def load_workdir_tree(workdir: str, step: int | None = None, log=print):
  """(whole params tree as numpy, run ConfigDict, step) of a training workdir's checkpoint: the given step, or the
  newest readable one (a damaged newer one is skipped, saying so; the next training run moves it aside)."""
  manager, latest = checkpoint_lib.latest_step(os.path.join(workdir, "checkpoints"))
  if step is not None and step not in manager.all_steps():
    raise FileNotFoundError(f"no checkpoint at step {step} in {workdir}/checkpoints (have {list(manager.all_steps())})")
  if latest is None:
    raise FileNotFoundError(no_checkpoint_reason(workdir))
  candidates = [step] if step is not None else sorted(manager.all_steps(), reverse=True)
  for i, candidate in enumerate(candidates):
    try:
      with checkpoint_lib.quiet_failed_reads():
        config = configlib.with_current_defaults(checkpoint_lib.load_saved_config(manager, candidate))
        params = checkpoint_lib.load_saved_params(manager, candidate)
    except Exception as e:  # a torn or corrupt checkpoint
      if i == len(candidates) - 1:
        raise ValueError(f"the checkpoint at step {candidate} in {workdir}/checkpoints cannot be read "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})") from e
      log(f"WARNING: the checkpoint at step {candidate} in {workdir}/checkpoints is damaged "
          f"({type(e).__name__}); using the one before it")
      continue
    return jax.tree_util.tree_map(np.asarray, params), config, candidate


def no_checkpoint_reason(workdir: str) -> str:
  """Why `workdir` gives no training checkpoint, naming what it is instead and what reads that."""
  if not epath.Path(workdir).exists():
    return f"{workdir} does not exist"
  if epath.Path(workdir, "config.json").exists():
    return (f"{workdir} is a HuggingFace model, not a training workdir (WORKDIR/checkpoints/): `python -m "
            f"bert_jax.convert from_hf --hf_dir={workdir} --output=DIR` reads it")
  if epath.Path(workdir, PARAMS_CONFIG_FILE).exists():
    return (f"{workdir} is a params checkpoint (convert from_hf's output), not a training workdir "
            f"(WORKDIR/checkpoints/): pretraining starts from it with `python -m bert_jax.train "
            f"--config.checkpoint.init_checkpoint={workdir}`, and fine-tuning from that run's workdir")
  if epath.Path(workdir, "checkpoints").is_dir():
    return f"no checkpoint in {workdir}/checkpoints: the run has not saved one yet"
  return f"{workdir} is not a training workdir: it has no checkpoints/"


def run_encoder_config(config):
  return registry.encoder_config(config.model.to_dict(), dropout_off=config.train.deterministic)


def stored_encoder_config(path: str):
  """The encoder config of the model stored at `path`: a training workdir, a params checkpoint or an HF directory
  (no weights are read). Objectives that load a model of their own (a distillation teacher) take this."""
  if epath.Path(path, "checkpoints").is_dir():
    manager, latest = checkpoint_lib.latest_step(os.path.join(path, "checkpoints"))
    if latest is None:
      raise FileNotFoundError(f"{path}/checkpoints holds no checkpoint")
    return run_encoder_config(configlib.with_current_defaults(checkpoint_lib.load_saved_config(manager, latest)))
  params_config = epath.Path(path, PARAMS_CONFIG_FILE)
  if params_config.exists():
    return hf_dir.config_from_hf_json(json.loads(params_config.read_text())["hf_config"])
  return hf_dir.config_from_hf_json(json.loads(epath.Path(path, "config.json").read_text()))


def load_workdir_models(workdir: str, step: int | None = None):
  """({name: (params, encoder config)} of the HF-exportable models the run's objective trained, first the one
  fine-tuning starts from; run ConfigDict; step). One model is named ''; ELECTRA's are discriminator, generator.
  FP8 is how a run computed, not part of its models: they come without FP8 statistics and with fp8 off, as
  their HF classes compute."""
  params, config, step = load_workdir_tree(workdir, step)
  objective = objectives.from_run_config(config, run_encoder_config(config), stored_encoder_config)
  models = {name: (param_rules.without_overwritten(p), dataclasses.replace(c, fp8=False))
            for name, (p, c) in objective.exported_models(params).items()}
  return models, config, step


def load_workdir_params(workdir: str, step: int | None = None):
  """(params as numpy, encoder config, run ConfigDict, step) of the first model a workdir's checkpoint holds
  (for ELECTRA the discriminator): what fine-tuning starts from."""
  models, config, step = load_workdir_models(workdir, step)
  params, model_config = next(iter(models.values()))
  return params, model_config, config, step


# Names of the models an HF export holds -> (the one whose config the joined checkpoint keeps, the function
# joining their params into one training tree).
_JOINED_MODELS = {
    ("discriminator", "generator"): ("discriminator", lambda models, log: electra.params_from_models(
        models["discriminator"][0], models["generator"][0], log)),
}


def join_models(models: dict, log=print):
  """(training params tree, encoder config) from {name: (params, config)} as hf_dir.read_hf_models gives them:
  one model as it is, ELECTRA's discriminator + generator as one tree with the discriminator's config."""
  if list(models) == [""]:
    return models[""]
  names = tuple(sorted(models))
  if names not in _JOINED_MODELS:
    raise ValueError(f"don't know how to join HF models {list(names)} into one checkpoint; known sets: "
                     f"{[list(k) for k in _JOINED_MODELS]} (or pass one model's directory)")
  main, join = _JOINED_MODELS[names]
  return join(models, log), models[main][1]


def write_params_checkpoint(directory: str, params, model_config) -> None:
  """A params-only checkpoint plus the family and HF config that say what it holds."""
  checkpoint_lib.save_params(directory, params)
  family = registry.family_of(model_config)
  epath.Path(directory, PARAMS_CONFIG_FILE).write_text(
      json.dumps({"family": family.name, "hf_config": family.hf_config(model_config)}, indent=2))


def _read_params(directory: str):
  """(params, family name or None, the saved model's vocab_size or None) of a workdir or a params checkpoint."""
  if epath.Path(directory, "checkpoints").is_dir():  # the whole tree: an ELECTRA run resumes both models
    params, config, _ = load_workdir_tree(directory, None)
    return params, config.model.family, run_encoder_config(config).vocab_size
  family, vocab_size = None, None
  config_file = epath.Path(directory, PARAMS_CONFIG_FILE)
  if config_file.exists():
    stored = json.loads(config_file.read_text())
    family, vocab_size = stored["family"], stored.get("hf_config", {}).get("vocab_size")
  return checkpoint_lib.load_params(directory), family, vocab_size


def restore_params(directory: str, like_params, shardings, model_config, keep=None, log=print):
  """Params from init_checkpoint (a workdir or a params checkpoint) in this run's layout and shardings.

  keep(path) -> bool selects the subtrees taken from the checkpoint (default: all of like_params); the
  others keep like_params' values (e.g. fresh heads), as do heads the checkpoint lacks (an HF *ForMaskedLM
  starting an MLM+SOP run: the SOP head is new, and `log` says so). Shapes must match.
  """
  directory = storage.absolute(directory)
  params, family, vocab_size = _read_params(directory)
  ours = type(model_config).family
  if family is not None and family != ours:
    raise ValueError(f"init_checkpoint {directory} is a {family!r} checkpoint but this run's model family is "
                     f"{ours!r}; start from a {ours} checkpoint or set model.family={family!r}")
  return fit_params(params, like_params, shardings, model_config, f"init_checkpoint {directory}", keep, log,
                    saved_vocab_size=vocab_size)


def fit_params(params, like_params, shardings, model_config, where: str, keep=None, log=print,
               saved_vocab_size: int | None = None):
  """Saved params (host arrays, any layout) put into a model's fresh params and shardings: layout converted,
  the pooler as the model uses it, heads the saved params lack (or keep() declines) left fresh, shapes checked.
  Saved FP8 statistics are dropped and the model's own (fresh, if it computes in FP8) are kept: a new start
  records its own amax history. `saved_vocab_size` (the saved model's, where known) tells a padded word table
  from another vocabulary's (hf_params.saved_layout)."""
  fresh_statistics = like_params
  params = param_rules.without_overwritten(params)
  like_params = param_rules.without_overwritten(like_params)
  params = hf_params.to_layout(params, model_config, where=where, saved_vocab_size=saved_vocab_size)
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
  merged = param_rules.with_overwritten_from(merged, fresh_statistics)
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


def check_export_installed() -> None:
  """Writing an HF directory needs safetensors (the weights) and transformers (the tokenizer files), which the core
  install leaves out: fails before any work, naming what is missing and the fix."""
  missing = []
  for name in ("safetensors.numpy", "transformers"):
    try:
      importlib.import_module(name)
    except ImportError:
      missing.append(name.split(".")[0])
  if missing:
    raise ModuleNotFoundError(
        f"an HF export writes its weights with safetensors and its tokenizer files with transformers; "
        f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed. Fix: pip install -e '.[torch]' "
        f"(both, and torch for the logits check), or pip install safetensors transformers")


def export_to_hf(workdir: str, output: str, *, step: int | None = None, dtype: str = "float32",
                 vocab_file: str | None = None, lower_case: bool = False, tolerance: float = 1e-4,
                 log=print) -> dict:
  """`convert to_hf`: the workdir's models (newest or given step) as the family's HF classes under output (ELECTRA:
  output/discriminator and output/generator), with tokenizer files from vocab_file or the run's vocabulary; then
  each directory read back by transformers (or, for a class transformers lacks, by our reader) and its logits
  checked within tolerance (5e-2 for bfloat16 weights). Returns {directory: max |logit difference|}, empty when
  torch (which only the check needs) is not installed."""
  check_export_installed()
  models, config, step = load_workdir_models(workdir, step)
  vocab_file, lower_case = (vocab_file, lower_case) if vocab_file else find_vocab(config, workdir)
  written = hf_dir.write_hf_dirs(models, output, dtype, vocab_file, lower_case)
  for directory, (_, _, architecture) in written.items():
    log(f"wrote {directory} ({architecture}) from {workdir} step {step}" + (
        "" if vocab_file else " (no vocabulary found: pass --vocab_file for tokenizer files)"))
  try:
    import torch  # noqa: F401  (optional: only the check needs it)
  except ImportError:
    log("torch not installed: skipped the logits check")
    return {}
  import transformers  # installed: check_export_installed
  tolerance = tolerance if dtype == "float32" else 5e-2
  diffs = {}
  for directory, (params, model_config, architecture) in written.items():
    if not hasattr(transformers, architecture):  # NEZHA: transformers >= 5 dropped it
      diffs[directory] = hf_dir.check_read_back(params, model_config, directory, tolerance=tolerance)
      log(f"transformers {transformers.__version__} has no {architecture} class (transformers >= 5 dropped "
          f"{type(model_config).family.upper()}; 4.x up to 4.40 loads this directory): checked by reading it back, "
          f"max |logit difference| = {diffs[directory]:.3g}")
      continue
    diffs[directory] = hf_dir.check_hf_dir(params, model_config, directory, tolerance=tolerance)
    log(f"checked: max |logit difference| vs transformers = {diffs[directory]:.3g}" + (
        f" ({directory})" if len(written) > 1 else ""))
  return diffs
