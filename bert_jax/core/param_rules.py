"""Which parameters train, and which get weight decay, chosen by regex rules over parameter paths.

A path is the '/'-joined keys of a leaf, e.g. `encoder/layers/attention/query/kernel`. Rules are tried in
order, and whether a leaf trains is decided by the first matching rule (re.search) that says `train` or `freeze`,
its weight decay by the first that says `decay` or `no_decay`: a rule that only sets the decay (`layer_norm:no_decay`)
leaves a leaf that a later rule freezes frozen. A leaf no rule decides trains, with the default weight decay (none
on biases and LayerNorm). The optimizer (core/optim.py) turns the labels into an optax
`multi_transform`, so frozen leaves get no optimizer state and never change.

Written in a config as one string, rules separated by ';', each `REGEX:ACTION[,ACTION]` with the actions
`train`, `freeze`, `decay`, `no_decay`, for example `^encoder/:freeze` (feature extraction) or
`lora_:train;.*:freeze` (train only LoRA weights).

Leaves under a scope named OVERWRITE_SCOPE are not trained at all: they hold statistics (FP8 scales and amax
histories, layers/fp8.py) whose gradient is their next value, which the train step writes over them
(overwrite_mask). They get no weight decay and are left out of the parameter counts.
"""

import dataclasses
import re

import jax
import numpy as np

TRAIN, FROZEN = "train", "frozen"
OVERWRITE_SCOPE = "fp8_meta"
_ACTIONS = ("train", "freeze", "decay", "no_decay")


@dataclasses.dataclass(frozen=True)
class ParamRule:
  pattern: str                       # regex, searched in the '/'-joined path
  trainable: bool | None = True     # None: the rule does not say (a later rule, else train)
  weight_decay: bool | None = None   # None: the rule does not say (a later rule, else the default)


def path_of(key_path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in key_path)


def parse_rules(spec: str) -> tuple[ParamRule, ...]:
  """'REGEX:ACTION[,ACTION];...' -> rules; a bad regex or action fails naming it."""
  rules = []
  for part in (p.strip() for p in spec.split(";")):
    if not part:
      continue
    pattern, sep, actions = part.rpartition(":")
    if not sep or not pattern:
      raise ValueError(f"parameter rule {part!r} is not REGEX:ACTION (actions: {', '.join(_ACTIONS)})")
    try:
      re.compile(pattern)
    except re.error as e:
      raise ValueError(f"parameter rule {part!r}: bad regex {pattern!r} ({e})") from e
    trainable, decay = None, None
    for action in (a.strip() for a in actions.split(",")):
      if action not in _ACTIONS:
        raise ValueError(f"parameter rule {part!r}: unknown action {action!r}; choose from {', '.join(_ACTIONS)}")
      if action in ("train", "freeze"):
        trainable = action == "train"
      else:
        decay = action == "decay"
    rules.append(ParamRule(pattern, trainable, decay))
  return tuple(rules)


def _first_say(path: str, rules, field: str):
  """The `field` of the first rule matching path that sets it (not None), else None."""
  return next((getattr(r, field) for r in rules if getattr(r, field) is not None and re.search(r.pattern, path)),
              None)


def is_overwritten(path: str) -> bool:
  return OVERWRITE_SCOPE in path.split("/")


def default_decays(path: str) -> bool:
  """Weight decay on weights; none on biases, LayerNorm parameters and overwritten statistics."""
  if is_overwritten(path):
    return False
  names = path.split("/")
  return not (names[-1] == "bias" or names[-1].endswith("_bias") or any("layer_norm" in n for n in names))


def overwrite_mask(params) -> dict:
  """A tree like params of bools: True where the step replaces the value by its gradient."""
  return jax.tree_util.tree_map_with_path(lambda key_path, _: is_overwritten(path_of(key_path)), params)


def without_overwritten(params):
  """params less every OVERWRITE_SCOPE subtree (what HF export and a model without them take)."""
  if not isinstance(params, dict):
    return params
  return {k: without_overwritten(v) for k, v in params.items() if k != OVERWRITE_SCOPE}


def with_overwritten_from(params, like):
  """params with like's OVERWRITE_SCOPE subtrees added where like has them (params has none)."""
  if not isinstance(like, dict) or not isinstance(params, dict):
    return params
  out = {k: with_overwritten_from(v, like.get(k)) for k, v in params.items()}
  if OVERWRITE_SCOPE in like:
    out[OVERWRITE_SCOPE] = like[OVERWRITE_SCOPE]
  return out


def check_rules(params, rules) -> None:
  """Every rule must match some parameter: a rule that matches none is a typo that would silently train all."""
  paths = [path_of(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
  for rule in rules:
    if not any(re.search(rule.pattern, p) for p in paths):
      sample = ", ".join(paths[:6])
      raise ValueError(f"parameter rule {rule.pattern!r} matches no parameter; paths look like: {sample}, ...")


def labels(params, rules) -> dict:
  """A tree like params of TRAIN / FROZEN."""
  def label(key_path, _):
    return FROZEN if _first_say(path_of(key_path), rules, "trainable") is False else TRAIN
  return jax.tree_util.tree_map_with_path(label, params)


def decay_mask(params, rules) -> dict:
  """A tree like params of bools: True where weight decay applies."""
  def decays(key_path, _):
    path = path_of(key_path)
    said = _first_say(path, rules, "weight_decay")
    # statistics the step overwrites are never decayed, whatever a rule says: `.*:decay` means every weight
    return default_decays(path) if said is None or is_overwritten(path) else said
  return jax.tree_util.tree_map_with_path(decays, params)


def count(params, rules) -> tuple[int, int]:
  """(trainable, total) parameter counts, statistics under OVERWRITE_SCOPE not counted."""
  params = without_overwritten(params)
  sizes = jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda x: int(np.prod(x.shape)), params))
  kinds = jax.tree_util.tree_leaves(labels(params, rules))
  return sum(s for s, k in zip(sizes, kinds) if k == TRAIN), sum(sizes)
