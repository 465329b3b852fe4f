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
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath

from bert_jax.convert import workdir as workdir_lib
from bert_jax.core import checkpoint as checkpoint_lib
from bert_jax.core import distributed, metrics, optim, param_rules, preemption, sharding, workdir_lock
from bert_jax.core.train_state import TrainState, state_functions
from bert_jax.data import tokenizer as tokenizer_lib
from bert_jax.finetune import early_stopping, heads, peft_export, peft_methods, task_export, task_metrics, tasks
from bert_jax.finetune import predict as predict_lib
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
                           t.metric, t.train_file, t.choice_keys)
  if t.name not in tasks.TFDS_TASKS:
    raise ValueError(f"unknown task {t.name!r}: use pydocs_family, files, or one of {sorted(tasks.TFDS_TASKS)}")
  return tasks.TFDS_TASKS[t.name]


def load_examples(config, spec: tasks.TaskSpec, workdir: str):
  t = config.task
  if t.name in ("pydocs_family", "files"):
    sources = [(t.train_file, tasks.read_file(spec, t.train_file)), (t.eval_file, tasks.read_file(spec, t.eval_file))]
  else:
    data_dir = os.path.expanduser(t.data_dir) if t.data_dir else None
    sources = [(f"{spec.name}[{split}]", tasks.read_tfds(spec, split, data_dir))
               for split in (spec.train_split, spec.eval_split)]
  for where, examples in sources:
    if not examples:  # an empty eval set would otherwise fail only after training, inside the eval
      raise ValueError(f"{where} holds no examples; give a task file with at least one")
  return sources[0][1], sources[1][1]


def load_encoder(init_checkpoint: str):
  """(encoder params {encoder}, encoder config, vocab file, lower_case) of a pretraining run."""
  if not epath.Path(init_checkpoint, "checkpoints").is_dir():
    raise FileNotFoundError(f"init_checkpoint {init_checkpoint!r} is not a pretraining workdir: "
                            f"{workdir_lib.no_checkpoint_reason(init_checkpoint)}")
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


def task_losses(spec, out, batch):
  """(loss_B, weight_B, predictions): each row's summed loss and how many labels it holds (1 a row; a tagging
  row's labelled words), so a loss over any set of rows is sum(loss) / sum(weight)."""
  if spec.kind == "classification":
    loss = optax.softmax_cross_entropy_with_integer_labels(out["logits"], batch["label"])
    return loss, jnp.ones_like(loss), jnp.argmax(out["logits"], -1)
  if spec.kind == "multiple_choice":  # a slot past an example's own choices can never win
    logits = jnp.where(batch["choice_mask"] > 0, out["logits"], -1e9)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    return loss, jnp.ones_like(loss), jnp.argmax(logits, -1)
  if spec.kind == "regression":
    pred = out["logits"][..., 0]
    loss = (pred - batch["label"]) ** 2
    return loss, jnp.ones_like(loss), pred
  if spec.kind == "tagging":
    xent = optax.softmax_cross_entropy_with_integer_labels(out["logits"], batch["labels"])
    w = batch["label_weights"]
    return jnp.sum(xent * w, -1), jnp.sum(w, -1), jnp.argmax(out["logits"], -1)
  xent = optax.softmax_cross_entropy_with_integer_labels
  loss = 0.5 * (xent(out["start_logits"], batch["start_positions"]) + xent(out["end_logits"], batch["end_positions"]))
  return loss, jnp.ones_like(loss), (out["start_logits"], out["end_logits"])


def mean_loss(loss_B, weight_B):
  return jnp.sum(loss_B) / jnp.maximum(jnp.sum(weight_B), 1.0)


def _apply(model, params, batch, deterministic, rng=None):
  return model.apply({"params": params}, batch["input_ids"], batch["input_mask"], batch["segment_ids"],
                     deterministic=deterministic, rngs=None if rng is None else {"dropout": rng})


def train_step(state: TrainState, batch, *, model, tx, spec, trainable_rules=()):
  """One optimizer step; returns (new state, {loss, learning-rate-free metrics}). grad_norm covers the trainable
  params only, so XLA never computes the weight gradients of frozen ones."""
  rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

  def loss_fn(params):
    return mean_loss(*task_losses(spec, _apply(model, params, batch, False, rng), batch)[:2])

  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                            opt_state=opt_state)
  labels = jax.tree_util.tree_leaves(param_rules.labels(grads, trainable_rules))
  trained = [g for g, label in zip(jax.tree_util.tree_leaves(grads), labels) if label == param_rules.TRAIN]
  return new_state, {"loss": loss, "grad_norm": optax.global_norm(trained)}


def predict_step(params, batch, *, model, spec):
  """(loss_B, weight_B, predictions) of an eval batch: evaluate drops its padding rows before averaging."""
  return task_losses(spec, _apply(model, params, batch, True), batch)


def method_of(config) -> str:
  """train.method, with train.freeze_encoder=True as the shorthand for `frozen`."""
  r = config.train
  if r.freeze_encoder:
    if r.method not in ("full", "frozen"):
      raise ValueError(f"train.freeze_encoder=True is the shorthand for train.method=frozen, but train.method="
                       f"{r.method!r}; set only one of them")
    return "frozen"
  return r.method


def method_setup(config, method: str) -> tuple[tuple, dict]:
  """(default parameter rules, EncoderConfig overrides) of a fine-tuning method (finetune/peft_methods.py):
  the one place where train.method turns into what the optimizer and the model see."""
  settings = config.peft.to_dict() if "peft" in config else None
  return peft_methods.default_rules(method), peft_methods.model_overrides(method, settings)


def param_rules_for(config, method_rules) -> tuple:
  """The user's train.param_rules first, then the method's: the first rule matching a path decides."""
  return param_rules.parse_rules(config.train.param_rules) + tuple(method_rules)


def make_optimizer(config, total_steps: int, rules=()):
  """AdamW with warmup and linear decay from the `train` section, through core.optim (frozen params: no state)."""
  r = config.train
  warmup = max(1, int(r.warmup_fraction * total_steps))
  settings = types.SimpleNamespace(
      name="adamw", peak_learning_rate=r.learning_rate, warmup_steps=warmup, decay="linear", power=1.0,
      decay_from="warmup_end", end_learning_rate=0.0, b1=0.9, b2=0.999, eps=1e-6, weight_decay=r.weight_decay,
      state_dtype="", clip_norm=r.clip_norm)
  return optim.make_optimizer(settings, max(total_steps, warmup + 1), rules)


def check_batch_sizes(train_config, mesh) -> None:
  """Train and eval batches split evenly over the batch devices and processes (_local), or fail naming the field."""
  for field in ("batch_size", "eval_batch_size"):
    sharding.check_batch_size(f"train.{field}", train_config[field], mesh)


def _eval_batches(features, batch_size):
  """Index arrays covering all rows in order, the last batch padded with row 0."""
  n = len(next(iter(features.values())))
  order = np.concatenate([np.arange(n), np.zeros((-n) % batch_size, np.int64)])
  return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def _local(features, idx):
  """This process's share of a global batch (its contiguous block of rows)."""
  per = len(idx) // jax.process_count()
  mine = idx[jax.process_index() * per:(jax.process_index() + 1) * per]
  return {k: v[mine] for k, v in features.items() if k not in tasks.DECODE_KEYS}


def evaluate(predict_fn, params, spec, examples, features, batch_size, mesh) -> tuple[dict, list]:
  """(metrics, predictions as JSON-able values: a label/value per row, tags per labelled token, or
  {id: answer} for QA)."""
  from jax.experimental import multihost_utils
  n = len(features["input_ids"])
  chunks = []
  for idx in _eval_batches(features, batch_size):
    outputs = predict_fn(params, sharding.global_batch(_local(features, idx), mesh))
    chunks.append(jax.tree_util.tree_map(lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True)),
                                         outputs))
  loss, weight, preds = jax.tree_util.tree_map(lambda *xs: np.concatenate(xs)[:n], *chunks)  # no padding rows
  out = {"eval_loss": float(np.sum(loss, dtype=np.float64) / max(np.sum(weight, dtype=np.float64), 1.0))}
  if spec.kind == "multiple_choice":
    out.update(accuracy=task_metrics.accuracy(preds, features["label"]))
    return out, [int(p) for p in preds]
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
    sentence = np.broadcast_to(features["example_index"][:, None], keep.shape)[keep]
    out.update(task_metrics.tagging_scores(preds[keep], features["labels"][keep], spec.label_names, sentence))
    return out, [int(p) for p in preds[keep]]
  answers = tasks.qa_decode(examples, features, preds[0], preds[1], null_answers=spec.metric == "squad_v2")
  out.update(task_metrics.squad_scores(answers, {e["id"]: e["answers"] for e in examples}))
  return out, answers


def check_pooling(config, spec: tasks.TaskSpec) -> None:
  """model.pooling=mean: classification only, and without a transformers export (no HF class pools that way)."""
  pooling = config.model.pooling
  if pooling not in heads.POOLINGS:
    raise ValueError(f"model.pooling={pooling!r} is not one of {heads.POOLINGS}")
  if pooling == "cls":
    return
  if spec.kind not in ("classification", "regression"):
    raise ValueError(f"model.pooling={pooling!r} applies to sequence classification; task {spec.name} is "
                     f"{spec.kind}: leave model.pooling=cls")
  if config.train.export_hf:
    raise ValueError(f"model.pooling={pooling!r} has no transformers (or peft) class: their sequence classifiers "
                     f"read [CLS]. Set train.export_hf=False (params/ and `python -m bert_jax.predict classify` "
                     f"still work) or use model.pooling=cls")


def _model_config(config, pretrained: EncoderConfig | None, vocab_size: int, max_len: int) -> EncoderConfig:
  m = config.model
  common = dict(hidden_dropout=m.hidden_dropout, attention_dropout=m.attention_dropout, dtype=m.dtype,
                attention_impl=m.attention_impl, classifier_pooling=m.pooling, fp8=False)
  if pretrained is not None:
    if max_len > pretrained.max_sequence_length:
      raise ValueError(f"data.max_seq_length={max_len} exceeds the checkpoint's position table "
                       f"({pretrained.max_sequence_length} tokens)")
    return dataclasses.replace(pretrained, **common)
  family = registry.get_family(m.family)
  return family.config_cls.from_size(m.size, vocab_size=vocab_size,
                                     max_position_embeddings=max(512, max_len) + family.config_cls.position_offset,
                                     **common)


# Run-config keys that decide the parameter tree or the batches: checkpoints resume only a run agreeing on all.
RESUME_KEYS = (("init_checkpoint",), ("task", "name"), ("task", "train_file"), ("task", "kind"),
               ("task", "text_keys"), ("task", "label_key"), ("task", "label_names"), ("task", "choice_keys"),
               ("data", "max_seq_length"), ("data", "doc_stride"), ("data", "max_query_length"), ("data", "vocab_file"),
               ("train", "batch_size"), ("train", "seed"), ("train", "method"), ("train", "freeze_encoder"),
               ("train", "param_rules"), ("model", "pooling"), ("peft", "adapter_size"), ("peft", "lora_rank"),
               ("peft", "lora_alpha"), ("peft", "lora_dropout"), ("peft", "lora_targets"), ("peft", "prompt_length"))


def check_resumable(ckpt, config, workdir: str) -> None:
  """A restore that fails falls back to starting over, so a workdir of another run is refused up front."""
  saved = checkpoint_lib.newest_saved_config(ckpt.manager)  # a damaged newest step is restore_or_init's to move
  if saved is None:
    return
  for keys in RESUME_KEYS:
    was, now = saved, config
    for k in keys:
      was, now = (was or {}).get(k), now[k]
    if was is not None and was != now:
      name = ".".join(keys)
      raise ValueError(f"{workdir} holds fine-tuning checkpoints of a run with {name}={was!r}, but this run has "
                       f"{name}={now!r}; use another workdir, or --config.{name}={was}")


def finetune(config, workdir: str, init_checkpoint: str = "") -> dict:
  """Runs (or resumes) fine-tuning as configured; returns the final eval metrics (also in WORKDIR/result.json).

  Start order: the workdir's own checkpoints > init_checkpoint > scratch. Holds WORKDIR/.lock for the run,
  so a second run on the same workdir is refused before it writes anything."""
  if "task" not in config:  # else a field the two kinds share (train.eval_batch_size, 0 in pretraining) misleads
    raise ValueError("this is a pretraining config (it has no task section): fine-tuning takes --config=finetune "
                     "(configs/finetune.py) or a copy of it, and the pretraining run as --init_checkpoint")
  log0 = print if jax.process_index() == 0 else lambda _: None
  distributed.preflight(config, workdir, log=log0, remote_ok=False)  # fine-tuning writes local paths
  with workdir_lock.hold(workdir, log=log0):
    return _finetune(config, workdir, init_checkpoint)


def _prepare_demo_task(config, workdir: str, log) -> None:
  demo_dir = os.path.join(workdir, "task")
  if jax.process_index() == 0 and not os.path.exists(os.path.join(demo_dir, "task.json")):
    info = tasks.make_pydocs_family_task(demo_dir)
    log(f"demo task pydocs_family: {len(info['families'])} stdlib packages, {info['train']} train / "
        f"{info['eval']} eval paragraphs in {demo_dir}")
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("pydocs_family_task")
  with config.unlocked():
    config.task.train_file = os.path.join(demo_dir, "train.jsonl")
    config.task.eval_file = os.path.join(demo_dir, "eval.jsonl")


def _finetune(config, workdir: str, init_checkpoint: str) -> dict:
  with config.unlocked():  # the checkpoints record what this run really started from
    config.init_checkpoint = init_checkpoint or config.init_checkpoint
  init_checkpoint = config.init_checkpoint
  writer = metrics.MetricsWriter(workdir)
  log = writer.log
  mesh = sharding.create_mesh({a: config.mesh[a] for a in sharding.MESH_AXES})
  # before the demo task is built, the encoder loaded and the task data read and featurized (minutes for SQuAD)
  check_batch_sizes(config.train, mesh)
  if config.task.name == "pydocs_family" and not config.task.train_file:
    _prepare_demo_task(config, workdir, log)
  spec = task_spec(config)
  r, d = config.train, config.data
  method = method_of(config)
  method_rules, model_overrides = method_setup(config, method)
  check_pooling(config, spec)
  if r.early_stop_metric and not r.eval_every:
    raise ValueError(f"train.early_stop_metric={r.early_stop_metric!r} needs evals during training: set "
                     f"train.eval_every (steps between evals)")

  pretrained_params, pretrained_config, vocab_file, lower_case = None, None, None, d.lower_case
  if init_checkpoint:
    pretrained_params, pretrained_config, vocab_file, lower_case = load_encoder(init_checkpoint)
  checkpoint_vocab = vocab_file
  vocab_file = d.vocab_file or vocab_file
  if not vocab_file:
    raise ValueError("no vocabulary: set data.vocab_file (from scratch), or give a checkpoint whose data "
                     "manifest names one")
  tok = tokenizer_lib.load(vocab_file, lower_case if not d.vocab_file else d.lower_case)
  model_config = dataclasses.replace(_model_config(config, pretrained_config, tok.vocab_size, d.max_seq_length),
                                     **model_overrides)
  check_vocab(tok, model_config, vocab_file, checkpoint_vocab)

  train_examples, eval_examples = load_examples(config, spec, workdir)
  featurize = functools.partial(tasks.featurize, spec, tok=tok, max_seq_length=d.max_seq_length,
                                doc_stride=d.doc_stride, max_query_length=d.max_query_length)
  train_features, eval_features = featurize(train_examples), featurize(eval_examples)
  order = tasks.TrainOrder(len(train_features["input_ids"]), r.batch_size, r.seed)
  total_steps = r.max_steps or r.epochs * order.steps_per_epoch
  outputs = (f"up to {train_features['choice_mask'].shape[1]} choices" if spec.kind == "multiple_choice"
             else f"{spec.num_labels} labels")
  log(f"task {spec.name} ({spec.kind}, {outputs}): {len(train_examples)} train / "
      f"{len(eval_examples)} eval examples -> {len(train_features['input_ids'])} / "
      f"{len(eval_features['input_ids'])} rows; {total_steps} steps; "
      f"{'from ' + init_checkpoint if init_checkpoint else 'from scratch'}; method {method}")

  rules = sharding.rules_from_config(config.mesh.logical_axis_rules)
  model = heads.MODELS[spec.kind](model_config, num_labels=spec.num_labels)
  ids = jnp.zeros((1, d.max_seq_length), jnp.int32)
  init_params = lambda rng: model.init(rng, ids, ids, ids)["params"]
  abstract_params = nn.meta.unbox(jax.eval_shape(init_params, jax.random.key(r.seed)))
  trainable_rules = param_rules_for(config, method_rules)
  param_rules.check_rules(abstract_params, trainable_rules)  # a rule matching nothing is a typo: fail naming it
  trainable, total = param_rules.count(abstract_params, trainable_rules)
  log(f"parameters: {trainable:,} trainable of {total:,} ({100 * trainable / total:.2f}%)")
  tx, schedule = make_optimizer(config, total_steps, trainable_rules)
  if jax.process_index() == 0:
    predict_lib.write_model_info(workdir, model_config, spec, vocab_file, tok.lower_case, d)

  ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"), config, log=log)
  check_resumable(ckpt, config, workdir)
  with nn.logical_axis_rules(rules):
    init_state, abstract_state, state_shardings = state_functions(init_params, tx, mesh, rules, r.seed)

    def start(_):
      """No checkpoint of this run yet: fresh params, the encoder's from init_checkpoint (the pooler fresh if
      pretraining never made one; the head and any PEFT blocks are new)."""
      rng = jax.random.key(r.seed)
      if pretrained_params is None:
        return jax.jit(init_state, out_shardings=state_shardings)(rng)
      fresh = jax.jit(lambda k: nn.meta.unbox(init_params(k)), out_shardings=state_shardings.params)(rng)
      params = peft_methods.fit_params(pretrained_params, fresh, state_shardings.params, model.config,
                                       f"checkpoint {init_checkpoint}", keep=lambda top: top in heads.ENCODER_PARAMS,
                                       saved_vocab_size=pretrained_config.vocab_size)
      return jax.jit(init_state, out_shardings=state_shardings)(rng, params)

    state = ckpt.restore_or_init(abstract_state, state_shardings, init=start)
    step_fn = jax.jit(sharding.with_kernel_mesh(mesh, functools.partial(
        train_step, model=model, tx=tx, spec=spec, trainable_rules=trainable_rules)),
                      in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                      out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=0)
    predict_fn = jax.jit(sharding.with_kernel_mesh(mesh, functools.partial(predict_step, model=model, spec=spec)),
                         in_shardings=(state_shardings.params, sharding.batch_sharding(mesh)))
    start_step = int(jax.device_get(state.step))
    dropped = writer.resume_from(start_step)
    if dropped:
      log(f"dropped {dropped} metrics.jsonl lines written after the step-{start_step} checkpoint")
    history = early_stopping.eval_history(workdir, start_step) if start_step else []
    stopper = early_stopping.EarlyStopping(r.early_stop_metric, r.early_stop_patience) if r.early_stop_metric else None
    if stopper is not None:
      stopper.replay(history)
    best_dir = os.path.join(workdir, "best_params")

    def run_eval(step, params):
      result, predictions = evaluate(predict_fn, params, spec, eval_examples, eval_features, r.eval_batch_size, mesh)
      if stopper is not None and stopper.update(step, result):
        checkpoint_lib.save_params(best_dir, params)  # before the eval line: a resume never trusts a newer one
        if jax.process_index() == 0:
          with open(best_dir + ".json", "w") as f:
            json.dump({"step": step, "metric": stopper.metric, "value": stopper.best_value}, f)
      writer.write({"step": step, "split": "eval", **result})
      log(f"eval step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in result.items()))
      return result, predictions

    # The restored step's eval line may already be logged (a kill after it): not logged or counted twice.
    evaluated_at = start_step if any(h["step"] == start_step for h in history) else None
    stopped_early = stopper is not None and stopper.should_stop
    step, t0, result = start_step, time.perf_counter(), None
    with preemption.Preemption(start_step) as preempted:
      while step < total_steps and not stopped_early:
        state, m = step_fn(state, sharding.global_batch(_local(train_features, order.rows(step)), mesh))
        step += 1
        if step % r.log_every == 0 or step == total_steps:
          m = {k: float(v) for k, v in jax.device_get(m).items()}
          writer.write({"step": step, "split": "train", **m, "learning_rate": float(schedule(step - 1)),
                        "seq_per_sec": (step - start_step) * r.batch_size / (time.perf_counter() - t0)})
          log(f"step {step}/{total_steps}: loss {m['loss']:.4f}")
        if r.eval_every and step % r.eval_every == 0:
          result, predictions = run_eval(step, state.params)
          evaluated_at = step
          if stopper is not None and stopper.should_stop:
            log(f"early stop at step {step}: {stopper.metric} has not improved for {stopper.evals_since_best} "
                f"evals (best {stopper.best_value:.4f} at step {stopper.best_step})")
            stopped_early = True
        if preempted.requested_anywhere(step):
          log(f"SIGTERM: saving a checkpoint at step {step} and exiting")
          ckpt.save(step, state, force=True)
          ckpt.wait()
          writer.close()
          return {"preempted": True, "step": step}
        ckpt.save(step, state)
    if evaluated_at != step:
      result, predictions = run_eval(step, state.params)
    elif result is None:
      result, predictions = evaluate(predict_fn, state.params, spec, eval_examples, eval_features,
                                     r.eval_batch_size, mesh)
    ckpt.save(step, state, force=True)
    ckpt.wait()
    params = state.params
    if stopper is not None:
      params = _best_params(best_dir, stopper, state_shardings.params)
      if stopper.best_step != step:
        result, predictions = evaluate(predict_fn, params, spec, eval_examples, eval_features, r.eval_batch_size,
                                       mesh)
      log(f"exporting the best params: step {stopper.best_step}, {stopper.metric} {stopper.best_value:.4f}")
  params = jax.tree_util.tree_map(np.asarray, jax.device_get(params))
  checkpoint_lib.save_params(os.path.join(workdir, "params"), params)
  if r.export_hf and jax.process_index() == 0 and method in peft_methods.PEFT_METHODS:
    labels = jax.tree_util.tree_leaves_with_path(param_rules.labels(params, trainable_rules))
    trained = [param_rules.path_of(p) for p, label in labels if label == param_rules.TRAIN]
    result.update(peft_export.export_all(params, model_config, spec, workdir, vocab_file, tok.lower_case, trained,
                                         log=log))
  elif r.export_hf and jax.process_index() == 0:
    hf_dir = os.path.join(workdir, "hf")
    task_export.write_hf_dir(params, model_config, spec, hf_dir, vocab_file, tok.lower_case)
    fp32 = heads.MODELS[spec.kind](dataclasses.replace(model_config, dtype="float32"), num_labels=spec.num_labels)
    result["hf_max_logit_diff"] = task_export.check_hf_dir(fp32, params, spec, hf_dir)
    log(f"wrote {hf_dir} ({task_export.hf_class(model_config, spec.kind)}); "
        f"{task_export.describe_check(model_config, spec.kind, result['hf_max_logit_diff'])}")
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "eval_predictions.json"), "w") as f:
      json.dump(predictions, f)
    summary = {"task": spec.name, "kind": spec.kind, "init_checkpoint": init_checkpoint, "method": method,
               "param_rules": r.param_rules, "freeze_encoder": method == "frozen", "trainable_params": trainable,
               "total_params": total, "steps": step, "batch_size": r.batch_size, "stopped_early": stopped_early}
    if stopper is not None:
      summary.update(best_step=stopper.best_step, early_stop_metric=stopper.metric)
    with open(os.path.join(workdir, "result.json"), "w") as f:
      json.dump({**summary, **result}, f, indent=2)
  writer.close()
  return result


def _best_params(best_dir: str, stopper, shardings):
  """The params of the best eval, as saved when it happened; they must be that eval's (a resume replays it)."""
  with open(best_dir + ".json") as f:
    saved = json.load(f)
  if saved["step"] != stopper.best_step:
    raise RuntimeError(f"{best_dir} holds step {saved['step']} but the best eval was at step {stopper.best_step}; "
                       f"the workdir was changed by hand? Rerun in a fresh workdir")
  params = checkpoint_lib.load_params(best_dir)
  return jax.tree_util.tree_map(lambda x, s: jax.device_put(x, s), params, shardings)
