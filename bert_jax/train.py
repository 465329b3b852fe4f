"""Pretraining: state creation under shardings, the jitted train/eval steps, and the loop.

  python -m bert_jax.train --config=tiny --workdir=runs/tiny [--config.train.steps=...]
"""

import dataclasses
import functools
import os
import signal
import time

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from bert_jax import checkpoint as checkpoint_lib
from bert_jax import distributed, inputs, losses, metrics, optim, sharding
from bert_jax.model import BertConfig, BertForPreTraining


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: dict
  opt_state: optax.OptState
  rng: jax.Array  # raw uint32 key data; dropout uses fold_in(rng, step)


def model_config(config) -> BertConfig:
  """The frozen model dataclass from the ConfigDict (the model never sees the ConfigDict)."""
  m = config.model
  dropout_off = config.train.deterministic
  return BertConfig.from_size(
      m.size, vocab_size=m.vocab_size, vocab_pad_multiple=m.vocab_pad_multiple,
      max_position_embeddings=m.max_position_embeddings,
      hidden_dropout=0.0 if dropout_off else m.hidden_dropout,
      attention_dropout=0.0 if dropout_off else m.attention_dropout, dtype=m.dtype, param_dtype=m.param_dtype,
      remat_policy=m.remat_policy, scan_layers=m.scan_layers, attention_impl=m.attention_impl,
      mlm_all_positions=m.mlm_all_positions, fused_qkv=m.fused_qkv)


def _dummy_batch(seq_len: int, predictions: int):
  ids = jnp.zeros((1, seq_len), jnp.int32)
  return ids, ids, ids, jnp.zeros((1, predictions), jnp.int32)


def abstract_train_state(model: BertForPreTraining, tx, mesh, rules, seed: int, seq_len: int, predictions: int):
  """(init function, abstract state, state shardings) by eval_shape: nothing is allocated."""
  return state_functions(lambda rng: model.init(rng, *_dummy_batch(seq_len, predictions))["params"], tx, mesh,
                         rules, seed)


def state_functions(init_params, tx, mesh, rules, seed: int):
  """For any init_params(rng) -> logically boxed params: (init_state(rng, params=None), abstract state,
  state shardings). init_state builds fresh params unless given some (e.g. pretrained, already sharded)."""
  def init_state(rng, params=None):
    params = nn.unbox(init_params(rng)) if params is None else params
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      rng=jax.random.key_data(jax.random.fold_in(rng, 1)))

  rng = jax.random.key(seed)
  param_specs = nn.get_partition_spec(jax.eval_shape(init_params, rng))
  param_shardings = sharding.logical_to_sharding(param_specs, mesh, rules)
  abstract = jax.eval_shape(init_state, rng)
  replicated = sharding.replicated(mesh)
  state_shardings = TrainState(
      step=replicated, params=param_shardings,
      opt_state=sharding.shardings_by_path(abstract.opt_state, jax.tree_util.tree_leaves_with_path(param_shardings),
                                           replicated),
      rng=replicated)
  return init_state, abstract, state_shardings


def create_train_state(model: BertForPreTraining, tx, mesh, rules, seed: int, seq_len: int, predictions: int):
  """(state, state shardings): eval_shape -> logical specs -> shardings -> jit(init, out_shardings).

  Parameters are created directly in their shards; no host ever holds the full set.
  """
  init_state, _, state_shardings = abstract_train_state(model, tx, mesh, rules, seed, seq_len, predictions)
  state = jax.jit(init_state, out_shardings=state_shardings)(jax.random.key(seed))
  return state, state_shardings


def _loss_sums(params, batch, model, rng, deterministic):
  out = model.apply({"params": params}, batch["input_ids"], batch["input_mask"], batch["segment_ids"],
                    batch["masked_lm_positions"], position_ids_BxT=batch.get("position_ids"),
                    attention_segments_BxT=batch.get("attention_segments"),
                    nsp_positions_BxK=batch.get("nsp_positions"), deterministic=deterministic, rngs={"dropout": rng})
  mlm = losses.mlm_sums(out["mlm_logits"], batch["masked_lm_ids"], batch["masked_lm_weights"])
  nsp = losses.nsp_sums(out["nsp_logits"], batch["next_sentence_labels"], batch.get("nsp_weights"))
  return mlm, nsp


def _split_microbatches(batch, num, mesh):
  """[B, ...] -> [num, B/num, ...] where microbatch m holds rows m, m+num, ...: every device keeps its
  own rows, so the split moves no data."""
  def split(x):
    y = x.reshape((x.shape[0] // num, num) + x.shape[1:]).swapaxes(0, 1)
    spec = jax.sharding.PartitionSpec(None, sharding.BATCH_AXES)
    return jax.lax.with_sharding_constraint(y, jax.sharding.NamedSharding(mesh, spec))
  return jax.tree_util.tree_map(split, batch)


def train_step(state: TrainState, batch, *, model, tx, schedule, mesh, microbatches: int, use_nsp: bool,
               deterministic: bool):
  """One optimizer step on a global batch; returns (new state, metrics of this step)."""
  rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  total_weight = jnp.maximum(jnp.sum(batch["masked_lm_weights"].astype(jnp.float32)), 1e-5)
  # NSP averages over instances: rows, or the real instance slots of packed rows.
  total_seqs = (jnp.maximum(jnp.sum(batch["nsp_weights"]), 1.0) if "nsp_weights" in batch
                else batch["input_ids"].shape[0])

  def loss_fn(params, mb, mb_rng):
    mlm, nsp = _loss_sums(params, mb, model, mb_rng, deterministic)
    loss = mlm["loss_sum"] / total_weight
    if use_nsp:
      loss += nsp["loss_sum"] / total_seqs
    return loss, (mlm, nsp)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if microbatches == 1:
    (_, (mlm, nsp)), grads = grad_fn(state.params, batch, rng)
  else:
    mbs = _split_microbatches(batch, microbatches, mesh)

    def body(carry, xs):
      grads_acc, sums_acc = carry
      index, mb = xs
      (_, sums), grads = grad_fn(state.params, mb, jax.random.fold_in(rng, index))
      grads_acc = jax.tree_util.tree_map(jnp.add, grads_acc, grads)
      sums_acc = jax.tree_util.tree_map(jnp.add, sums_acc, sums)
      return (grads_acc, sums_acc), None

    zero_grads = jax.tree_util.tree_map(jnp.zeros_like, state.params)
    zero_sums = jax.tree_util.tree_map(lambda x: jnp.zeros_like(x),
                                       jax.eval_shape(lambda: _loss_sums(state.params, jax.tree_util.tree_map(
                                           lambda x: x[0], mbs), model, rng, deterministic)))
    (grads, (mlm, nsp)), _ = jax.lax.scan(body, (zero_grads, zero_sums), (jnp.arange(microbatches), mbs))

  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  out = _summaries(mlm, nsp, use_nsp)
  out["grad_norm"] = optax.global_norm(grads)
  out["learning_rate"] = schedule(state.step)
  return new_state, out


def _summaries(mlm, nsp, use_nsp):
  w = jnp.maximum(mlm["weight_sum"], 1e-5)
  out = {"mlm_loss": mlm["loss_sum"] / w, "mlm_accuracy": mlm["correct_sum"] / w,
         "nsp_loss": nsp["loss_sum"] / nsp["count"], "nsp_accuracy": nsp["correct_sum"] / nsp["count"]}
  out["loss"] = out["mlm_loss"] + (out["nsp_loss"] if use_nsp else 0.0)
  return out


def eval_step(params, batch, *, model):
  """Loss numerators/denominators for one eval batch (summed over batches by the caller)."""
  mlm, nsp = _loss_sums(params, batch, model, jax.random.key(0), True)
  return {"mlm": mlm, "nsp": nsp}


def make_step_functions(config, model, tx, schedule, mesh, state_shardings):
  """The train and eval steps, each jitted once with shardings; the state is donated."""
  batch_sharding = sharding.batch_sharding(mesh)
  step_fn = functools.partial(train_step, model=model, tx=tx, schedule=schedule, mesh=mesh,
                              microbatches=config.train.microbatches, use_nsp=config.train.nsp,
                              deterministic=config.train.deterministic)
  train_step_fn = jax.jit(step_fn, in_shardings=(state_shardings, batch_sharding),
                          out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=0)
  eval_step_fn = jax.jit(functools.partial(eval_step, model=model),
                         in_shardings=(state_shardings.params, batch_sharding),
                         out_shardings=sharding.replicated(mesh))
  return train_step_fn, eval_step_fn


def check_batch(config, mesh) -> None:
  t = config.train
  batch_devices = mesh.shape["data"] * mesh.shape["fsdp"]
  if t.batch_size % (batch_devices * t.microbatches):
    raise ValueError(f"train.batch_size={t.batch_size} must divide by the batch-parallel devices (data x fsdp = "
                     f"{batch_devices}) times train.microbatches={t.microbatches}")
  if t.batch_size % jax.process_count():
    raise ValueError(f"train.batch_size={t.batch_size} must divide by the process count {jax.process_count()}")
  eval_batch = t.eval_batch_size or t.batch_size
  if eval_batch % batch_devices:
    raise ValueError(f"train.eval_batch_size={eval_batch} must divide by data x fsdp = {batch_devices}")


def evaluate(eval_step_fn, params, eval_iter_factory, num_batches: int, mesh) -> dict:
  totals = None
  it = eval_iter_factory()
  for _ in range(num_batches):
    sums = eval_step_fn(params, sharding.global_batch(next(it), mesh))
    totals = sums if totals is None else jax.tree_util.tree_map(jnp.add, totals, sums)
  s = jax.device_get(totals)
  w = max(float(s["mlm"]["weight_sum"]), 1e-5)
  n = float(s["nsp"]["count"])
  return {"mlm_loss": float(s["mlm"]["loss_sum"]) / w, "mlm_accuracy": float(s["mlm"]["correct_sum"]) / w,
          "nsp_loss": float(s["nsp"]["loss_sum"]) / n, "nsp_accuracy": float(s["nsp"]["correct_sum"]) / n}


class NonFiniteLossError(FloatingPointError):
  pass


class _Preemption:
  """Turns SIGTERM into a request to save at the next step boundary and exit cleanly."""

  def __init__(self):
    self.requested = False
    try:
      signal.signal(signal.SIGTERM, self._handler)
    except ValueError:  # not the main thread (e.g. inside some test runners)
      pass

  def _handler(self, signum, frame):
    del signum, frame
    self.requested = True


def use_prng_impl(name: str) -> None:
  """Sets the PRNG behind init and dropout keys; threefry's bit generation is slow on accelerators."""
  choices = ("threefry2x32", "rbg", "unsafe_rbg")
  if name not in choices:
    raise ValueError(f"train.prng_impl={name!r} is not one of {choices}")
  jax.config.update("jax_default_prng_impl", name)


def train_and_evaluate(config, workdir: str) -> dict:
  """Runs (or resumes) pretraining as configured; returns the last train and eval metrics."""
  distributed.preflight(config, workdir, log=print if jax.process_index() == 0 else lambda _: None)
  use_prng_impl(config.train.prng_impl)
  writer = metrics.MetricsWriter(workdir)
  log = writer.log
  mesh = sharding.create_mesh({a: config.mesh[a] for a in sharding.MESH_AXES}, config.mesh.dcn_data)
  check_batch(config, mesh)
  rules = sharding.rules_from_config(config.mesh.logical_axis_rules)
  log(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind} in {jax.process_count()} process(es); "
      f"mesh {dict(mesh.shape)}")

  train_files, eval_files, _, tok = inputs.resolve(config, workdir, log)
  mcfg = model_config(config)
  model = BertForPreTraining(mcfg)
  tx, schedule = optim.make_optimizer(config.optim, config.train.steps)
  d = config.data
  with nn.logical_axis_rules(rules):
    state, state_shardings = create_train_state(model, tx, mesh, rules, config.train.seed, d.max_seq_length,
                                                d.max_predictions_per_seq)
    train_step_fn, eval_step_fn = make_step_functions(config, model, tx, schedule, mesh, state_shardings)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(state.params))
  log(f"model {config.model.size}: {n_params:,} params")

  train_iter = inputs.train_iterator(config, train_files, tok)
  ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"), config, log=log)
  state = ckpt.restore_or_init(state, state_shardings, train_iter)
  start_step = int(jax.device_get(state.step))
  eval_iter_factory = (lambda: inputs.eval_iterator(config, eval_files)) if eval_files else None

  flops_per_seq = metrics.flops_per_sequence(mcfg, d.max_seq_length, d.max_predictions_per_seq)
  peak = metrics.peak_flops_per_device(jax.devices()[0].device_kind, config.train.peak_flops)
  throughput = metrics.Throughput()
  preemption = _Preemption()
  last_train, last_eval = {}, {}
  pending = None  # (step, device metrics) checked one step late so the host never stalls the device
  t0 = time.time()

  def run_eval(step):
    nonlocal last_eval
    if eval_iter_factory is None:
      return
    with nn.logical_axis_rules(rules):
      last_eval = evaluate(eval_step_fn, state.params, eval_iter_factory, config.train.eval_batches, mesh)
    writer.write({"step": step, "split": "eval", **last_eval})
    log(f"eval  step {step}: mlm_loss {last_eval['mlm_loss']:.4f} mlm_acc {last_eval['mlm_accuracy']:.4f} "
        f"nsp_loss {last_eval['nsp_loss']:.4f} nsp_acc {last_eval['nsp_accuracy']:.4f}")

  def check_finite(step, m):
    loss = float(m["loss"])
    if not np.isfinite(loss):
      raise NonFiniteLossError(f"loss is {loss} at step {step}; stopping instead of training on garbage "
                               f"(try a lower optim.peak_learning_rate, more warmup, or float32 compute)")
    return loss

  if start_step == 0:
    run_eval(0)
  step = start_step
  with nn.logical_axis_rules(rules):
    while step < config.train.steps:
      if step == config.train.profile_start_step:
        jax.profiler.start_trace(os.path.join(workdir, "profile"))
      batch = sharding.global_batch(next(train_iter), mesh)
      state, step_metrics = train_step_fn(state, batch)
      if step == start_step:  # throughput excludes the first step's compilation
        jax.block_until_ready(step_metrics)
        throughput.update(step + 1, config.train.batch_size, d.max_seq_length)
      if pending is not None:
        check_finite(*pending)
      step += 1
      pending = (step, step_metrics)
      if config.train.profile_start_step >= 0 and step == config.train.profile_start_step + config.train.profile_steps:
        jax.profiler.stop_trace()
      if step % config.train.log_every == 0 or step == config.train.steps:
        m = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
        check_finite(step, m)
        rates = throughput.update(step, config.train.batch_size, d.max_seq_length)
        seq_s, tok_s, _ = rates if rates else (None, None, None)
        mfu = (flops_per_seq * seq_s / (peak * jax.device_count())) if (peak and seq_s) else None
        last_train = {"step": step, **m, "seq_per_sec": seq_s, "tokens_per_sec": tok_s, "mfu": mfu}
        writer.write(last_train)
        eta = (time.time() - t0) / max(step - start_step, 1) * (config.train.steps - step)
        log(f"train step {step}/{config.train.steps}: loss {m['loss']:.4f} mlm_acc {m['mlm_accuracy']:.4f} "
            f"nsp_acc {m['nsp_accuracy']:.4f} lr {m['learning_rate']:.2e} "
            f"{f'{seq_s:.1f}' if seq_s else '-'} seq/s eta {metrics.format_eta(eta)}")
      if step % config.train.eval_every == 0 and step != config.train.steps:
        run_eval(step)
      if preemption.requested:
        log(f"SIGTERM: saving a checkpoint at step {step} and exiting")
        ckpt.save(step, state, train_iter, force=True)
        ckpt.wait()
        writer.close()
        return {"train": last_train, "eval": last_eval, "preempted": True}
      ckpt.save(step, state, train_iter)
    if pending is not None:
      check_finite(*pending)
  run_eval(step)
  ckpt.save(step, state, train_iter, force=True)
  ckpt.wait()
  writer.close()
  return {"train": last_train, "eval": last_eval}


def main(config, flag_values):
  distributed.initialize_from_env()
  train_and_evaluate(config, flag_values.workdir)


def cli():
  from absl import flags
  from bert_jax import configlib

  def define_flags():
    flags.DEFINE_string("workdir", None, "where checkpoints, metrics.jsonl and TensorBoard files go", required=True)
  configlib.run_cli(main, define_flags, "config name in configs/ or a path")


if __name__ == "__main__":
  cli()
