"""Pretraining objectives by name: `train.objective` in the run config picks one."""

from bert_jax.objectives import masked_lm

OBJECTIVES = {
    "mlm": lambda config, seq_len, predictions: masked_lm.MaskedLM(config, seq_len, predictions, None),
    "mlm_nsp": lambda config, seq_len, predictions: masked_lm.MaskedLM(config, seq_len, predictions, "nsp"),
    "mlm_sop": lambda config, seq_len, predictions: masked_lm.MaskedLM(config, seq_len, predictions, "sop"),
}


def make_objective(name: str, config, seq_len: int, predictions: int):
  if name not in OBJECTIVES:
    raise ValueError(f"unknown objective {name!r}; choose one of {sorted(OBJECTIVES)}")
  return OBJECTIVES[name](config, seq_len, predictions)
