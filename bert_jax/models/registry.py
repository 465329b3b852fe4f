"""Model families by name, and the encoder config built from a run config's `model` section."""

import dataclasses
from typing import Mapping

from bert_jax.models import albert, bert, roberta
from bert_jax.models import distilbert
from bert_jax.models import electra
from bert_jax.models import nezha
from bert_jax.models import ernie
from bert_jax.models.config import EncoderConfig
from bert_jax.models.family import Family

FAMILIES: dict[str, Family] = {f.name: f for f in (bert.FAMILY, albert.FAMILY, roberta.FAMILY)}
FAMILIES[distilbert.FAMILY.name] = distilbert.FAMILY
FAMILIES[electra.FAMILY.name] = electra.FAMILY
FAMILIES[nezha.FAMILY.name] = nezha.FAMILY
FAMILIES[ernie.FAMILY.name] = ernie.FAMILY


def get_family(name: str) -> Family:
  if name not in FAMILIES:
    raise ValueError(f"unknown model family {name!r}; choose one of {sorted(FAMILIES)}")
  return FAMILIES[name]


def family_of(config: EncoderConfig) -> Family:
  return get_family(type(config).family)


# Run-config `model` keys that are not EncoderConfig fields.
_NOT_FIELDS = ("family", "size")


def encoder_config(model: Mapping, *, dropout_off: bool = False) -> EncoderConfig:
  """The frozen encoder config from a run config's `model` section (a plain mapping: the model never
  sees the ConfigDict). Fields left at None keep the family's default; dropout_off zeroes dropout."""
  fam = get_family(model["family"])
  field_names = {f.name for f in dataclasses.fields(fam.config_cls)}
  unknown = sorted(set(model) - field_names - set(_NOT_FIELDS))
  if unknown:
    raise ValueError(f"model keys {unknown} are not fields of {fam.config_cls.__name__}")
  # None (scan_layers) and "auto" (remat_policy) are the trainer's to choose per platform
  # (core/platform_defaults.py); left unchosen, the family's defaults apply.
  overrides = {k: v for k, v in model.items()
               if k in field_names and v is not None and not (k == "remat_policy" and v == "auto")}
  if not overrides.get("intermediate_size"):  # 0: the size's 4 x hidden
    overrides.pop("intermediate_size", None)
  if dropout_off:
    overrides.update(hidden_dropout=0.0, attention_dropout=0.0)
  return fam.config_cls.from_size(model["size"], **overrides)
