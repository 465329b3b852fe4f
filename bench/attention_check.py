"""Checks that the attention implementations agree on a padded batch: forward logits and gradients.

  python bench/attention_check.py --config=large --dtype=bfloat16 --batch=8 --seq=512

Runs the model with attention_impl=xla and with =cudnn (lengths path for right-padded rows, dense-mask
path for packed rows), same params, and prints one JSON line of the largest differences. On a machine
without a GPU, cudnn falls back to xla (logged) and the differences are zero.
"""

import json
import sys

from absl import app, flags

flags.DEFINE_string("config", "base", "config name in configs/")
flags.DEFINE_integer("batch", 8, "sequences")
flags.DEFINE_integer("seq", 512, "sequence length")
flags.DEFINE_enum("dtype", "bfloat16", ["float32", "bfloat16"], "compute dtype")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  import dataclasses
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  from bert_jax.core import configlib
  from bert_jax.models.pretraining import EncoderWithHeads
  from bert_jax.trainers import pretrain
  config = configlib.load(FLAGS.config, {"model.dtype": FLAGS.dtype, "train.deterministic": True})
  base, objective = pretrain.build(config)
  heads = objective.model.heads
  rng = np.random.default_rng(0)
  b, t = FLAGS.batch, FLAGS.seq
  lengths = rng.integers(t // 4, t + 1, b)
  mask = (np.arange(t)[None] < lengths[:, None]).astype(np.int32)
  ids = rng.integers(5, base.vocab_size, (b, t)).astype(np.int32) * mask
  seg = (np.arange(t)[None] >= (lengths[:, None] // 2)).astype(np.int32) * mask
  packed = (np.arange(t)[None] >= t // 2).astype(np.int32) + 1  # two instances per row
  positions = np.sort(rng.integers(1, t // 4, (b, 20)), 1).astype(np.int32)
  models = {impl: EncoderWithHeads(dataclasses.replace(base, attention_impl=impl), heads) for impl in ("xla", "cudnn")}
  params = jax.jit(models["xla"].init)(jax.random.key(0), ids, mask, seg, positions)["params"]

  def loss_and_grad(impl, segments):
    def loss(p):
      out = models[impl].apply({"params": p}, ids, mask, seg, positions, attention_segments_BxT=segments)
      return jnp.mean(out["mlm_logits"].astype(jnp.float32) ** 2), out
    (value, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return out, grads

  result = {"check": "attention_xla_vs_cudnn", "config": FLAGS.config, "dtype": FLAGS.dtype, "batch": b, "seq": t,
            "backend": jax.default_backend(), "device": jax.devices()[0].device_kind}
  for name, segments in (("padded", None), ("packed", packed * mask)):
    out_x, grad_x = loss_and_grad("xla", segments)
    out_c, grad_c = loss_and_grad("cudnn", segments)
    logits_x = np.asarray(out_x["mlm_logits"], np.float32)
    scale = float(np.abs(logits_x).max())
    result[f"{name}_logits_max_abs_diff"] = float(np.abs(logits_x - np.asarray(out_c["mlm_logits"], np.float32)).max())
    result[f"{name}_logits_max_abs"] = scale
    diff = jax.tree_util.tree_map(lambda a, c: (a - c).astype(jnp.float32), grad_x, grad_c)
    result[f"{name}_grad_rel_norm_diff"] = float(optax.global_norm(diff) / optax.global_norm(grad_x))
    # Per leaf; the key bias is left out: its true gradient is 0 (softmax ignores a per-query shift),
    # so a relative difference there measures rounding noise only.
    per_leaf = {jax.tree_util.keystr(path): float(jnp.linalg.norm(d) / (jnp.linalg.norm(a.astype(jnp.float32)) + 1e-12))
                for (path, d), a in zip(jax.tree_util.tree_leaves_with_path(diff), jax.tree_util.tree_leaves(grad_x))
                if "'key'" not in jax.tree_util.keystr(path) or "kernel" in jax.tree_util.keystr(path)}
    worst = max(per_leaf, key=per_leaf.get)
    result[f"{name}_grad_worst_leaf"] = [worst, per_leaf[worst]]
  print(json.dumps(result), flush=True)


if __name__ == "__main__":
  sys.exit(app.run(main))
