"""Learning-curve peer: HF PyTorch trained on exactly our batches with our recipe, beside our own run.

  python bench/hf_curve.py --config=tiny --workdir=runs/tiny_curve [--config.train.steps=500 ...]
  python bench/hf_curve.py --config=electra_tiny --workdir=runs/electra_curve

Runs our trainer (`pretrain.train_and_evaluate`, what `python -m bert_jax.train` runs) into WORKDIR unless WORKDIR
holds a run this script finished with the same config, then trains the HF models in PyTorch, float32, on the same
prepared data:
  bert, mlm_nsp / mlm   BertForPreTraining / BertForMaskedLM
  electra, electra      ElectraForMaskedLM generator sharing ElectraForPreTraining's embeddings, as
                        objectives/electra.py (Gumbel samples at the masked positions, MLM + rtd_weight x RTD)
The same train iterator gives the same batches in the same order (and the same dynamic masks); the optimizer is the
config's AdamW (betas, epsilon, weight decay and its mask, clipping) with the learning rate read off our schedule at
every step; the dropouts and the held-out eval batches at the eval steps are the same. What differs: the initial
weights (each framework draws its own), the dropout masks and the generator's samples.

Prints one JSON line per eval of the peer, then both curves side by side. A curve that follows HF's says our model,
loss, optimizer and schedule train like the reference implementation's; a plateau both share is the model's and
the data's, not ours.
"""

import json
import os
import sys
import time

from absl import flags

from bert_jax.core import configlib

HEADS = {"mlm_nsp": ("encoder", "pooler", "mlm", "nsp"), "mlm": ("encoder", "mlm")}


def check_config(config) -> None:
  family, objective = config.model.family, config.train.objective
  if not ((family == "bert" and objective in HEADS) or (family == "electra" and objective == "electra")):
    raise SystemExit(f"hf_curve follows BERT (objective mlm_nsp or mlm) and ELECTRA (objective electra); this "
                     f"config has family {family!r}, objective {objective!r}")
  if config.optim.name != "adamw" or config.train.microbatches != 1:
    raise SystemExit("hf_curve follows AdamW without gradient accumulation (optim.name=adamw, train.microbatches=1)")


RUN_CONFIG = "hf_curve_config.json"  # the config our run in WORKDIR was trained with, written by this script


def our_evals(config, workdir: str) -> dict:
  """{step: eval row} of our finished run in workdir, trained here with this config; {} when there is none."""
  path, saved = os.path.join(workdir, "metrics.jsonl"), os.path.join(workdir, RUN_CONFIG)
  if not os.path.exists(path):
    return {}
  if not os.path.exists(saved) or json.load(open(saved)) != json.loads(config.to_json()):
    raise SystemExit(f"{workdir} holds a run that this script did not train with this config; use a new --workdir")
  rows = {r["step"]: r for r in map(json.loads, open(path)) if r.get("split") == "eval"}
  return rows if config.train.steps in rows else {}


def torch_batch(batch):
  import numpy as np
  import torch
  return {k: torch.from_numpy(np.asarray(v).astype(np.int64) if np.asarray(v).dtype.kind in "iu" else np.asarray(v))
          for k, v in batch.items()}


def cross_entropy_sums(logits_BxPxV, ids_BxP, weights_BxP) -> dict:
  import torch
  xent = torch.nn.functional.cross_entropy(logits_BxPxV.flatten(0, 1), ids_BxP.flatten(), reduction="none")
  return {"mlm_loss_sum": (xent.view_as(weights_BxP) * weights_BxP).sum(),
          "mlm_correct": ((logits_BxPxV.argmax(-1) == ids_BxP) * weights_BxP).sum(), "mlm_weight": weights_BxP.sum()}


def gathered(h_BxTxH, positions_BxP):
  """h at the masked positions [B, P, H], as our heads take it (HF's own forward would run the head everywhere)."""
  import torch
  return torch.gather(h_BxTxH, 1, positions_BxP[..., None].expand(-1, -1, h_BxTxH.shape[-1]))


def auc(scores, labels) -> float:
  """P(score of a positive > score of a negative), ties half (Mann-Whitney, exact)."""
  import numpy as np
  from scipy import stats
  ranks = stats.rankdata(scores)
  positives = labels > 0
  n_pos, n_neg = positives.sum(), (~positives).sum()
  return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / max(n_pos * n_neg, 1)) if n_pos else np.nan


class Peer:
  """An HF model trained as our trainer trains ours: AdamW over `self.parameters()`, our schedule, clipping."""

  def __init__(self, config):
    import torch
    from bert_jax.core import optim
    torch.manual_seed(config.train.seed)
    self.config = config
    self.build()
    o = config.optim
    decayed = lambda name: not (name.endswith("bias") or "LayerNorm" in name)  # our weight_decay_mask, HF names
    named = dict(self.named_parameters())
    groups = [{"params": [p for n, p in named.items() if decayed(n) == d],
               "weight_decay": o.weight_decay if d else 0.0} for d in (True, False)]
    self.opt = torch.optim.AdamW(groups, lr=0.0, betas=(o.b1, o.b2), eps=o.eps)
    self.schedule = optim.learning_rate_schedule(o.peak_learning_rate, o.warmup_steps, config.train.steps,
                                                 o.decay, o.power, o.end_learning_rate)

  def train_step(self, step: int, batch) -> float:
    import torch
    for group in self.opt.param_groups:
      group["lr"] = float(self.schedule(step))  # optax's schedule at the step being taken, as our train_step reads it
    self.train(True)
    loss, _ = self.sums(torch_batch(batch))
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    if self.config.optim.clip_norm:
      torch.nn.utils.clip_grad_norm_([p for group in self.opt.param_groups for p in group["params"]],
                                     self.config.optim.clip_norm)
    self.opt.step()
    return float(loss.detach())

  def evaluate(self, batches) -> dict:
    import torch
    self.train(False)
    totals = {}
    with torch.no_grad():
      torch.manual_seed(0)  # the same generator samples at every eval, as our eval step's fixed key
      for batch in batches:
        for k, v in self.sums(torch_batch(batch))[1].items():
          totals.setdefault(k, []).append(v)
    return self.summaries({k: torch.stack(v) if v[0].dim() == 0 else torch.cat(v) for k, v in totals.items()})


class BertPeer(Peer):
  """HF BertForPreTraining (mlm_nsp) or BertForMaskedLM (mlm), the loss our masked_lm objective computes."""

  def build(self):
    import transformers
    from bert_jax.convert import hf_dir
    from bert_jax.trainers import pretrain
    self.nsp = self.config.train.objective == "mlm_nsp"
    model_config, _ = pretrain.build(self.config)
    hf_config = transformers.BertConfig(**hf_dir.hf_config_dict(model_config, HEADS[self.config.train.objective]),
                                        attn_implementation="eager")
    self.model = (transformers.BertForPreTraining if self.nsp else transformers.BertForMaskedLM)(hf_config)
    self.named_parameters, self.train = self.model.named_parameters, self.model.train

  def sums(self, b):
    import torch
    trunk = self.model.bert(input_ids=b["input_ids"], attention_mask=b["input_mask"], token_type_ids=b["segment_ids"])
    h = gathered(trunk.last_hidden_state, b["masked_lm_positions"])
    logits = self.model.cls.predictions(h) if self.nsp else self.model.cls(h)
    w = b["masked_lm_weights"].float()
    out = cross_entropy_sums(logits, b["masked_lm_ids"], w)
    loss = out["mlm_loss_sum"] / out["mlm_weight"].clamp(min=1e-5)
    if self.nsp:
      nsp_logits = self.model.cls.seq_relationship(trunk.pooler_output)
      labels = b["next_sentence_labels"].flatten()
      nsp_xent = torch.nn.functional.cross_entropy(nsp_logits, labels, reduction="none")
      out.update(nsp_loss_sum=nsp_xent.sum(), nsp_correct=(nsp_logits.argmax(-1) == labels).sum(),
                 nsp_count=torch.tensor(float(labels.numel())))
      loss = loss + nsp_xent.mean()
    return loss, {k: v.detach() for k, v in out.items()}

  def summaries(self, t) -> dict:
    out = {"mlm_loss": float(t["mlm_loss_sum"].sum() / t["mlm_weight"].sum()),
           "mlm_accuracy": float(t["mlm_correct"].sum() / t["mlm_weight"].sum())}
    if self.nsp:
      out.update(nsp_loss=float(t["nsp_loss_sum"].sum() / t["nsp_count"].sum()),
                 nsp_accuracy=float(t["nsp_correct"].sum() / t["nsp_count"].sum()))
    return out


class ElectraPeer(Peer):
  """HF ElectraForMaskedLM generator sharing ElectraForPreTraining's embeddings (its output layer tied to them),
  Gumbel samples at the masked positions, loss = MLM + rtd_weight x RTD over real tokens: objectives/electra.py."""

  def build(self):
    import torch
    import transformers
    from bert_jax.convert import hf_dir
    from bert_jax.trainers import pretrain
    model_config, objective = pretrain.build(self.config)
    self.rtd_weight = objective.settings.rtd_weight
    hf = lambda c, sections: transformers.ElectraConfig(**hf_dir.hf_config_dict(c, sections),
                                                        attn_implementation="eager")
    self.disc = transformers.ElectraForPreTraining(hf(model_config, ("encoder", "rtd")))
    self.gen = transformers.ElectraForMaskedLM(hf(objective.generator_config, ("encoder", "mlm")))
    self.gen.electra.embeddings = self.disc.electra.embeddings
    self.gen.generator_lm_head.weight = self.disc.electra.embeddings.word_embeddings.weight
    self.both = torch.nn.ModuleDict({"discriminator": self.disc, "generator": self.gen})
    self.named_parameters, self.train = self.both.named_parameters, self.both.train  # shared tensors listed once

  def sums(self, b):
    import torch
    positions, w = b["masked_lm_positions"], b["masked_lm_weights"].float()
    h = self.gen.electra(input_ids=b["input_ids"], attention_mask=b["input_mask"], token_type_ids=b["segment_ids"])[0]
    logits = self.gen.generator_lm_head(self.gen.generator_predictions(gathered(h, positions)))
    out = cross_entropy_sums(logits, b["masked_lm_ids"], w)
    with torch.no_grad():
      sampled = torch.distributions.Categorical(logits=logits).sample()
      real_slots = w > 0  # padded slots write nothing
      original, corrupted = b["input_ids"].clone(), b["input_ids"].clone()
      rows = torch.arange(positions.shape[0])[:, None].expand_as(positions)
      original[rows[real_slots], positions[real_slots]] = b["masked_lm_ids"][real_slots]
      corrupted[rows[real_slots], positions[real_slots]] = sampled[real_slots]
      real = b["input_mask"] > 0
      labels = ((corrupted != original) & real).float()
    rtd = self.disc(input_ids=corrupted, attention_mask=b["input_mask"], token_type_ids=b["segment_ids"]).logits
    xent = torch.nn.functional.binary_cross_entropy_with_logits(rtd, labels, reduction="none")
    mask = real.float()
    loss = out["mlm_loss_sum"] / out["mlm_weight"].clamp(min=1e-5) + self.rtd_weight * (xent * mask).sum() / mask.sum()
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
  import itertools
  from bert_jax import inputs
  from bert_jax.trainers import pretrain
  check_config(config)
  workdir = flag_values.workdir
  steps, every = config.train.steps, config.train.eval_every
  ours = our_evals(config, workdir)
  if not ours:
    print(f"training ours into {workdir} first", file=sys.stderr)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, RUN_CONFIG), "w") as f:
      f.write(config.to_json())
    pretrain.train_and_evaluate(config, workdir)
    ours = our_evals(config, workdir)
  train_files, eval_files, _, tok = inputs.resolve(config, workdir, log=lambda m: print(m, file=sys.stderr))
  peer = (ElectraPeer if config.model.family == "electra" else BertPeer)(config)
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
  fields = [k for k in curve[0] if k in ("mlm_loss", "mlm_accuracy", "rtd_accuracy", "rtd_auc")]
  print("\n| step | " + " | ".join(f"{k} ours | HF" for k in fields) + " |\n|---:|" + "---:|---:|" * len(fields))
  for step, hf in sorted(curve.items()):
    mine = ours.get(step, {})
    print(f"| {step} | " + " | ".join(f"{mine.get(k, float('nan')):.4f} | {hf[k]:.4f}" for k in fields) + " |")
  if "replaced_fraction" in curve[0]:
    print("all-original accuracy (1 - replaced_fraction), HF: " +
          ", ".join(f"{step}: {1 - hf['replaced_fraction']:.4f}" for step, hf in sorted(curve.items())))


def define_flags():
  flags.DEFINE_string("workdir", None, "our run's workdir (trained here first unless it holds a finished run)",
                      required=True)
  flags.DEFINE_string("output", "", "also append the peer's JSON lines here")


if __name__ == "__main__":
  configlib.run_cli(main, define_flags, "config name in configs/ (family bert, objective mlm_nsp or mlm, AdamW)")
