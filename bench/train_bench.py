"""Train-step benchmark: one JSON line with tokens/s, seq/s, step ms, MFU and peak memory.

  python bench/train_bench.py --config=mini --batch=32 --seq=128 --compare_torch
  python bench/train_bench.py --config=large --batch=64 --seq=512 --dtype=bfloat16 --attention=cudnn

Times `--steps` full optimizer steps (forward, backward, AdamW update) of the jitted train step on random
token batches after `--warmup` steps, on all local devices (batch over data parallelism). With
--compare_torch it then runs HF PyTorch BertForPreTraining at the same model config, batch, sequence length,
dropout and thread count in the same process (AdamW, the same weighted MLM + NSP loss, bf16 autocast and
SDPA on GPU), and reports our tokens/s over theirs. HF computes MLM logits at every position (it has no
masked-position gather), which is part of what is being compared.
"""

import json
import os
import platform
import resource
import sys
import time

from absl import app, flags

flags.DEFINE_string("config", "mini", "config name in configs/ (model size and optimizer)")
flags.DEFINE_integer("batch", 32, "global batch, sequences")
flags.DEFINE_integer("seq", 128, "sequence length")
flags.DEFINE_integer("predictions", 0, "masked positions per sequence (0: 15% of seq, at least 20)")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "compute dtype (params stay fp32)")
flags.DEFINE_enum("attention", "auto", ["auto", "xla", "cudnn", "splash"], "attention implementation")
flags.DEFINE_bool("dropout", True, "False turns all dropout off (train.deterministic)")
flags.DEFINE_float("attention_dropout", 0.1, "attention-probability dropout (0 lets the fused/XLA kernel run)")
flags.DEFINE_bool("mlm_all_positions", False, "MLM logits at every position, then gather (HF's way)")
flags.DEFINE_bool("fused_qkv", False, "one fused query/key/value projection")
flags.DEFINE_enum("scan_layers", "config", ["config", "true", "false"], "nn.scan over layers")
flags.DEFINE_enum("remat", "config", ["config", "none", "full", "dots", "dots_no_batch"], "remat policy")
flags.DEFINE_string("opt_state_dtype", "", "AdamW first-moment dtype, e.g. bfloat16 (empty: the config's)")
flags.DEFINE_enum("prng_impl", "threefry2x32", ["threefry2x32", "rbg", "unsafe_rbg"], "dropout PRNG")
flags.DEFINE_string("profile_dir", "", "after timing, trace 3 more steps here (perfetto JSON included)")
flags.DEFINE_integer("steps", 20, "timed steps")
flags.DEFINE_integer("warmup", 3, "untimed steps (compilation included)")
flags.DEFINE_bool("compare_torch", False, "also time HF PyTorch BertForPreTraining in this run")
flags.DEFINE_float("peak_flops", 0.0, "peak FLOP/s per device for MFU (0: look up the device kind)")
FLAGS = flags.FLAGS


def _batch(batch, seq, predictions, vocab, seed=0):
  import numpy as np
  rng = np.random.default_rng(seed)
  return {"input_ids": rng.integers(5, vocab, (batch, seq)).astype(np.int32),
          "input_mask": np.ones((batch, seq), np.int32),
          "segment_ids": (np.arange(seq)[None] >= seq // 2).astype(np.int32).repeat(batch, 0),
          "masked_lm_positions": np.sort(rng.integers(1, seq - 1, (batch, predictions)), 1).astype(np.int32),
          "masked_lm_ids": rng.integers(5, vocab, (batch, predictions)).astype(np.int32),
          "masked_lm_weights": np.ones((batch, predictions), np.float32),
          "next_sentence_labels": rng.integers(0, 2, batch).astype(np.int32)}


def _peak_memory_bytes():
  import jax
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return stats["peak_bytes_in_use"], "device"
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "host_rss"


def bench_jax(config, predictions):
  import flax.linen as nn
  import jax
  from bert_jax.core import metrics, optim, sharding
  from bert_jax.core.train_state import create_train_state
  from bert_jax.objectives import registry as objectives
  from bert_jax.trainers import pretrain
  model_config, _ = pretrain.build(config)
  objective = objectives.make_objective(config.train.objective, model_config, FLAGS.seq, predictions)
  mesh = sharding.create_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  rules = sharding.rules_from_config(config.mesh.logical_axis_rules)
  tx, schedule = optim.make_optimizer(config.optim, config.train.steps)
  with nn.logical_axis_rules(rules):
    state, shardings = create_train_state(objective.init_params, tx, mesh, rules, 0)
    step_fn, _ = pretrain.make_step_functions(config, objective, tx, schedule, mesh, shardings)
    batch = sharding.global_batch(_batch(FLAGS.batch, FLAGS.seq, predictions, model_config.vocab_size), mesh)
    t0 = time.perf_counter()
    step_fn = step_fn.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(FLAGS.warmup):
      state, m = step_fn(state, batch)
    jax.block_until_ready(m)
    warmup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(FLAGS.steps):
      state, m = step_fn(state, batch)
    jax.block_until_ready(m)
    dt = (time.perf_counter() - t0) / FLAGS.steps
    if FLAGS.profile_dir:
      with jax.profiler.trace(FLAGS.profile_dir, create_perfetto_trace=True):
        for _ in range(3):
          state, m = step_fn(state, batch)
        jax.block_until_ready(m)
  seq_s = FLAGS.batch / dt
  flops = objective.flops_per_sequence()
  peak = metrics.peak_flops_per_device(jax.devices()[0].device_kind, FLAGS.peak_flops)
  mem, mem_kind = _peak_memory_bytes()
  return {"step_ms": dt * 1e3, "seq_per_sec": seq_s, "tokens_per_sec": seq_s * FLAGS.seq,
          "mfu": flops * seq_s / (peak * jax.device_count()) if peak else None,
          "model_tflops_per_sec": flops * seq_s / 1e12, "compile_s": compile_s, "warmup_s": warmup_s,
          "peak_memory_gib": mem / 2**30, "memory_kind": mem_kind, "loss": float(m["loss"])}


def bench_torch(config, predictions):
  import numpy as np
  import torch
  import transformers
  from bert_jax.convert import hf_dir
  from bert_jax.trainers import pretrain
  model_config, _ = pretrain.build(config)
  on_gpu = torch.cuda.is_available()
  device = "cuda" if on_gpu else "cpu"
  hf_cfg = transformers.BertConfig(**hf_dir.hf_config_dict(model_config, ("encoder", "pooler", "mlm", "nsp")),
                                   attn_implementation="sdpa")
  model = transformers.BertForPreTraining(hf_cfg).to(device).train()
  o = config.optim
  opt = torch.optim.AdamW(model.parameters(), lr=o.peak_learning_rate, betas=(o.b1, o.b2), eps=o.eps,
                          weight_decay=o.weight_decay)
  b = {k: torch.from_numpy(v.astype(np.int64) if v.dtype == np.int32 else v).to(device)
       for k, v in _batch(FLAGS.batch, FLAGS.seq, predictions, model_config.vocab_size).items()}
  autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=FLAGS.dtype == "bfloat16")

  def step():
    with autocast:
      out = model(input_ids=b["input_ids"], attention_mask=b["input_mask"], token_type_ids=b["segment_ids"])
      logits = torch.gather(out.prediction_logits, 1,
                            b["masked_lm_positions"][..., None].expand(-1, -1, out.prediction_logits.shape[-1]))
      xent = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), b["masked_lm_ids"].flatten(),
                                               reduction="none")
      w = b["masked_lm_weights"].flatten()
      loss = (xent * w).sum() / w.sum() + torch.nn.functional.cross_entropy(
          out.seq_relationship_logits.float(), b["next_sentence_labels"])
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), o.clip_norm)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss

  for _ in range(FLAGS.warmup):
    step()
  if on_gpu:
    torch.cuda.synchronize()
  t0 = time.perf_counter()
  for _ in range(FLAGS.steps):
    loss = step()
  if on_gpu:
    torch.cuda.synchronize()
  dt = (time.perf_counter() - t0) / FLAGS.steps
  return {"step_ms": dt * 1e3, "seq_per_sec": FLAGS.batch / dt, "tokens_per_sec": FLAGS.batch * FLAGS.seq / dt,
          "threads": torch.get_num_threads(), "loss": float(loss.detach())}


def main(argv):
  del argv
  import jax
  from bert_jax.core import configlib
  overrides = {"model.dtype": FLAGS.dtype, "model.attention_impl": FLAGS.attention,
               "train.batch_size": FLAGS.batch, "model.max_position_embeddings": max(512, FLAGS.seq),
               "train.deterministic": not FLAGS.dropout, "model.attention_dropout": FLAGS.attention_dropout,
               "model.mlm_all_positions": FLAGS.mlm_all_positions, "model.fused_qkv": FLAGS.fused_qkv}
  if FLAGS.scan_layers != "config":
    overrides["model.scan_layers"] = FLAGS.scan_layers == "true"
  if FLAGS.remat != "config":
    overrides["model.remat_policy"] = FLAGS.remat
  from bert_jax.trainers import pretrain
  pretrain.use_prng_impl(FLAGS.prng_impl)
  if FLAGS.opt_state_dtype:
    overrides["optim.state_dtype"] = FLAGS.opt_state_dtype
  config = configlib.load(FLAGS.config, overrides)
  predictions = FLAGS.predictions or max(20, round(FLAGS.seq * 0.15))
  result = {"bench": "train_step", "config": FLAGS.config, "batch": FLAGS.batch, "seq": FLAGS.seq,
            "predictions": predictions, "dtype": FLAGS.dtype, "attention": FLAGS.attention,
            "attention_dropout": config.model.attention_dropout, "dropout": FLAGS.dropout,
            "mlm_all_positions": FLAGS.mlm_all_positions, "fused_qkv": FLAGS.fused_qkv, "scan_layers": config.model.scan_layers,
            "remat": config.model.remat_policy, "prng_impl": FLAGS.prng_impl, "opt_state_dtype": config.optim.state_dtype or "param",
            "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
            "host": f"{platform.machine()} {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d")}
  if FLAGS.compare_torch:
    # Torch runs first and hands its cached GPU memory back; JAX's allocator keeps what it takes.
    import torch
    torch.set_num_threads(os.cpu_count())  # XLA's CPU backend uses every core too
    result["torch"] = bench_torch(config, predictions)
    if torch.cuda.is_available():
      result["torch"]["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
      torch.cuda.empty_cache()
  result["jax"] = bench_jax(config, predictions)
  if FLAGS.compare_torch:
    result["speedup_vs_torch"] = result["jax"]["tokens_per_sec"] / result["torch"]["tokens_per_sec"]
  print(json.dumps(result), flush=True)


if __name__ == "__main__":
  sys.exit(app.run(main))
