"""Train-step benchmark: one JSON line with tokens/s, seq/s, step ms, MFU and peak memory.

  python bench/train_bench.py --config=mini --batch=32 --seq=128 --compare_torch
  python bench/train_bench.py --config=large --batch=64 --seq=512 --dtype=bfloat16 --attention=cudnn
  python bench/train_bench.py --config=mini --batch=32 --seq=128 --compare_keras   # KerasHub on JAX as the peer
  python bench/train_bench.py --config=electra_small --batch=8 --seq=128 --compare_torch  # ELECTRA: both models
  python bench/train_bench.py --config=distilbert_base --batch=8 --seq=128 --compare_torch  # teacher + student

Times `--steps` full optimizer steps (forward, backward, AdamW update) of the jitted train step on random
token batches after `--warmup` steps, on all local devices (batch over data parallelism; with a peer, one
device: peer_problems lists what a comparison refuses). With --compare_torch it then runs HF PyTorch
BertForPreTraining at the same model config, batch, sequence length, dropout and thread count in the same process
(fused AdamW as HF's Trainer builds it, the same clipping and weighted MLM + NSP loss, bf16 autocast and SDPA on
GPU, TF32 float32 matmuls on GPU as XLA's default), and reports our tokens/s over theirs, and each side's MFU from
our FLOP count. HF computes MLM logits at every position (it has no masked-position gather), which is part of
what is being compared.
For `--config=electra_*` the peer is HF's ElectraForMaskedLM generator + ElectraForPreTraining trained
jointly as objectives/electra.py does (shared embeddings, Gumbel samples, MLM + 50 x RTD).
For `--config=distilbert_*` ours times the distillation step (frozen BERT teacher of the student's size, random
weights) and the peer is HF's BertForMaskedLM teacher + DistilBertForMaskedLM student with the same loss.
"""

import json
import os
import platform
import resource
import sys
import time

from absl import app, flags

FLAGS = flags.FLAGS


def define_flags():
  """The command line (defined here, not at import, so that tests can load this module)."""
  flags.DEFINE_string("config", "mini", "config name in configs/ (model size and optimizer)")
  flags.DEFINE_integer("batch", 32, "global batch, sequences")
  flags.DEFINE_integer("seq", 128, "sequence length")
  flags.DEFINE_integer("predictions", 0, "masked positions per sequence (0: 15% of seq, at least 20)")
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "compute dtype (params stay fp32)")
  flags.DEFINE_enum("attention", "auto", ["auto", "xla", "cudnn", "splash", "pallas"], "attention implementation "
                    "(pallas: our kernel with the attention dropout inside)")
  flags.DEFINE_bool("dropout", True, "False turns all dropout off (train.deterministic)")
  flags.DEFINE_float("attention_dropout", 0.1, "attention-probability dropout (0 lets the fused/XLA kernel run)")
  flags.DEFINE_bool("mlm_all_positions", False, "MLM logits at every position, then gather (HF's way)")
  flags.DEFINE_bool("fused_qkv", False, "one fused query/key/value projection")
  flags.DEFINE_bool("fp8", False, "the layers' projections in FP8 with delayed scaling (model.fp8)")
  flags.DEFINE_enum("scan_layers", "config", ["config", "true", "false"], "nn.scan over layers")
  flags.DEFINE_enum("remat", "config", ["config", "none", "full", "dots", "dots_no_batch"], "remat policy")
  flags.DEFINE_string("opt_state_dtype", "", "AdamW first-moment dtype, e.g. bfloat16 (empty: the config's)")
  flags.DEFINE_enum("prng_impl", "config", ["config", "threefry2x32", "rbg", "unsafe_rbg"],
                    "dropout PRNG (config: the config's, auto by platform)")
  flags.DEFINE_string("profile_dir", "", "after timing, trace 3 more steps here (perfetto JSON included)")
  flags.DEFINE_integer("steps", 20, "timed steps")
  flags.DEFINE_integer("warmup", 3, "untimed steps (compilation included)")
  flags.DEFINE_bool("compare_torch", False, "also time HF PyTorch BertForPreTraining in this run")
  flags.DEFINE_bool("torch_compile", False, "with --compare_torch: run the HF model under torch.compile")
  flags.DEFINE_bool("compare_keras", False, "also time KerasHub BertMaskedLM on Keras' JAX backend in this run "
                    "(bench/keras_peer.py)")
  flags.DEFINE_float("peak_flops", 0.0, "peak FLOP/s per device for MFU (0: look up the device kind)")


# The HF PyTorch peer for each objective, and the model family it builds (a peer of another family would be a
# different model: BertForPreTraining built from an ALBERT config has no factorized or shared layers).
TORCH_PEERS = {"mlm_nsp": "bert", "electra": "electra", "distill": "distilbert"}


def peer_problems(config, device_count: int, compare_torch: bool, torch_compile: bool, compare_keras: bool) -> list:
  """Why a peer comparison of this run would not be like for like (empty: it would be). The peers run on one
  device, with AdamW (float32 moments), one microbatch, and (KerasHub) one dropout rate for hidden and attention
  dropout."""
  problems = []
  if not (compare_torch or compare_keras):
    return ["--torch_compile needs --compare_torch"] if torch_compile else []
  if device_count > 1:
    problems.append(f"ours would run data-parallel on {device_count} devices and the peers on one; "
                    f"expose one (CUDA_VISIBLE_DEVICES=0)")
  if config.optim.name != "adamw":
    problems.append(f"optim.name is {config.optim.name!r}; the peers train with AdamW")
  if config.optim.state_dtype not in ("", "float32"):
    problems.append(f"optim.state_dtype is {config.optim.state_dtype!r}; the peers keep AdamW's moments in float32")
  if config.train.microbatches != 1:
    problems.append(f"train.microbatches is {config.train.microbatches}; the peers take the batch in one pass")
  if compare_torch:
    family = TORCH_PEERS.get(config.train.objective)
    if family is None:
      problems.append(f"no HF PyTorch peer for objective {config.train.objective!r} (peers: {sorted(TORCH_PEERS)})")
    elif config.model.family != family:
      problems.append(f"the HF peer for objective {config.train.objective!r} is a {family} model; this config's "
                      f"model.family is {config.model.family!r}")
    if config.train.objective == "distill" and config.distill.kl_positions != "all":
      problems.append(f"distill.kl_positions is {config.distill.kl_positions!r}; the HF peer's KL covers every real "
                      f"token (the paper's code)")
    if torch_compile and config.train.objective != "mlm_nsp":
      problems.append(f"--torch_compile is implemented for the BertForPreTraining peer only, not for objective "
                      f"{config.train.objective!r}")
  elif torch_compile:
    problems.append("--torch_compile needs --compare_torch")
  if compare_keras:
    import keras_peer
    problems += keras_peer.problems(config)
  return problems


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
  model_config, _ = pretrain.build(config, load_config=_untrained_teacher(config))
  objective = objectives.make_objective(config.train.objective, model_config, FLAGS.seq, predictions,
                                       objectives.objective_settings(config, config.train.objective),
                                       _untrained_teacher(config))
  mesh = sharding.create_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  rules = sharding.rules_from_config(config.mesh.logical_axis_rules)
  tx, schedule = optim.make_optimizer(config.optim, optim.schedule_steps(config.optim, config.train.steps),
                                      objective.param_rules())
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
    jax.block_until_ready((state, m))
    warmup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(FLAGS.steps):
      state, m = step_fn(state, batch)
    jax.block_until_ready((state, m))  # the last update too, not only its metrics
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
          **utilization(flops, seq_s, peak, jax.device_count()), "flops_per_sequence": flops,
          "peak_flops_per_device": peak, "compile_s": compile_s, "warmup_s": warmup_s,
          "peak_memory_gib": mem / 2**30, "memory_kind": mem_kind, "loss": float(m["loss"])}


def utilization(flops_per_sequence: float, seq_per_sec: float, peak_per_device, devices: int) -> dict:
  """MFU and model TFLOP/s from one count of the useful work (the objective's flops_per_sequence: MLM at the
  masked positions), for ours and each peer alike: a peer that computes more (HF's MLM logits at every position)
  gets no credit for it."""
  model_flops = flops_per_sequence * seq_per_sec
  return {"mfu": model_flops / (peak_per_device * devices) if peak_per_device else None,
          "model_tflops_per_sec": model_flops / 1e12}


def run_record(argv) -> dict:
  """What RESULTS.md quotes besides the figures: the command, the code's commit (git, or $BENCH_COMMIT where the
  copy has no .git), Python and the packages' versions."""
  import importlib.metadata
  import subprocess
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    commit = subprocess.run(["git", "-C", here, "describe", "--always", "--dirty"], capture_output=True, text=True,
                            timeout=10, check=True).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    commit = os.environ.get("BENCH_COMMIT") or None
  versions = {"python": platform.python_version()}
  for package in ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "flax", "optax", "numpy", "torch",
                  "transformers", "keras", "keras-hub"):
    try:
      versions[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      pass
  env = {k: v for k, v in os.environ.items() if k.startswith(("XLA_", "JAX_", "TF_GPU", "KERAS_BACKEND", "CUDA_VISIBLE"))}
  return {"command": " ".join(["python", os.path.relpath(argv[0], os.path.dirname(here))] + list(argv[1:])),
          "env": env, "commit": commit, "versions": versions, "platform": platform.platform()}


def _untrained_teacher(config):
  """A distillation teacher's encoder config without reading its weights (random ones time the same): BERT of the
  student's size (distilbert_base: BERT-base, 12 layers), vocabulary and positions."""
  from bert_jax.models import registry
  model = {"family": "bert", "size": config.model.size, "vocab_size": config.model.vocab_size,
           "max_position_embeddings": config.model.max_position_embeddings}
  return lambda path: registry.encoder_config(model)


def _torch_batch(predictions, vocab, device):
  """_batch's arrays as torch tensors on device (int64 ids, as HF's embeddings take them)."""
  import numpy as np
  import torch
  return {k: torch.from_numpy(v.astype(np.int64) if v.dtype == np.int32 else v).to(device)
          for k, v in _batch(FLAGS.batch, FLAGS.seq, predictions, vocab).items()}


def _time_torch_steps(step, **extra):
  """FLAGS.warmup untimed calls of step(), then the mean of FLAGS.steps timed ones (synchronised on a GPU)."""
  import torch
  sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
  t0 = time.perf_counter()
  for _ in range(FLAGS.warmup):
    step()
  sync()
  warmup_s = time.perf_counter() - t0  # torch.compile's compilation included
  from torch._dynamo.utils import counters
  graphs = counters["stats"]["unique_graphs"]
  t0 = time.perf_counter()
  for _ in range(FLAGS.steps):
    loss = step()
  sync()
  dt = (time.perf_counter() - t0) / FLAGS.steps
  extra["graphs_compiled_while_timed"] = counters["stats"]["unique_graphs"] - graphs  # 0: compile time excluded
  return {"step_ms": dt * 1e3, "seq_per_sec": FLAGS.batch / dt, "tokens_per_sec": FLAGS.batch * FLAGS.seq / dt,
          "warmup_s": warmup_s, "threads": torch.get_num_threads(), "optimizer": "torch.optim.AdamW(fused=True)",
          "loss": float(loss.detach()), **extra}


def _torch_adamw(params, o):
  """AdamW as HF's Trainer builds it by default with torch >= 2.8 (optim="adamw_torch_fused": fused=True), with
  the config's rate, betas, epsilon and weight decay."""
  import torch
  return torch.optim.AdamW(params, lr=o.peak_learning_rate, betas=(o.b1, o.b2), eps=o.eps, weight_decay=o.weight_decay,
                           fused=True)


def bench_torch_distill(config, predictions):
  """HF PyTorch distillation as HF's distiller.py trains DistilBERT: BertForMaskedLM teacher (eval, no_grad, in the
  objective's teacher dtype) and DistilBertForMaskedLM student; loss = alpha_ce T^2 KL(teacher || student) over real
  tokens + alpha_mlm MLM at the masked positions + alpha_cos (1 - cos) of the last hidden states; AdamW on the student."""
  import torch
  import transformers
  from bert_jax.convert import hf_dir
  from bert_jax.objectives import registry as objectives
  from bert_jax.trainers import pretrain
  model_config, _ = pretrain.build(config, load_config=_untrained_teacher(config))
  objective = objectives.make_objective("distill", model_config, FLAGS.seq, predictions,
                                        objectives.objective_settings(config, "distill"), _untrained_teacher(config))
  s = objective.settings
  device = "cuda" if torch.cuda.is_available() else "cpu"
  teacher = transformers.BertForMaskedLM(transformers.BertConfig(
      **hf_dir.hf_config_dict(objective.teacher_config, ("encoder", "mlm")), attn_implementation="sdpa")).to(device).eval()
  student = transformers.DistilBertForMaskedLM(transformers.DistilBertConfig(
      **hf_dir.hf_config_dict(model_config, ("encoder", "mlm")), attn_implementation="sdpa")).to(device).train()
  o = config.optim
  opt = _torch_adamw(student.parameters(), o)
  b = _torch_batch(predictions, model_config.vocab_size, device)
  b["segment_ids"] = torch.zeros_like(b["segment_ids"])
  autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=FLAGS.dtype == "bfloat16")
  teacher_autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=s.teacher_dtype == "bfloat16")
  real = b["input_mask"].bool()

  def step():
    with torch.no_grad(), teacher_autocast:
      t = teacher(input_ids=b["input_ids"], attention_mask=b["input_mask"], output_hidden_states=True)
    with autocast:
      out = student(input_ids=b["input_ids"], attention_mask=b["input_mask"], output_hidden_states=True)
      s_logits, t_logits = out.logits.float()[real], t.logits.float()[real]
      kl = torch.nn.functional.kl_div(torch.log_softmax(s_logits / s.temperature, -1),
                                      torch.softmax(t_logits / s.temperature, -1), reduction="batchmean")
      masked = torch.gather(out.logits, 1, b["masked_lm_positions"][..., None].expand(-1, -1, out.logits.shape[-1]))
      xent = torch.nn.functional.cross_entropy(masked.float().flatten(0, 1), b["masked_lm_ids"].flatten(),
                                               reduction="none")
      w = b["masked_lm_weights"].flatten()
      h_s, h_t = out.hidden_states[-1].float()[real], t.hidden_states[-1].float()[real]
      cos = 1 - torch.nn.functional.cosine_similarity(h_s, h_t, dim=-1).mean()
      loss = s.alpha_ce * s.temperature ** 2 * kl + s.alpha_mlm * (xent * w).sum() / w.sum() + s.alpha_cos * cos
    loss.backward()
    torch.nn.utils.clip_grad_norm_(student.parameters(), o.clip_norm)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss

  return _time_torch_steps(step, peer="HF BertForMaskedLM teacher + DistilBertForMaskedLM student")


def bench_torch(config, predictions):
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
  forward = torch.compile(model) if FLAGS.torch_compile else model
  o = config.optim
  opt = _torch_adamw(model.parameters(), o)
  b = _torch_batch(predictions, model_config.vocab_size, device)
  autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=FLAGS.dtype == "bfloat16")

  def step():
    with autocast:
      out = forward(input_ids=b["input_ids"], attention_mask=b["input_mask"], token_type_ids=b["segment_ids"])
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

  return _time_torch_steps(step, torch_compile=FLAGS.torch_compile)


def bench_torch_electra(config, predictions):
  """HF PyTorch ELECTRA as our objective trains it: ElectraForMaskedLM generator sharing the discriminator's
  embeddings (its decoder tied to them) with its head run at the masked positions only, Gumbel samples there,
  ElectraForPreTraining on the corrupted ids, loss = MLM + rtd_weight x RTD, one AdamW over both models."""
  import torch
  import transformers
  from bert_jax.convert import hf_dir
  from bert_jax.objectives import registry as objectives
  from bert_jax.trainers import pretrain
  model_config, _ = pretrain.build(config)
  objective = objectives.make_objective("electra", model_config, FLAGS.seq, predictions,
                                        objectives.objective_settings(config, "electra"))
  device = "cuda" if torch.cuda.is_available() else "cpu"
  hf_cfg = lambda c, sections: transformers.ElectraConfig(**hf_dir.hf_config_dict(c, sections),
                                                          attn_implementation="sdpa")
  disc = transformers.ElectraForPreTraining(hf_cfg(model_config, ("encoder", "rtd"))).to(device).train()
  gen = transformers.ElectraForMaskedLM(hf_cfg(objective.generator_config, ("encoder", "mlm"))).to(device).train()
  gen.electra.embeddings = disc.electra.embeddings
  gen.generator_lm_head.weight = disc.electra.embeddings.word_embeddings.weight
  params = list({id(p): p for p in list(disc.parameters()) + list(gen.parameters())}.values())
  o = config.optim
  opt = _torch_adamw(params, o)
  b = _torch_batch(predictions, model_config.vocab_size, device)
  positions = b["masked_lm_positions"]
  autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=FLAGS.dtype == "bfloat16")

  def step():
    with autocast:
      # HF's modules, with the hidden states gathered at the masked positions before the head, as ours does
      # (ElectraForMaskedLM.forward would compute the V-wide logits at every position).
      h = gen.electra(input_ids=b["input_ids"], attention_mask=b["input_mask"], token_type_ids=b["segment_ids"])[0]
      h = torch.gather(h, 1, positions[..., None].expand(-1, -1, h.shape[-1]))
      logits = gen.generator_lm_head(gen.generator_predictions(h)).float()
      xent = torch.nn.functional.cross_entropy(logits.flatten(0, 1), b["masked_lm_ids"].flatten(), reduction="none")
      w = b["masked_lm_weights"].flatten()
      with torch.no_grad():
        gumbel = -torch.log(-torch.log(torch.rand_like(logits).clamp_min(1e-9)).clamp_min(1e-9))
        sampled = (logits + gumbel).argmax(-1)
        original = b["input_ids"].scatter(1, positions, b["masked_lm_ids"])
        corrupted = original.scatter(1, positions, sampled)
        labels = (corrupted != original).float()
      rtd = disc(input_ids=corrupted, attention_mask=b["input_mask"], token_type_ids=b["segment_ids"]).logits.float()
      mask = b["input_mask"].float()
      rtd_loss = (torch.nn.functional.binary_cross_entropy_with_logits(rtd, labels, reduction="none") * mask).sum() / mask.sum()
      loss = (xent * w).sum() / w.sum() + objective.settings.rtd_weight * rtd_loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, o.clip_norm)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss

  return _time_torch_steps(step, peer="HF ElectraForMaskedLM + ElectraForPreTraining")


def main(argv):
  del argv  # the flags' values; the command line as given is sys.argv
  import jax
  from bert_jax.core import configlib
  overrides = {"model.dtype": FLAGS.dtype, "model.attention_impl": FLAGS.attention,
               "train.batch_size": FLAGS.batch, "model.max_position_embeddings": max(512, FLAGS.seq),
               "train.deterministic": not FLAGS.dropout, "model.attention_dropout": FLAGS.attention_dropout,
               "model.mlm_all_positions": FLAGS.mlm_all_positions, "model.fused_qkv": FLAGS.fused_qkv,
               "model.fp8": FLAGS.fp8}
  if FLAGS.scan_layers != "config":
    overrides["model.scan_layers"] = FLAGS.scan_layers == "true"
  if FLAGS.remat != "config":
    overrides["model.remat_policy"] = FLAGS.remat
  from bert_jax.core import sharding
  from bert_jax.trainers import pretrain
  if FLAGS.prng_impl != "config":
    overrides["train.prng_impl"] = FLAGS.prng_impl
  if FLAGS.opt_state_dtype:
    overrides["optim.state_dtype"] = FLAGS.opt_state_dtype
  config = configlib.load(FLAGS.config, overrides)
  if "distill" in config:  # the teacher computes in the benchmarked dtype too (the peer's autocast follows it)
    config.distill.teacher_dtype = FLAGS.dtype
  # The train CLI's platform choices for fields left at auto (scan, remat, PRNG), printed to stderr.
  config = pretrain.with_platform_defaults(config, sharding.create_mesh({"data": -1, "fsdp": 1, "tensor": 1}),
                                           lambda line: print(line, file=sys.stderr))
  pretrain.use_prng_impl(config.train.prng_impl)
  problems = peer_problems(config, jax.device_count(), FLAGS.compare_torch, FLAGS.torch_compile, FLAGS.compare_keras)
  if problems:
    raise app.UsageError("not a like-for-like comparison: " + "; ".join(problems))
  predictions = FLAGS.predictions or max(20, round(FLAGS.seq * 0.15))
  result = {"bench": "train_step", "config": FLAGS.config, "batch": FLAGS.batch, "seq": FLAGS.seq,
            "predictions": predictions, "dtype": FLAGS.dtype, "attention": FLAGS.attention,
            "attention_dropout": config.model.attention_dropout, "dropout": FLAGS.dropout,
            "mlm_all_positions": FLAGS.mlm_all_positions, "fused_qkv": FLAGS.fused_qkv, "fp8": FLAGS.fp8,
            "scan_layers": config.model.scan_layers,
            "remat": config.model.remat_policy, "prng_impl": config.train.prng_impl, "opt_state_dtype": config.optim.state_dtype or "param",
            "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
            "host": f"{platform.machine()} {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d"),
            **run_record(sys.argv)}
  if FLAGS.compare_torch:
    # Torch runs first and hands its cached GPU memory back; JAX's allocator keeps what it takes.
    import torch
    torch.set_num_threads(os.cpu_count())  # XLA's CPU backend uses every core too
    if torch.cuda.is_available():  # float32 matmuls in TF32, as XLA's default precision runs them on a GPU
      torch.set_float32_matmul_precision("high")
    peer = {"electra": bench_torch_electra, "distill": bench_torch_distill}.get(config.train.objective, bench_torch)
    result["torch"] = peer(config, predictions)
    result["torch"]["float32_matmul_precision"] = torch.get_float32_matmul_precision()
    if torch.cuda.is_available():
      result["torch"]["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
      result["torch"]["device"] = torch.cuda.get_device_name()
      import gc
      gc.collect()  # the peer's model and optimizer state, if a reference cycle holds them, before JAX allocates
      torch.cuda.empty_cache()
      result["torch"]["reserved_after_gib"] = torch.cuda.memory_reserved() / 2**30  # what JAX's run did not have
  result["jax"] = bench_jax(config, predictions)
  if FLAGS.compare_keras:
    import keras_peer
    batch = _batch(FLAGS.batch, FLAGS.seq, predictions, config.model.vocab_size)
    result["keras"] = keras_peer.bench_keras(config, batch, FLAGS.steps, FLAGS.warmup)
    result["speedup_vs_keras"] = result["jax"]["tokens_per_sec"] / result["keras"]["tokens_per_sec"]
  if FLAGS.compare_torch:
    result["speedup_vs_torch"] = result["jax"]["tokens_per_sec"] / result["torch"]["tokens_per_sec"]
  for peer in ("torch", "keras"):  # one device each (peer_problems); the same FLOP count and peak as ours
    if peer in result:
      result[peer].update(utilization(result["jax"]["flops_per_sequence"], result[peer]["seq_per_sec"],
                                      result["jax"]["peak_flops_per_device"], 1))
  print(json.dumps(result), flush=True)


if __name__ == "__main__":
  define_flags()
  sys.exit(app.run(main))
