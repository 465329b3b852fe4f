"""Fine-tuning: a pretrained encoder plus a classification, regression, tagging or QA head.

  python -m bert_jax.finetune --config=finetune --init_checkpoint=runs/tiny --workdir=runs/ft-demo
  python -m bert_jax.finetune --config=finetune --config.task.name=glue/mrpc --config.task.data_dir=~/tfds ...

Same machinery as pretraining: the ConfigDict configs, logical-axis shardings derived by eval_shape, one
jitted train step with donation, AdamW from optim.py, metrics.jsonl + TensorBoard. Writes WORKDIR/params
(Orbax), WORKDIR/result.json (the eval metrics) and, with train.export_hf, WORKDIR/hf (a transformers
model of the matching class, its logits checked against ours).
"""

import dataclasses
import functools
import json
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from bert_jax.convert import workdir as workdir_lib
from bert_jax.core import checkpoint as checkpoint_lib
from bert_jax.core import metrics, optim, sharding, workdir_lock
from bert_jax.core.train_state import TrainState, state_functions
from bert_jax.data import tokenizer as tokenizer_lib
from bert_jax.finetune import heads, task_export, task_metrics, tasks
from bert_jax.models import registry
from bert_jax.models.config import EncoderConfig


def task_spec(config) -> tasks.TaskSpec:
  t = config.task
  if t.name == "pydocs_family":
    return tasks.file_spec("pydocs_family", "classification", "text", "label", "", "accuracy_f1", t.train_file)
  if t.name == "files":
    if not t.train_file or not t.eval_file:
      raise ValueError("task.name=files needs task.train_file and task.eval_file (.jsonl or .tsv)")
    return tasks.file_spec(os.path.basename(t.train_file), t.kind, t.text_keys, t.label_key, t.label_names,
                           t.metric, t.train_file)
  if t.name not in tasks.TFDS_TASKS:
    raise ValueError(f"unknown task {t.name!r}: use pydocs_family, files, or one of {sorted(tasks.TFDS_TASKS)}")
  return tasks.TFDS_TASKS[t.name]


def load_examples(config, spec: tasks.TaskSpec, workdir: str):
  t = config.task
  if t.name in ("pydocs_family", "files"):
    return tasks.read_file(spec, t.train_file), tasks.read_file(spec, t.eval_file)
  data_dir = os.path.expanduser(t.data_dir) if t.data_dir else None
  return (tasks.read_tfds(spec, spec.train_split, data_dir), tasks.read_tfds(spec, spec.eval_split, data_dir))


def load_encoder(init_checkpoint: str):
  """(encoder params {encoder}, encoder config, vocab file, lower_case) of a pretraining run."""
  if not os.path.isdir(os.path.join(init_checkpoint, "checkpoints")):
    raise FileNotFoundError(f"init_checkpoint {init_checkpoint!r} is not a pretraining workdir "
                            f"(no checkpoints/ in it)")
  params, model_config, pretrain_config, step = workdir_lib.load_workdir_params(init_checkpoint)
  check_encoder(params, f"checkpoint {init_checkpoint} (step {step})")
  vocab_file, lower_case = workdir_lib.find_vocab(pretrain_config, init_checkpoint)
  return {k: params[k] for k in heads.ENCODER_PARAMS}, model_config, vocab_file, lower_case


def check_encoder(params, where: str) -> None:
  missing = [k for k in heads.ENCODER_PARAMS if k not in params]
  if missing:
    raise ValueError(f"{where} has no encoder: it lacks {missing} (has {sorted(params)}); fine-tuning needs "
                     f"a pretraining checkpoint")


def check_vocab(tok, model_config: EncoderConfig, vocab_file: str, checkpoint_vocab: str | None) -> None:
  if tok.vocab_size != model_config.vocab_size:
    raise ValueError(f"vocabulary {vocab_file} has {tok.vocab_size} entries but the checkpoint's model has "
                     f"vocab_size {model_config.vocab_size}; use the vocabulary the checkpoint was trained with"
                     + (f" ({checkpoint_vocab})" if checkpoint_vocab else ""))
  if checkpoint_vocab and os.path.exists(checkpoint_vocab) and os.path.abspath(checkpoint_vocab) != os.path.abspath(
      vocab_file) and tokenizer_lib.file_sha256(checkpoint_vocab) != tokenizer_lib.file_sha256(vocab_file):
    raise ValueError(f"vocabulary {vocab_file} is not the one the checkpoint was trained with "
                     f"({checkpoint_vocab}): same size, different pieces")


def task_loss(spec, out, batch):
  """(mean loss, predictions) for a batch."""
  if spec.kind == "classification":
    loss = optax.softmax_cross_entropy_with_integer_labels(out["logits"], batch["label"]).mean()
    return loss, jnp.argmax(out["logits"], -1)
  if spec.kind == "regression":
    pred = out["logits"][..., 0]
    return jnp.mean((pred - batch["label"]) ** 2), pred
  if spec.kind == "tagging":
    xent = optax.softmax_cross_entropy_with_integer_labels(out["logits"], batch["labels"])
    w = batch["label_weights"]
    return jnp.sum(xent * w) / jnp.maximum(jnp.sum(w), 1.0), jnp.argmax(out["logits"], -1)
  xent = lambda logits, pos: optax.softmax_cross_entropy_with_integer_labels(logits, pos).mean()
  loss = 0.5 * (xent(out["start_logits"], batch["start_positions"]) + xent(out["end_logits"], batch["end_positions"]))
  return loss, (out["start_logits"], out["end_logits"])


def _apply(model, params, batch, deterministic, rng=None):
  return model.apply({"params": params}, batch["input_ids"], batch["input_mask"], batch["segment_ids"],
                     deterministic=deterministic, rngs=None if rng is None else {"dropout": rng})


def train_step(state: TrainState, batch, *, model, tx, spec):
  """One optimizer step; returns (new state, {loss, learning-rate-free metrics})."""
  rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

  def loss_fn(params):
    return task_loss(spec, _apply(model, params, batch, False, rng), batch)[0]

  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                            opt_state=opt_state)
  return new_state, {"loss": loss, "grad_norm": optax.global_norm(grads)}


def predict_step(params, batch, *, model, spec):
  return task_loss(spec, _apply(model, params, batch, True), batch)


def make_optimizer(config, total_steps: int, freeze_encoder: bool):
  r = config.train
  warmup = max(1, int(r.warmup_fraction * total_steps))
  schedule = optim.learning_rate_schedule(r.learning_rate, warmup, max(total_steps, warmup + 1))
  tx = optax.adamw(schedule, b1=0.9, b2=0.999, eps=1e-6, weight_decay=r.weight_decay, mask=optim.weight_decay_mask)
  if r.clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(r.clip_norm), tx)
  if freeze_encoder:
    label = lambda params: {k: ("frozen" if k in heads.ENCODER_PARAMS else "head") for k in params}
    tx = optax.multi_transform({"head": tx, "frozen": optax.set_to_zero()}, label)
  return tx, schedule


def _batches(features, batch_size, rng=None):
  """Index arrays of full batches (train: shuffled, remainder dropped) or of all rows, the last padded."""
  n = len(next(iter(features.values())))
  order = rng.permutation(n) if rng is not None else np.arange(n)
  if rng is not None:
    return [order[i:i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]
  pad = (-n) % batch_size
  order = np.concatenate([order, np.zeros(pad, np.int64)])
  return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def _local(features, idx):
  """This process's share of a global batch (its contiguous block of rows)."""
  per = len(idx) // jax.process_count()
  mine = idx[jax.process_index() * per:(jax.process_index() + 1) * per]
  return {k: v[mine] for k, v in features.items() if k not in ("example_index", "token_word")}


def evaluate(predict_fn, params, spec, examples, features, batch_size, mesh) -> tuple[dict, list]:
  """(metrics, predictions as JSON-able values: a label/value per row, tags per labelled token, or
  {id: answer} for QA)."""
  from jax.experimental import multihost_utils
  n = len(features["input_ids"])
  chunks = []
  losses = []
  for idx in _batches(features, batch_size):
    loss, pred = predict_fn(params, sharding.global_batch(_local(features, idx), mesh))
    chunks.append(jax.tree_util.tree_map(lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True)), pred))
    losses.append(float(loss))
  preds = jax.tree_util.tree_map(lambda *xs: np.concatenate(xs)[:n], *chunks)
  out = {"eval_loss": float(np.mean(losses))}
  if spec.kind == "classification":
    y = features["label"]
    out.update(accuracy=task_metrics.accuracy(preds, y))
    if spec.metric == "mcc":
      out["mcc"] = task_metrics.matthews(preds, y)
    else:
      out["f1"] = task_metrics.f1(preds, y, spec.num_labels)
    return out, [int(p) for p in preds]
  if spec.kind == "regression":
    out.update(task_metrics.pearson_spearman(preds, features["label"]))
    return out, [float(p) for p in preds]
  if spec.kind == "tagging":
    keep = features["label_weights"] > 0
    out.update(task_metrics.tagging_scores(preds[keep], features["labels"][keep], spec.label_names))
    return out, [int(p) for p in preds[keep]]
  answers = tasks.qa_decode(examples, features, preds[0], preds[1])
  out.update(task_metrics.squad_scores(answers, {e["id"]: e["answers"] for e in examples}))
  return out, answers


def _model_config(config, pretrained: EncoderConfig | None, vocab_size: int, max_len: int) -> EncoderConfig:
  m = config.model
  common = dict(hidden_dropout=m.hidden_dropout, attention_dropout=m.attention_dropout, dtype=m.dtype,
                attention_impl=m.attention_impl)
  if pretrained is not None:
    if max_len > pretrained.max_sequence_length:
      raise ValueError(f"data.max_seq_length={max_len} exceeds the checkpoint's position table "
                       f"({pretrained.max_sequence_length} tokens)")
    return dataclasses.replace(pretrained, **common)
  family = registry.get_family(m.family)
  return family.config_cls.from_size(m.size, vocab_size=vocab_size,
                                     max_position_embeddings=max(512, max_len) + family.config_cls.position_offset,
                                     **common)


def finetune(config, workdir: str, init_checkpoint: str = "") -> dict:
  """Runs fine-tuning as configured; returns the final eval metrics (also in WORKDIR/result.json).

  Holds WORKDIR/.lock for the run, so a second run on the same workdir is refused before it writes anything."""
  with workdir_lock.hold(workdir, log=print if jax.process_index() == 0 else lambda _: None):
    return _finetune(config, workdir, init_checkpoint)


def _finetune(config, workdir: str, init_checkpoint: str) -> dict:
  init_checkpoint = init_checkpoint or config.init_checkpoint
  writer = metrics.MetricsWriter(workdir)
  log = writer.log
  if config.task.name == "pydocs_family" and not config.task.train_file:
    demo_dir = os.path.join(workdir, "task")
    if not os.path.exists(os.path.join(demo_dir, "task.json")):
      info = tasks.make_pydocs_family_task(demo_dir)
      log(f"demo task pydocs_family: {len(info['families'])} stdlib packages, {info['train']} train / "
          f"{info['eval']} eval paragraphs in {demo_dir}")
    with config.unlocked():
      config.task.train_file = os.path.join(demo_dir, "train.jsonl")
      config.task.eval_file = os.path.join(demo_dir, "eval.jsonl")
  spec = task_spec(config)

  pretrained_params, pretrained_config, vocab_file, lower_case = None, None, None, config.data.lower_case
  if init_checkpoint:
    pretrained_params, pretrained_config, vocab_file, lower_case = load_encoder(init_checkpoint)
  checkpoint_vocab = vocab_file
  vocab_file = config.data.vocab_file or vocab_file
  if not vocab_file:
    raise ValueError("no vocabulary: set data.vocab_file (from scratch), or give a checkpoint whose data "
                     "manifest names one")
  tok = tokenizer_lib.load(vocab_file, lower_case if not config.data.vocab_file else config.data.lower_case)
  model_config = _model_config(config, pretrained_config, tok.vocab_size, config.data.max_seq_length)
  check_vocab(tok, model_config, vocab_file, checkpoint_vocab)

  train_examples, eval_examples = load_examples(config, spec, workdir)
  d = config.data
  featurize = functools.partial(tasks.featurize, spec, tok=tok, max_seq_length=d.max_seq_length,
                                doc_stride=d.doc_stride, max_query_length=d.max_query_length)
  train_features, eval_features = featurize(train_examples), featurize(eval_examples)
  r = config.train
  steps_per_epoch = len(train_features["input_ids"]) // r.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"{len(train_features['input_ids'])} train rows make no batch of {r.batch_size}")
  total_steps = r.max_steps or r.epochs * steps_per_epoch
  log(f"task {spec.name} ({spec.kind}, {spec.num_labels} labels): {len(train_examples)} train / "
      f"{len(eval_examples)} eval examples -> {len(train_features['input_ids'])} / "
      f"{len(eval_features['input_ids'])} rows; {total_steps} steps; "
      f"{'from ' + init_checkpoint if init_checkpoint else 'from scratch'}"
      f"{'; encoder frozen' if r.freeze_encoder else ''}")

  mesh = sharding.create_mesh({a: config.mesh[a] for a in sharding.MESH_AXES})
  rules = sharding.rules_from_config(config.mesh.logical_axis_rules)
  model = heads.MODELS[spec.kind](model_config, num_labels=spec.num_labels)
  tx, schedule = make_optimizer(config, total_steps, r.freeze_encoder)
  with nn.logical_axis_rules(rules):
    state, state_shardings = _create_state(model, tx, mesh, rules, r.seed, d.max_seq_length, pretrained_params,
                                            f"checkpoint {init_checkpoint}")
    step_fn = jax.jit(functools.partial(train_step, model=model, tx=tx, spec=spec),
                      in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                      out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=0)
    predict_fn = jax.jit(functools.partial(predict_step, model=model, spec=spec),
                         in_shardings=(state_shardings.params, sharding.batch_sharding(mesh)))
    rng = np.random.default_rng(r.seed)
    step, t0 = 0, time.perf_counter()
    while step < total_steps:
      for idx in _batches(train_features, r.batch_size, rng):
        state, m = step_fn(state, sharding.global_batch(_local(train_features, idx), mesh))
        step += 1
        if step % r.log_every == 0 or step == total_steps:
          m = {k: float(v) for k, v in jax.device_get(m).items()}
          writer.write({"step": step, "split": "train", **m, "learning_rate": float(schedule(step - 1)),
                        "seq_per_sec": step * r.batch_size / (time.perf_counter() - t0)})
          log(f"step {step}/{total_steps}: loss {m['loss']:.4f}")
        if step >= total_steps:
          break
    result, predictions = evaluate(predict_fn, state.params, spec, eval_examples, eval_features,
                                   r.eval_batch_size, mesh)
  writer.write({"step": step, "split": "eval", **result})
  log("eval: " + ", ".join(f"{k} {v:.4f}" for k, v in result.items()))
  params = jax.tree_util.tree_map(np.asarray, jax.device_get(state.params))
  checkpoint_lib.save_params(os.path.join(os.path.abspath(workdir), "params"), params)
  if r.export_hf and jax.process_index() == 0:
    hf_dir = os.path.join(workdir, "hf")
    task_export.write_hf_dir(params, model_config, spec, hf_dir, vocab_file, tok.lower_case)
    fp32 = heads.MODELS[spec.kind](dataclasses.replace(model_config, dtype="float32"), num_labels=spec.num_labels)
    result["hf_max_logit_diff"] = task_export.check_hf_dir(fp32, params, spec, hf_dir)
    log(f"wrote {hf_dir} ({task_export.hf_class(model_config, spec.kind)}); logits match ours to "
        f"{result['hf_max_logit_diff']:.2g}")
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "eval_predictions.json"), "w") as f:
      json.dump(predictions, f)
    with open(os.path.join(workdir, "result.json"), "w") as f:
      json.dump({"task": spec.name, "kind": spec.kind, "init_checkpoint": init_checkpoint,
                 "freeze_encoder": r.freeze_encoder, "steps": step, **result}, f, indent=2)
  writer.close()
  return result


def _create_state(model, tx, mesh, rules, seed, seq_len, pretrained_params, where=""):
  """State under derived shardings; pretrained encoder params replace the fresh ones in their shards."""
  ids = jnp.zeros((1, seq_len), jnp.int32)
  init_params = lambda rng: model.init(rng, ids, ids, ids)["params"]
  init_state, _, shardings = state_functions(init_params, tx, mesh, rules, seed)
  rng = jax.random.key(seed)
  params = jax.jit(lambda r: nn.meta.unbox(init_params(r)), out_shardings=shardings.params)(rng)
  if pretrained_params is not None:
    # The encoder comes from the checkpoint (the pooler fresh if pretraining never made one); the head is new.
    params = workdir_lib.fit_params(pretrained_params, params, shardings.params, model.config, where,
                                    keep=lambda top: top in heads.ENCODER_PARAMS)
  state = jax.jit(init_state, out_shardings=shardings)(rng, params)
  return state, shardings
