"""Early stopping on an eval metric, with a state that survives a resume.

The state is the eval history up to the restored step, read back from metrics.jsonl (the one record every
eval already writes), so a resumed run decides exactly as the uninterrupted run did. Metrics whose name ends
in `loss` are minimised, all others (accuracy, f1, mcc, pearson, exact_match, ...) maximised.
"""

import json
import os


class EarlyStopping:
  def __init__(self, metric: str, patience: int):
    if patience < 1:
      raise ValueError(f"train.early_stop_patience={patience} must be >= 1")
    self.metric, self.patience = metric, patience
    self.lower_is_better = metric.endswith("loss")
    self.best_step, self.best_value, self.evals_since_best = None, None, 0

  def update(self, step: int, result: dict) -> bool:
    """Records one eval; True when it is the best so far."""
    if self.metric not in result:
      raise ValueError(f"train.early_stop_metric={self.metric!r} is not an eval field of this task; "
                       f"choose one of {sorted(k for k, v in result.items() if isinstance(v, (int, float)))}")
    value = float(result[self.metric])
    better = self.best_value is None or (value < self.best_value if self.lower_is_better else value > self.best_value)
    if better:
      self.best_step, self.best_value, self.evals_since_best = step, value, 0
    else:
      self.evals_since_best += 1
    return better

  @property
  def should_stop(self) -> bool:
    return self.evals_since_best >= self.patience

  def replay(self, history: list[dict]) -> None:
    """Re-applies earlier evals (eval_history) after a resume."""
    for record in history:
      self.update(int(record["step"]), record)


def eval_history(workdir: str, up_to_step: int) -> list[dict]:
  """The eval lines of WORKDIR/metrics.jsonl at steps <= up_to_step, in order."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  out = []
  with open(path) as f:
    for line in f:
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        continue  # a torn last line of a killed run
      if record.get("split") == "eval" and record.get("step", up_to_step + 1) <= up_to_step:
        out.append(record)
  return out
