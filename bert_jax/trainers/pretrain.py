"""Pretraining: the jitted train/eval steps and the loop, for any objective and model family.

The objective (objectives/) is passed in; nothing here names a loss, a head or a batch key beyond the
encoder inputs. Start order: resume from the workdir > init_checkpoint > scratch.
"""

import contextlib
import functools
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from bert_jax import inputs
from bert_jax.convert import workdir as workdir_lib
from bert_jax.core import checkpoint as checkpoint_lib
from bert_jax.core import preemption as preemption_lib
from bert_jax.core import distributed, metrics, optim, param_rules, platform_defaults, sharding, workdir_lock
from bert_jax.core.train_state import TrainState, create_train_state
from bert_jax.data import schema
from bert_jax.models import registry
from bert_jax.objectives import registry as objectives
from bert_jax.trainers import init_sources


def build(config, load_config=init_sources.encoder_config):
  """(encoder config, objective) from a run config: `model.family` and `train.objective` pick them, and the
  objective's own section (e.g. `distill`) sets it up. load_config(path) reads the encoder config of a model the
  objective loads (a distillation teacher)."""
  model_config = registry.encoder_config(config.model.to_dict(), dropout_off=config.train.deterministic)
  objective = objectives.from_run_config(config, model_config, load_config)
  family = registry.family_of(model_config)
  unknown = sorted(set(objective.heads) - set(family.name_table(model_config)))
  if unknown:  # it would train, then fail at to_hf
    raise ValueError(f"objective {objective.name!r} trains heads {unknown} that model family {family.name!r} has no "
                     f"HF form for; choose an objective whose heads the family exports (its sections: "
                     f"{sorted(family.name_table(model_config))})")
  return model_config, objective


def _split_microbatches(batch, num, mesh):
  """[B, ...] -> [num, B/num, ...] where microbatch m holds rows m, m+num, ...: every device keeps its
  own rows, so the split moves no data."""
  def split(x):
    y = x.reshape((x.shape[0] // num, num) + x.shape[1:]).swapaxes(0, 1)
    spec = jax.sharding.PartitionSpec(None, sharding.BATCH_AXES)
    return jax.lax.with_sharding_constraint(y, jax.sharding.NamedSharding(mesh, spec))
  return jax.tree_util.tree_map(split, batch)


def train_step(state: TrainState, batch, *, objective, tx, schedule, mesh, microbatches: int, deterministic: bool):
  """One optimizer step on a global batch; returns (new state, metrics of this step)."""
  rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  denominators = objective.denominators(batch)

  def loss_fn(params, mb, mb_rng):
    sums = objective.loss_sums(params, mb, mb_rng, deterministic)
    return objective.loss(sums, denominators), sums

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  # Statistics leaves (FP8 scales and amax histories) get their next value as their gradient: microbatches
  # combine them by maximum, what one whole batch would have recorded, and the optimizer never sees them.
  overwritten = param_rules.overwrite_mask(state.params)
  accumulate = lambda acc, g, over: jnp.maximum(acc, g) if over else acc + g
  if microbatches == 1:
    (_, sums), grads = grad_fn(state.params, batch, rng)
  else:
    mbs = _split_microbatches(batch, microbatches, mesh)

    def body(carry, xs):
      grads_acc, sums_acc = carry
      index, mb = xs
      (_, mb_sums), grads = grad_fn(state.params, mb, jax.random.fold_in(rng, index))
      return (jax.tree_util.tree_map(accumulate, grads_acc, grads, overwritten),
              jax.tree_util.tree_map(jnp.add, sums_acc, mb_sums)), None

    zero_grads = jax.tree_util.tree_map(jnp.zeros_like, state.params)
    first = jax.tree_util.tree_map(lambda x: x[0], mbs)
    zero_sums = jax.tree_util.tree_map(jnp.zeros_like, jax.eval_shape(
        lambda: objective.loss_sums(state.params, first, rng, deterministic)))
    (grads, sums), _ = jax.lax.scan(body, (zero_grads, zero_sums), (jnp.arange(microbatches), mbs))

  next_values = grads
  grads = jax.tree_util.tree_map(lambda g, over: jnp.zeros_like(g) if over else g, grads, overwritten)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  params = jax.tree_util.tree_map(lambda p, v, over: v.astype(p.dtype) if over else p, params, next_values, overwritten)
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  out = objective.summaries(sums)
  out["grad_norm"] = optax.global_norm(grads)
  out["learning_rate"] = schedule(state.step)
  return new_state, out


def eval_step(params, batch, batch_index, *, objective):
  """Loss sums for eval batch number batch_index (summed over batches by the caller). An objective that samples
  (ELECTRA's generator) draws other noise for each batch of an eval, and the same at every eval, so curves compare."""
  return objective.loss_sums(params, batch, jax.random.fold_in(jax.random.key(0), batch_index), True)


def make_step_functions(config, objective, tx, schedule, mesh, state_shardings):
  """The train and eval steps, each jitted once with shardings; the state is donated."""
  batch_sharding = sharding.batch_sharding(mesh)
  step_fn = functools.partial(train_step, objective=objective, tx=tx, schedule=schedule, mesh=mesh,
                              microbatches=config.train.microbatches, deterministic=config.train.deterministic)
  train_step_fn = jax.jit(sharding.with_kernel_mesh(mesh, step_fn), in_shardings=(state_shardings, batch_sharding),
                          out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=0)
  eval_step_fn = jax.jit(sharding.with_kernel_mesh(mesh, functools.partial(eval_step, objective=objective)),
                         in_shardings=(state_shardings.params, batch_sharding, sharding.replicated(mesh)),
                         out_shardings=sharding.replicated(mesh))
  return train_step_fn, eval_step_fn


def check_batch(config, mesh) -> None:
  t = config.train
  sharding.check_batch_size("train.batch_size", t.batch_size, mesh, t.microbatches)
  if t.eval_batch_size < 0:  # 0 is a value of its own (train.batch_size), so check_batch_size would misname it
    raise ValueError(f"train.eval_batch_size={t.eval_batch_size} must be at least 1, or 0 for train.batch_size")
  sharding.check_batch_size("train.eval_batch_size", inputs.eval_batch_size(t), mesh)


def warn_if_eval_repeats(config, eval_manifest: dict | None, log) -> None:
  """The eval iterator repeats its data so that train.eval_batches batches always exist; an eval set smaller than
  that counts some examples twice (the same ones at every eval, so curves still compare), which a line says."""
  rows = ((eval_manifest or {}).get("splits", {}).get("eval") or {}).get("instances")
  needed = config.train.eval_batches * inputs.eval_batch_size(config.train)
  if rows is not None and 0 < rows < needed:
    log(f"WARNING: the eval data has {rows} instances but an eval reads {needed} (train.eval_batches x its batch "
        f"size): some count {-(-needed // rows)} times; lower train.eval_batches to "
        f"{max(1, rows // (needed // config.train.eval_batches))} to read each at most once")


def check_intervals(config) -> None:
  """Step counts the loop divides by, the batches an eval reads and the checkpoints kept must be at least 1:
  checked at start, not after the data is prepared and the first step compiled."""
  for section, key in (("train", "microbatches"), ("train", "log_every"), ("train", "eval_every"),
                       ("train", "eval_batches"), ("checkpoint", "every_steps"), ("checkpoint", "keep")):
    value = config[section][key]
    if value >= 1:
      continue
    if key == "keep":
      why = " (Orbax would delete every checkpoint, the final one too)"
    elif key == "microbatches":
      why = ""
    elif key == "eval_batches":  # 0 would train to the end, then fail summarizing an eval of no batches
      why = "; with data.train_files, an empty data.eval_files trains without evaluating"
    else:
      why = f"; to do it rarely, set it to train.steps ({config.train.steps})"
    raise ValueError(f"{section}.{key}={value} must be at least 1{why}")


def evaluate(eval_step_fn, params, eval_iter_factory, num_batches: int, mesh, objective) -> dict:
  totals = None
  it = eval_iter_factory()
  for index in range(num_batches):
    index_array = jax.make_array_from_process_local_data(sharding.replicated(mesh), np.int32(index))
    sums = eval_step_fn(params, sharding.global_batch(next(it), mesh), index_array)
    totals = sums if totals is None else jax.tree_util.tree_map(jnp.add, totals, sums)
  return {k: float(v) for k, v in jax.device_get(objective.summaries(totals)).items()}


def _fields(values: dict, names) -> str:
  return " ".join(f"{n} {values[n]:.4f}" for n in names)


# Run-config keys that decide the parameter tree: a checkpoint resumes only a run that agrees on all of them.
TREE_KEYS = (("model", "family"), ("train", "objective"), ("model", "size"), ("model", "vocab_size"),
             ("model", "embedding_size"), ("model", "layer_sharing"), ("model", "scan_layers"), ("model", "fused_qkv"),
             ("model", "fp8"), ("optim", "param_rules"))  # frozen params have no optimizer state


def check_resumable(ckpt, config, workdir: str) -> None:
  """A workdir's checkpoints resume only a run with the same parameter tree; otherwise every restore would fail
  and the run would silently start over (and Orbax would then skip saves below the old step numbers)."""
  saved = checkpoint_lib.newest_saved_config(ckpt.manager)
  if saved is None:
    return
  if "family" not in saved.get("model", {}):
    raise ValueError(f"{workdir} holds checkpoints from before model families (parameter tree embeddings/, "
                     f"mlm_transform/, ...), which this version cannot resume; convert them with that version's "
                     f"`convert to_hf` and start a new workdir from `convert from_hf` (README, Model families)")
  for section, key in TREE_KEYS:
    was, now = saved.get(section, {}).get(key), config[section][key]
    if was is not None and was != now:
      raise ValueError(f"{workdir} holds checkpoints of a {section}.{key}={was!r} run, but this config has "
                       f"{section}.{key}={now!r}; use another workdir, or --config.{section}.{key}={was}")


class NonFiniteLossError(FloatingPointError):
  pass


def use_prng_impl(name: str) -> None:
  """Sets the PRNG behind init and dropout keys; threefry's bit generation is slow on accelerators."""
  choices = ("threefry2x32", "rbg", "unsafe_rbg")
  if name not in choices:
    raise ValueError(f"train.prng_impl={name!r} is not one of {choices}")
  jax.config.update("jax_default_prng_impl", name)


def train_and_evaluate(config, workdir: str) -> dict:
  """Runs (or resumes) pretraining as configured; returns the last train and eval metrics.

  Holds WORKDIR/.lock for the run, so a second run on the same workdir is refused before it writes anything."""
  if "task" in config:  # else a KeyError on the first pretraining field it lacks
    raise ValueError("this is a fine-tuning config (it has a task section, as configs/finetune.py): run it with "
                     "`python -m bert_jax.finetune`; pretraining takes a config such as tiny or base")
  log0 = print if jax.process_index() == 0 else lambda _: None
  distributed.check_workdir_scheme(workdir)  # an unsupported scheme is named first, whatever the data settings
  inputs.check_workdir(config, workdir)
  distributed.preflight(config, workdir, log=log0)
  # closed on every way out, an error included: a bucket's metrics.jsonl then still gets the lines before it
  with workdir_lock.hold(workdir, log=log0) as lock, contextlib.closing(metrics.MetricsWriter(workdir)) as writer:
    return _train_and_evaluate(config, workdir, writer, lock)


def param_rules_of(config, objective) -> tuple:
  """The objective's rules (a distillation teacher's freeze), then optim.param_rules: the first rule that says
  decides, so no user rule unfreezes what the objective keeps frozen."""
  return tuple(objective.param_rules()) + param_rules.parse_rules(config.optim.param_rules)


def with_platform_defaults(config, mesh, log):
  """The config with its auto fields (core/platform_defaults.py) chosen for this platform, model and batch."""
  model = registry.encoder_config({**config.model.to_dict(), "remat_policy": "none"})
  backend = jax.default_backend()
  # the memory estimate: explicit attention keeps [B, N, T, S] probabilities; cuDNN and our dropout kernel do not
  impl = config.model.attention_impl
  explicit_attention = backend != "gpu" or impl == "xla" or (model.attention_dropout > 0 and impl != "pallas")
  local_batch = config.train.batch_size // (mesh.shape["data"] * mesh.shape["fsdp"] * config.train.microbatches)
  memory = (jax.local_devices()[0].memory_stats() or {}).get("bytes_limit")
  dims = dict(num_layers=model.num_layers, hidden=model.hidden_size, heads=model.num_heads,
              ffn=model.intermediate_size, vocab=model.vocab_size)
  config, line = platform_defaults.resolve(config, backend, memory, dims, local_batch, explicit_attention)
  log(line)
  return config


def _train_and_evaluate(config, workdir: str, writer: metrics.MetricsWriter, lock) -> dict:
  """The run, with its metrics writer and workdir lock (None where there is none: other processes than 0)."""
  log = writer.log
  check_intervals(config)
  mesh = sharding.create_mesh({a: config.mesh[a] for a in sharding.MESH_AXES}, config.mesh.dcn_data)
  check_batch(config, mesh)
  config = with_platform_defaults(config, mesh, log)
  use_prng_impl(config.train.prng_impl)
  rules = sharding.rules_from_config(config.mesh.logical_axis_rules)
  log(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind} in {jax.process_count()} process(es); "
      f"mesh {dict(mesh.shape)}")

  model_config, objective = build(config)  # a bad family, objective or model setting fails before any data work
  # a rule that matches no parameter is a typo: refused before any data work, on the params' shapes alone
  user_rules = param_rules.parse_rules(config.optim.param_rules)
  if user_rules:  # else no need to trace the model's init
    param_rules.check_rules(nn.meta.unbox(jax.eval_shape(objective.init_params, jax.random.key(0))), user_rules)
  ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"), config, log=log)
  check_resumable(ckpt, config, workdir)
  sources = objective.init_sources()
  init_sources.adopt_vocabulary(config, sources, log)
  train_files, eval_files, manifest, tok = inputs.resolve(config, workdir, log)
  family = registry.family_of(model_config)
  if tok is not None:
    family.check_vocab_kind(tok.kind, tok.vocab_file)
  init_sources.check_vocabulary(sources, tok, log)
  objective.check_data(manifest)
  tx, schedule = optim.make_optimizer(config.optim, optim.schedule_steps(config.optim, config.train.steps),
                                      param_rules_of(config, objective))
  d = config.data
  with nn.logical_axis_rules(rules):
    state, state_shardings = create_train_state(objective.init_params, tx, mesh, rules, config.train.seed)
    train_step_fn, eval_step_fn = make_step_functions(config, objective, tx, schedule, mesh, state_shardings)
  n_trainable, n_params = param_rules.count(state.params, param_rules_of(config, objective))
  log(f"model {family.name} {config.model.size}, objective {objective.name}: {n_params:,} params" +
      (f" ({n_trainable:,} trainable)" if n_trainable != n_params else ""))

  train_iter = inputs.train_iterator(config, train_files, tok)

  def from_init_checkpoint(fresh):
    """A fresh start: init_checkpoint's params (less the objective's init sources), then those sources (e.g. a
    teacher) and the objective's finish_init, which an init_checkpoint replaces."""
    init = config.checkpoint.init_checkpoint
    params = fresh.params
    if init:
      params = workdir_lib.restore_params(init, params, state_shardings.params, model_config,
                                          keep=lambda top: top not in sources, log=log)
      log(f"initialised params from {init} (fresh optimizer state)")
    if sources:
      params = init_sources.load_sources(objective, params, state_shardings.params, finish=not init, log=log)
    return fresh.replace(params=params)

  state = ckpt.restore_or_init(state, state_shardings, train_iter, init=from_init_checkpoint)
  start_step = int(jax.device_get(state.step))
  dropped = writer.resume_from(start_step)
  if dropped:
    log(f"metrics.jsonl: dropped {dropped} line(s) past step {start_step}, which this run writes again")
  eval_iter_factory = (lambda: inputs.eval_iterator(config, eval_files)) if eval_files else None
  if eval_files:
    warn_if_eval_repeats(config, schema.find_manifest(list(eval_files)), log)

  flops_per_seq = objective.flops_per_sequence()
  peak = metrics.peak_flops_per_device(jax.devices()[0].device_kind, config.train.peak_flops)
  throughput = metrics.Throughput()
  last_train, last_eval = {}, {}
  pending = None  # (step, device metrics) checked one step late so the host never stalls the device
  t0 = time.time()

  def run_eval(step):
    nonlocal last_eval
    if eval_iter_factory is None:
      return
    with nn.logical_axis_rules(rules):
      last_eval = evaluate(eval_step_fn, state.params, eval_iter_factory, config.train.eval_batches, mesh, objective)
    writer.write({"step": step, "split": "eval", **last_eval})
    log(f"eval  step {step}: loss {last_eval['loss']:.4f} " + _fields(last_eval, objective.log_fields))

  def check_finite(step, m):
    loss = float(m["loss"])
    if not np.isfinite(loss):
      raise NonFiniteLossError(f"loss is {loss} at step {step}; stopping instead of training on garbage "
                               f"(try a lower optim.peak_learning_rate, more warmup, or float32 compute)")
    return loss

  trace = metrics.ProfilerTrace(os.path.join(workdir, "profile"))
  with preemption_lib.Preemption(start_step) as preemption:  # SIGTERM from here on: save at a step, exit 0
    if start_step == 0:
      run_eval(0)
    step = start_step
    with nn.logical_axis_rules(rules):
      while step < config.train.steps:
        if step == config.train.profile_start_step:
          trace.start()
        local_batch = next(train_iter)
        if step == start_step:
          objective.check_batch_keys(local_batch)
        batch = sharding.global_batch(local_batch, mesh)
        state, step_metrics = train_step_fn(state, batch)
        if step == start_step:  # throughput excludes the first step's compilation
          jax.block_until_ready(step_metrics)
          throughput.update(step + 1, config.train.batch_size, d.max_seq_length)
        if pending is not None:
          check_finite(*pending)
        step += 1
        pending = (step, step_metrics)
        if config.train.profile_start_step >= 0 and step == config.train.profile_start_step + config.train.profile_steps:
          trace.stop()
        if step % config.train.log_every == 0 or step == config.train.steps:
          m = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
          check_finite(step, m)
          pending = None  # checked: not fetched again
          rates = throughput.update(step, config.train.batch_size, d.max_seq_length)
          seq_s, tok_s, _ = rates if rates else (None, None, None)
          mfu = (flops_per_seq * seq_s / (peak * jax.device_count())) if (peak and seq_s) else None
          last_train = {"step": step, **m, "seq_per_sec": seq_s, "tokens_per_sec": tok_s, "mfu": mfu}
          writer.write(last_train)
          eta = (time.time() - t0) / max(step - start_step, 1) * (config.train.steps - step)
          log(f"train step {step}/{config.train.steps}: loss {m['loss']:.4f} {_fields(m, objective.log_fields)} "
              f"lr {m['learning_rate']:.2e} "
              f"{f'{seq_s:.1f}' if seq_s else '-'} seq/s eta {metrics.format_eta(eta)}")
        if step % config.train.eval_every == 0 and step != config.train.steps:
          run_eval(step)
        preempted = preemption.requested_anywhere(step)
        if pending is not None and (preempted or ckpt.due(step)):
          check_finite(*pending)  # a non-finite step's params are never saved, or every resume would start from them
          pending = None
        if preempted or ckpt.due(step):
          if lock is not None:
            lock.check()  # a lease another run took over: stop before overwriting that run's checkpoints
          writer.flush()  # lines up to `step` are stored before its checkpoint can exist: a resume from it keeps them
        if preempted:
          log(f"SIGTERM: saving a checkpoint at step {step} and exiting")
          ckpt.save(step, state, train_iter, force=True)
          ckpt.wait()
          return {"train": last_train, "eval": last_eval, "preempted": True}
        ckpt.save(step, state, train_iter)
      if pending is not None:
        check_finite(*pending)
    if step > start_step or start_step == 0:  # a rerun of a finished workdir has its final eval line already
      run_eval(step)
    writer.flush()
    ckpt.save(step, state, train_iter, force=True)
    ckpt.wait()
    return {"train": last_train, "eval": last_eval}
