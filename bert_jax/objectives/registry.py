"""Pretraining objectives by name: `train.objective` in the run config picks one."""

from bert_jax.objectives import electra, masked_lm
from bert_jax.objectives import distill
from bert_jax.objectives import span_boundary

OBJECTIVES = {
    "mlm": lambda config, seq_len, predictions: masked_lm.MaskedLM(config, seq_len, predictions, None),
    "mlm_nsp": lambda config, seq_len, predictions: masked_lm.MaskedLM(config, seq_len, predictions, "nsp"),
    "mlm_sop": lambda config, seq_len, predictions: masked_lm.MaskedLM(config, seq_len, predictions, "sop"),
    "mlm_sbo": span_boundary.SpanBoundaryObjective,  # SpanBERT: MLM + span boundary objective
}
# Objectives with settings of their own: they also take the run config's section named after them (a dict).
OBJECTIVES_WITH_SETTINGS = {
    "electra": electra.Electra,
}

# Objectives with settings that also load a model of their own (a distillation teacher): they take
# load_config(path) -> the encoder config stored there, which the trainer supplies (objectives cannot import convert).
OBJECTIVES_WITH_SOURCES = {
    "distill": distill.from_settings,
}


def objective_settings(run_config, name: str) -> dict:
  """The run config's section named after the objective (e.g. `electra`), as a plain dict; {} if it has none."""
  section = run_config.get(name) if hasattr(run_config, "get") else None
  return dict(section.to_dict() if hasattr(section, "to_dict") else section or {})


def make_objective(name: str, config, seq_len: int, predictions: int, settings: dict | None = None,
                   load_config=None):
  if name in OBJECTIVES_WITH_SOURCES:
    return OBJECTIVES_WITH_SOURCES[name](config, seq_len, predictions, settings or {}, load_config)
  if name in OBJECTIVES_WITH_SETTINGS:
    return OBJECTIVES_WITH_SETTINGS[name](config, seq_len, predictions, settings or {})
  if name not in OBJECTIVES:
    raise ValueError(f"unknown objective {name!r}; choose one of {sorted({**OBJECTIVES, **OBJECTIVES_WITH_SETTINGS, **OBJECTIVES_WITH_SOURCES})}")
  if settings:
    raise ValueError(f"objective {name!r} takes no settings, got {sorted(settings)}")
  return OBJECTIVES[name](config, seq_len, predictions)


def from_run_config(run_config, model_config, load_config=None):
  """The objective a run config names (train.objective), on model_config, with its settings section
  (load_config: see OBJECTIVES_WITH_SOURCES)."""
  return make_objective(run_config.train.objective, model_config, run_config.data.max_seq_length,
                        run_config.data.max_predictions_per_seq, objective_settings(run_config, run_config.train.objective),
                        load_config)
