"""Subtrees an objective loads from elsewhere on a fresh start (objective.init_sources(), e.g. a distillation
teacher): where each one is (a training workdir, a params checkpoint or an HF directory), its encoder config,
its vocabulary checked against the run's data, and its weights placed in the run's layout and shardings.

Objectives cannot import convert (imports run one way), so the trainer does this for them.
"""

import json
import os

import jax
from etils import epath

from bert_jax.convert import hf_dir
from bert_jax.convert import workdir as workdir_lib
from bert_jax.core import checkpoint as checkpoint_lib
from bert_jax.core import configlib
from bert_jax.data import tokenizer as tokenizer_lib

WORKDIR, PARAMS, HF = "workdir", "params checkpoint", "HF directory"


def kind_of(path: str, what: str) -> str:
  """Which kind of model directory `path` is; a missing or unrecognised one fails naming `what` and the path."""
  if not path or not epath.Path(path).exists():
    raise FileNotFoundError(f"the {what} {path!r} does not exist; give a training workdir, a params checkpoint "
                            f"(`python -m bert_jax.convert from_hf`) or an HF directory")
  if epath.Path(path, "checkpoints").is_dir():
    return WORKDIR
  if epath.Path(path, workdir_lib.PARAMS_CONFIG_FILE).exists():
    return PARAMS
  if epath.Path(path, "config.json").exists():
    return HF
  raise ValueError(f"the {what} {path!r} is not a training workdir (no checkpoints/), a params checkpoint (no "
                   f"{workdir_lib.PARAMS_CONFIG_FILE}) or an HF directory (no config.json)")


def _saved_run_config(path: str):
  manager, step = checkpoint_lib.latest_step(os.path.join(path, "checkpoints"))
  if step is None:
    raise FileNotFoundError(f"{path}/checkpoints holds no checkpoint yet; train it first")
  return configlib.with_current_defaults(checkpoint_lib.load_saved_config(manager, step))


def encoder_config(path: str, what: str = "teacher"):
  """The encoder config of the model stored at `path` (no weights are read); a path that is no model directory, or
  holds a model bert_jax cannot read, fails naming `what` and the path."""
  kind = kind_of(path, what)
  try:
    return workdir_lib.stored_encoder_config(path)
  except (KeyError, ValueError) as e:
    raise ValueError(f"the {what} {path} ({kind}) does not hold a model bert_jax can read: {e}") from e


def vocabulary(path: str, what: str):
  """(description, tokenizer pieces in id order, lower_case) of the vocabulary stored with a model, or None."""
  kind = kind_of(path, what)
  if kind == WORKDIR:
    vocab_file, lower_case = workdir_lib.find_vocab(_saved_run_config(path), path)
    if vocab_file and os.path.exists(vocab_file):
      return vocab_file, tokenizer_lib.load(vocab_file, lower_case).pieces, lower_case
  elif kind == HF:
    lower_case = False
    config_file = os.path.join(path, "tokenizer_config.json")
    if os.path.exists(config_file):
      with open(config_file) as f:
        lower_case = bool(json.load(f).get("do_lower_case", False))
    if os.path.exists(os.path.join(path, "vocab.txt")):
      vocab_file = os.path.join(path, "vocab.txt")
      return vocab_file, tokenizer_lib.load(vocab_file, lower_case).pieces, lower_case
    if os.path.exists(os.path.join(path, "tokenizer.json")):
      import tokenizers
      vocab = tokenizers.Tokenizer.from_file(os.path.join(path, "tokenizer.json")).get_vocab()
      return os.path.join(path, "tokenizer.json"), sorted(vocab, key=vocab.get), lower_case
  return None


def adopt_vocabulary(config, sources: dict, log=print) -> None:
  """Data the run prepares itself (data.corpus, no vocab_file) is tokenized with the first source's vocabulary,
  so a student reads the ids its teacher knows. Written into the run config, so checkpoints and export see it."""
  d = config.data
  if d.vocab_file or d.train_files or not d.corpus:
    return
  for what, (path, _) in sources.items():
    found = vocabulary(path, what)
    if found and os.path.isfile(found[0]) and not found[0].endswith("tokenizer.json"):
      d.vocab_file, d.lower_case = found[0], found[2]
      log(f"data: tokenizing {d.corpus!r} with the {what}'s vocabulary {found[0]} (lower_case={found[2]})")
      return


def check_vocabulary(sources: dict, data_tokenizer, log=print) -> None:
  """Each source's vocabulary must be the data's, token for token; a difference fails naming both."""
  for what, (path, _) in sources.items():
    found = vocabulary(path, what)
    if found is None or data_tokenizer is None:
      log(f"WARNING: cannot check the {what}'s vocabulary against the data's "
          f"({'no vocabulary found with ' + path if found is None else 'the data names no vocabulary'})")
      continue
    where, pieces, lower_case = found
    ours = data_tokenizer.pieces
    if pieces != ours or lower_case != data_tokenizer.lower_case:
      first = next((i for i, (a, b) in enumerate(zip(pieces, ours)) if a != b), min(len(pieces), len(ours)))
      detail = (f"lower_case {lower_case} vs {data_tokenizer.lower_case}" if pieces == ours else
                f"{len(pieces)} vs {len(ours)} tokens, first difference at id {first}")
      raise ValueError(f"the {what} {path} uses the vocabulary {where} but the data uses "
                       f"{data_tokenizer.vocab_file} ({detail}); prepare the data with the {what}'s vocabulary "
                       f"(--config.data.vocab_file={where}) or use a {what} trained on this one")


def load_subtree(path: str, what: str, like, shardings, model_config, log=print):
  """The weights at `path` in the layout of `like` (the subtree's fresh params) and its shardings."""
  if kind_of(path, what) == HF:
    params, saved_config = hf_dir.read_hf_dir(path)
    return workdir_lib.fit_params(params, like, shardings, model_config, f"{what} {path}", log=log,
                                  saved_vocab_size=saved_config.vocab_size)
  return workdir_lib.restore_params(path, like, shardings, model_config, log=log)


def load_sources(objective, params, shardings, finish: bool, log=print):
  """Fresh params with every init source loaded, then (if `finish`) the objective's finish_init under jit."""
  params = dict(params)
  for what, (path, model_config) in objective.init_sources().items():
    params[what] = load_subtree(path, what, params[what], shardings[what], model_config, log)
    log(f"loaded the {what} from {path}")
  if finish:
    params = jax.jit(objective.finish_init, out_shardings=shardings)(params)
  return params
