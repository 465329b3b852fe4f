"""Learning-curve peer: HF PyTorch trained from our initial weights on exactly our batches with our recipe.

  python bench/hf_curve.py --config=tiny --workdir=runs/tiny_curve [--config.train.steps=500 ...]
  python bench/hf_curve.py --config=electra_tiny --workdir=runs/electra_curve

First it draws our model's initial params (the config's seed), saves them as a params checkpoint and, through our
own exporter (`convert.hf_dir`), as HF directories. Then it runs our trainer (`pretrain.train_and_evaluate`, what
`python -m bert_jax.train` runs) into WORKDIR starting from that checkpoint (`checkpoint.init_checkpoint`), unless
WORKDIR holds a run this script finished with the same config. Then it trains the HF models loaded from those
directories in PyTorch, float32, on the same prepared data:
  objective mlm / mlm_nsp / mlm_sop   the family's HF class for its heads (BertForPreTraining, RobertaForMaskedLM,
                                      AlbertForPreTraining, ...), MLM at the masked positions + the sentence task
  objective electra                   ElectraForMaskedLM generator sharing ElectraForPreTraining's embeddings (its
                                      output layer tied to them), as objectives/electra.py: Gumbel samples at the
                                      masked positions, MLM + rtd_weight x RTD over real tokens
The same train iterator gives the same batches in the same order (and the same dynamic masks); the optimizer is the
config's AdamW (betas, epsilon, weight decay and its mask, clipping) with the learning rate read off our schedule at
every step; the dropouts and the held-out eval batches at the eval steps are the same. What differs: the dropout
masks, the generator's samples, and each framework's float arithmetic.

Prints one JSON line per eval of the peer, then both curves side by side. A curve that follows HF's says our model,
loss, optimizer and schedule train like the reference implementation's; a plateau both share is the model's and
the data's, not ours.
"""

import itertools
import json
import os
import sys
import time

import flax.linen as nn
import jax
import numpy as np
import torch
import transformers
from absl import flags
from scipy import stats

from bert_jax import inputs
from bert_jax.convert import hf_dir
from bert_jax.core import checkpoint as checkpoint_lib
from bert_jax.core import configlib, optim
from bert_jax.models import registry
from bert_jax.trainers import pretrain

OBJECTIVES = ("mlm", "mlm_nsp", "mlm_sop", "electra")
RUN_CONFIG = "hf_curve_config.json"  # the config our run in WORKDIR was trained with, written by this script
INIT_PARAMS = "hf_curve_init"        # our initial params (a params checkpoint), under WORKDIR
INIT_HF = "hf_curve_init_hf"         # the same params as HF directories, under WORKDIR


def check_config(config) -> None:
  if config.train.objective not in OBJECTIVES:
    raise SystemExit(f"hf_curve follows the objectives {OBJECTIVES}; this config has {config.train.objective!r}")
  if config.optim.name != "adamw" or config.train.microbatches != 1:
    raise SystemExit("hf_curve follows AdamW without gradient accumulation (optim.name=adamw, train.microbatches=1)")


def our_evals(config, workdir: str) -> dict:
  """{step: eval row} of our finished run in workdir, trained here with this config; {} when there is none."""
  path, saved = os.path.join(workdir, "metrics.jsonl"), os.path.join(workdir, RUN_CONFIG)
  if not os.path.exists(path):
    return {}
  if not os.path.exists(saved) or json.load(open(saved)) != json.loads(config.to_json()):
    raise SystemExit(f"{workdir} holds a run that this script did not train with this config; use a new --workdir")
  rows = {r["step"]: r for r in map(json.loads, open(path)) if r.get("split") == "eval"}
  return rows if config.train.steps in rows else {}


def write_start(config, workdir: str) -> str:
  """Our initial params as a params checkpoint (returned) and as HF directories under WORKDIR/INIT_HF."""
  _, objective = pretrain.build(config)
  params = jax.device_get(nn.meta.unbox(jax.jit(objective.init_params)(jax.random.key(config.train.seed))))
  path = os.path.join(os.path.abspath(workdir), INIT_PARAMS)
  checkpoint_lib.save_params(path, params)
  hf_dir.write_hf_dirs(objective.exported_models(params), os.path.join(workdir, INIT_HF),
                       log=lambda m: print(m, file=sys.stderr))
  return path


def hf_model(directory: str):
  with open(os.path.join(directory, "config.json")) as f:
    architecture = json.load(f)["architectures"][0]
  if not hasattr(transformers, architecture):
    raise SystemExit(f"transformers {transformers.__version__} has no {architecture}: no HF peer for this family")
  return architecture, getattr(transformers, architecture).from_pretrained(directory, dtype=torch.float32)


def torch_batch(batch):
  return {k: torch.from_numpy(np.asarray(v).astype(np.int64) if np.asarray(v).dtype.kind in "iu" else np.asarray(v))
          for k, v in batch.items()}


def at_masks(logits_BxTxV, b):
  """Logits at the masked positions [B, P, V] (HF's classes compute them at every position)."""
  positions = b["masked_lm_positions"]
  return torch.gather(logits_BxTxV, 1, positions[..., None].expand(-1, -1, logits_BxTxV.shape[-1]))


def masked_lm_sums(logits_BxPxV, b) -> dict:
  """Cross-entropy sums over the masked positions' logits."""
  ids, w, logits = b["masked_lm_ids"], b["masked_lm_weights"].float(), logits_BxPxV
  xent = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids.flatten(), reduction="none").view_as(w)
  return {"mlm_loss_sum": (xent * w).sum(), "mlm_correct": ((logits.argmax(-1) == ids) * w).sum(),
          "mlm_weight": w.sum()}


def auc(scores, labels) -> float:
  """P(score of a positive > score of a negative), ties half (Mann-Whitney, exact)."""
  ranks = stats.rankdata(scores)
  positives = labels > 0
  n_pos, n_neg = positives.sum(), (~positives).sum()
  return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / max(n_pos * n_neg, 1)) if n_pos else np.nan


class Peer:
  """HF models trained as our trainer trains ours: AdamW over `self.modules`' parameters, our schedule, clipping."""

  def __init__(self, config, hf_root: str):
    torch.manual_seed(config.train.seed)
    self.config = config
    self.model_config, self.objective = pretrain.build(config)
    self.family = registry.family_of(self.model_config)
    self.modules = self.load(hf_root)  # a torch.nn.ModuleDict: tensors shared between models are listed once
    o = config.optim
    decayed = lambda name: not (name.endswith("bias") or "LayerNorm" in name)  # our weight_decay_mask, HF names
    named = dict(self.modules.named_parameters())
    groups = [{"params": [p for n, p in named.items() if decayed(n) == d],
               "weight_decay": o.weight_decay if d else 0.0} for d in (True, False)]
    self.opt = torch.optim.AdamW(groups, lr=0.0, betas=(o.b1, o.b2), eps=o.eps)
    self.schedule = optim.learning_rate_schedule(o.peak_learning_rate, o.warmup_steps,
                                                 optim.schedule_steps(o, config.train.steps), o.decay, o.power,
                                                 o.end_learning_rate, o.decay_from)

  def train_step(self, step: int, batch) -> float:
    for group in self.opt.param_groups:
      group["lr"] = float(self.schedule(step))  # optax's schedule at the step being taken, as our train_step reads it
    self.modules.train(True)
    loss, _ = self.sums(torch_batch(batch))
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    if self.config.optim.clip_norm:
      torch.nn.utils.clip_grad_norm_(list(self.modules.parameters()), self.config.optim.clip_norm)
    self.opt.step()
    return float(loss.detach())

  def evaluate(self, batches) -> dict:
    self.modules.train(False)
    totals = {}
    with torch.no_grad():
      torch.manual_seed(0)  # the same generator samples at every eval, as our eval step's fixed key
      for batch in batches:
        for k, v in self.sums(torch_batch(batch))[1].items():
          totals.setdefault(k, []).append(v)
    return self.summaries({k: torch.stack(v) if v[0].dim() == 0 else torch.cat(v) for k, v in totals.items()})

  def trunk_inputs(self, b) -> dict:
    inputs = {"input_ids": b["input_ids"], "attention_mask": b["input_mask"]}
    if self.family.hf_token_type_ids and self.model_config.type_vocab_size:  # as hf_dir.check_hf_dir feeds them
      inputs["token_type_ids"] = b["segment_ids"]
    return inputs


class MaskedLmPeer(Peer):
  """The family's HF class for the objective's heads; loss as objectives/masked_lm.py."""

  def load(self, hf_root):
    architecture, self.model = hf_model(hf_root)
    self.outputs = self.family.hf_output_names(architecture)
    self.task = self.objective.sentence_task
    return torch.nn.ModuleDict({"model": self.model})

  def sums(self, b):
    out = self.model(**self.trunk_inputs(b))
    sums = masked_lm_sums(at_masks(getattr(out, self.outputs["mlm_logits"]), b), b)
    loss = sums["mlm_loss_sum"] / sums["mlm_weight"].clamp(min=1e-5)
    if self.task:
      logits = getattr(out, self.outputs[f"{self.task}_logits"])
      labels = b["next_sentence_labels"].flatten()
      xent = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
      sums.update(task_loss_sum=xent.sum(), task_correct=(logits.argmax(-1) == labels).sum(),
                  task_count=torch.tensor(float(labels.numel())))
      loss = loss + xent.mean()
    return loss, {k: v.detach() for k, v in sums.items()}

  def summaries(self, t) -> dict:
    out = {"mlm_loss": float(t["mlm_loss_sum"].sum() / t["mlm_weight"].sum()),
           "mlm_accuracy": float(t["mlm_correct"].sum() / t["mlm_weight"].sum())}
    if self.task:
      out[f"{self.task}_loss"] = float(t["task_loss_sum"].sum() / t["task_count"].sum())
      out[f"{self.task}_accuracy"] = float(t["task_correct"].sum() / t["task_count"].sum())
    return out


class ElectraPeer(Peer):
  """HF ElectraForMaskedLM generator sharing ElectraForPreTraining's embeddings (its output layer tied to them),
  Gumbel samples at the masked positions, loss = MLM + rtd_weight x RTD over real tokens: objectives/electra.py."""

  def load(self, hf_root):
    _, self.disc = hf_model(os.path.join(hf_root, "discriminator"))
    _, self.gen = hf_model(os.path.join(hf_root, "generator"))
    self.gen.electra.embeddings = self.disc.electra.embeddings
    self.gen.generator_lm_head.weight = self.disc.electra.embeddings.word_embeddings.weight
    return torch.nn.ModuleDict({"discriminator": self.disc, "generator": self.gen})

  def sums(self, b):
    positions, w = b["masked_lm_positions"], b["masked_lm_weights"].float()
    gen_logits = at_masks(self.gen(**self.trunk_inputs(b)).logits, b)
    out = masked_lm_sums(gen_logits, b)
    with torch.no_grad():
      sampled = torch.distributions.Categorical(logits=gen_logits).sample()
      real_slots = w > 0  # padded slots write nothing
      original, corrupted = b["input_ids"].clone(), b["input_ids"].clone()
      rows = torch.arange(positions.shape[0])[:, None].expand_as(positions)
      original[rows[real_slots], positions[real_slots]] = b["masked_lm_ids"][real_slots]
      corrupted[rows[real_slots], positions[real_slots]] = sampled[real_slots]
      real = b["input_mask"] > 0
      labels = ((corrupted != original) & real).float()
    rtd = self.disc(**{**self.trunk_inputs(b), "input_ids": corrupted}).logits
    xent = torch.nn.functional.binary_cross_entropy_with_logits(rtd, labels, reduction="none")
    mask = real.float()
    rtd_weight = self.objective.settings.rtd_weight
    loss = out["mlm_loss_sum"] / out["mlm_weight"].clamp(min=1e-5) + rtd_weight * (xent * mask).sum() / mask.sum()
    out.update(rtd_loss_sum=(xent * mask).sum(), rtd_correct=(((rtd > 0).float() == labels) * mask).sum(),
               replaced=(labels * mask).sum(), real=mask.sum(), rtd_logits=rtd[real], rtd_labels=labels[real])
    return loss, {k: v.detach() for k, v in out.items()}

  def summaries(self, t) -> dict:
    real = t["real"].sum()
    return {"mlm_loss": float(t["mlm_loss_sum"].sum() / t["mlm_weight"].sum()),
            "mlm_accuracy": float(t["mlm_correct"].sum() / t["mlm_weight"].sum()),
            "rtd_loss": float(t["rtd_loss_sum"].sum() / real), "rtd_accuracy": float(t["rtd_correct"].sum() / real),
            "replaced_fraction": float(t["replaced"].sum() / real),
            "rtd_auc": auc(t["rtd_logits"].numpy(), t["rtd_labels"].numpy())}


def emit(row: dict, output: str) -> None:
  line = json.dumps(row)
  print(line, flush=True)
  if output:
    with open(output, "a") as f:
      f.write(line + "\n")


def main(config, flag_values):
  check_config(config)
  if config.model.scan_layers is None:  # our exporter and the init checkpoint take either layout; pick one here
    config.model.scan_layers = False
  workdir = flag_values.workdir
  steps, every = config.train.steps, config.train.eval_every
  ours = our_evals(config, workdir)
  if not ours:
    print(f"training ours into {workdir} first, from the initial params the HF peer starts from", file=sys.stderr)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, RUN_CONFIG), "w") as f:
      f.write(config.to_json())
    ours_config = config.copy_and_resolve_references()
    ours_config.checkpoint.init_checkpoint = write_start(config, workdir)
    pretrain.train_and_evaluate(ours_config, workdir)
    ours = our_evals(config, workdir)
  train_files, eval_files, _, tok = inputs.resolve(config, workdir, log=lambda m: print(m, file=sys.stderr))
  hf_root = os.path.join(workdir, INIT_HF)
  peer = (ElectraPeer if config.train.objective == "electra" else MaskedLmPeer)(config, hf_root)
  train_iter = inputs.train_iterator(config, train_files, tok)
  eval_at = lambda: list(itertools.islice(inputs.eval_iterator(config, eval_files), config.train.eval_batches))
  curve = {0: peer.evaluate(eval_at())}
  t0 = time.perf_counter()
  for step in range(1, steps + 1):
    loss = peer.train_step(step - 1, next(train_iter))
    if step % every == 0 or step == steps:
      curve[step] = peer.evaluate(eval_at())
      emit({"bench": "hf_curve", "step": step, "train_loss": loss, **curve[step],
            "seconds": round(time.perf_counter() - t0, 1)}, flag_values.output)
  fields = [k for k in curve[0] if k.endswith(("_loss", "_accuracy", "_auc")) and k != "loss"]
  print("\n| step | " + " | ".join(f"{k} ours | HF" for k in fields) + " |\n|---:|" + "---:|---:|" * len(fields))
  for step, hf in sorted(curve.items()):
    mine = ours.get(step, {})
    print(f"| {step} | " + " | ".join(f"{mine.get(k, float('nan')):.4f} | {hf[k]:.4f}" for k in fields) + " |")
  if "replaced_fraction" in curve[0]:
    print("all-original accuracy (1 - replaced_fraction), ours / HF: " + ", ".join(
        f"{step}: {1 - ours.get(step, {}).get('replaced_fraction', float('nan')):.4f} / "
        f"{1 - hf['replaced_fraction']:.4f}" for step, hf in sorted(curve.items())))


def define_flags():
  flags.DEFINE_string("workdir", None, "our run's workdir (trained here first unless it holds a finished run)",
                      required=True)
  flags.DEFINE_string("output", "", "also append the peer's JSON lines here")


if __name__ == "__main__":
  configlib.run_cli(main, define_flags, "config name in configs/ (objective mlm, mlm_nsp, mlm_sop or electra; AdamW)")
