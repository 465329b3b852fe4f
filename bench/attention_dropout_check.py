"""Is cuDNN's fused attention with dropout usable for training? One JSON line of checks (#16, item 2).

  python bench/attention_dropout_check.py --impl=cudnn      # on a GPU: the fused kernel
  python bench/attention_dropout_check.py --impl=pallas     # our Pallas kernel (interpret mode off a GPU)
  python bench/attention_dropout_check.py --impl=explicit   # anywhere: our explicit path (checks the checks)
  python bench/attention_dropout_check.py --impl=fixed_key  # anywhere: one mask for every call (must fail)

JAX reaches cuDNN's dropout only through its private wrapper (jax._src.cudnn.fused_attention_stablehlo),
whose dropout seed is a static Python int written into the compiled kernel's config. So the first question
is whether one jitted function draws a new mask on every call (a training step needs that) or replays one.

With V = the identity (head dim = S keys), the attention output is the dropped-out probability matrix itself,
so the mask can be read directly:
  - masks_differ_between_calls: two calls of one compiled function, same inputs, give different zero patterns;
  - drop_fraction: zeros among the attention entries, expected `rate`;
  - kept_scale_error: kept entries equal p / (1 - rate) (inverted dropout), max relative error;
  - mean_error: the average over calls approaches the no-dropout probabilities (expected value unchanged);
  - grad_consistent: in one call, the gradient w.r.t. V of <out, G> equals P_drop^T G with the same
    P_drop the forward pass used (forward and backward masks agree).

What a training step further needs, and what XLA's source suggests cuDNN may not give (its cuDNN graph keeps one
RNG offset per compiled kernel, starting at 0 and advancing on every execution, under the static seed):
  - layer_masks_independent: two attention calls in one jitted function (two unrolled layers, the same inputs)
    drop different entries; one static seed for both would give every layer the same mask;
  - scan_grad_consistent: the same gradient check through a lax.scan over 2 layers (scanned layers run one kernel
    forward for layers 0, 1 and backward for layers 1, 0: per-kernel offsets would pair the wrong masks);
  - masks_follow_the_rng_key: two freshly compiled copies, called with different keys, drop different entries.
    If the mask depends on the executable's call count and not on the key, `train.seed` does not reach attention
    dropout and a resumed run replays the masks of its first steps (no exact resume).
usable_for_training is the conjunction; only then may the fused kernel carry attention dropout in our step.
"""

import json
import sys
import time

import numpy as np
from absl import app, flags

flags.DEFINE_enum("impl", "cudnn", ["cudnn", "pallas", "explicit", "fixed_key"], "attention implementation under test "
                  "(fixed_key: the explicit path with one key for every call, as a static seed without an offset "
                  "would draw: the checks must fail it)")
flags.DEFINE_float("rate", 0.1, "attention dropout rate")
flags.DEFINE_integer("batch", 8, "batch")
flags.DEFINE_integer("heads", 4, "heads")
flags.DEFINE_integer("seq", 64, "queries = keys = head dim (V is the identity)")
flags.DEFINE_integer("calls", 64, "calls averaged for the expected-value check")
FLAGS = flags.FLAGS


def _attention_fn(impl, rate):
  import jax
  import jax.numpy as jnp
  from bert_jax.layers import attention
  if impl in ("explicit", "fixed_key"):
    def attend(q, k, v, rng):
      mask = jnp.ones((1, 1, 1, k.shape[1]), bool)
      return attention._explicit_attention(q, k, v, mask, rate, jax.random.key(0) if impl == "fixed_key" else rng)
    return attend
  if impl == "pallas":  # our kernel (layers/dropout_attention_kernel.py); interpret mode off a GPU
    def attend(q, k, v, rng):
      return attention.dot_product_attention(
          q, k, v, attention.AttentionMask(None, None, jnp.ones(q.shape[:2], jnp.int32)), implementation="pallas",
          dropout_rate=rate, dropout_rng=rng, deterministic=False)
    return attend
  from jax._src.cudnn import fused_attention_stablehlo as cudnn_attention

  def attend(q, k, v, rng):
    del rng  # the wrapper takes a static seed; whether masks still change per call is what is checked
    return cudnn_attention.dot_product_attention(q, k, v, scale=1.0 / np.sqrt(q.shape[-1]), dropout_rate=rate)
  return attend


def run_checks(impl: str, rate: float, batch: int, heads: int, seq: int, calls: int) -> dict:
  import jax
  import jax.numpy as jnp
  on_gpu = jax.default_backend() == "gpu"
  dtype = jnp.bfloat16 if impl == "cudnn" or (impl == "pallas" and on_gpu) else jnp.float32
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.normal(size=(batch, seq, heads, seq)), dtype)
  k = jnp.asarray(rng.normal(size=(batch, seq, heads, seq)), dtype)
  v = jnp.broadcast_to(jnp.eye(seq, dtype=dtype)[None, :, None, :], (batch, seq, heads, seq))
  attend = _attention_fn(impl, rate)
  step = jax.jit(attend)
  probs = jax.nn.softmax(jnp.einsum("btnd,bsnd->bnts", q, k).astype(jnp.float32) / np.sqrt(seq), axis=-1)
  probs_BxTxNxS = np.asarray(jnp.transpose(probs, (0, 2, 1, 3)))

  outs = [np.asarray(step(q, k, v, jax.random.key(i)), np.float32) for i in range(calls)]
  first, second = outs[0], outs[1]
  kept = first != 0
  scale_error = np.max(np.abs(first[kept] - probs_BxTxNxS[kept] / (1 - rate)) / (probs_BxTxNxS[kept] / (1 - rate)))
  mean = np.mean(outs, axis=0)

  g = jnp.asarray(rng.normal(size=first.shape), dtype)

  def inner(v_):
    out = attend(q, k, v_, jax.random.key(1000))
    return jnp.sum(out.astype(jnp.float32) * g.astype(jnp.float32)), out
  grad_v, out = jax.jit(jax.grad(inner, has_aux=True))(v)
  dropped_probs = np.asarray(out, np.float32)  # [B, T, N, S] = P_drop, as V is the identity
  expected_grad = np.einsum("btns,btnd->bsnd", dropped_probs, np.asarray(g, np.float32))
  grad_error = float(np.max(np.abs(np.asarray(grad_v, np.float32) - expected_grad)))
  two_layers = jax.jit(lambda q_, k_, v_, key: tuple(attend(q_, k_, v_, r) for r in jax.random.split(key)))
  layer0, layer1 = (np.asarray(o, np.float32) for o in two_layers(q, k, v, jax.random.key(7)))

  def scanned(vs_LxBxSxNxD):
    def layer(total, xs):
      v_, key = xs
      out_ = attend(q, k, v_, key)
      return total + jnp.sum(out_.astype(jnp.float32) * g.astype(jnp.float32)), out_
    return jax.lax.scan(layer, jnp.zeros((), jnp.float32), (vs_LxBxSxNxD, jax.random.split(jax.random.key(9))))
  grad_vs, outs_scan = jax.jit(jax.grad(scanned, has_aux=True))(jnp.stack([v, v]))
  scan_error = max(float(np.max(np.abs(np.asarray(grad_vs[i], np.float32) - np.einsum(
      "btns,btnd->bsnd", np.asarray(outs_scan[i], np.float32), np.asarray(g, np.float32))))) for i in range(2))

  fresh_a = jax.jit(lambda *a: attend(*a))(q, k, v, jax.random.key(11))
  fresh_b = jax.jit(lambda *a: attend(*a))(q, k, v, jax.random.key(12))
  grad_tolerance = 2e-2 if dtype == jnp.bfloat16 else 1e-5
  checks = {
      "masks_differ_between_calls": bool(np.any((first != 0) != (second != 0))),
      "grad_consistent": grad_error <= grad_tolerance,
      "layer_masks_independent": bool(np.any((layer0 != 0) != (layer1 != 0))),
      "scan_grad_consistent": scan_error <= grad_tolerance,
      "masks_follow_the_rng_key": bool(np.any((np.asarray(fresh_a) != 0) != (np.asarray(fresh_b) != 0)))}
  return {**checks, "usable_for_training": all(checks.values()), "scan_grad_max_error": scan_error,
          "drop_fraction": float(1 - kept.mean()), "rate": rate,
          "kept_scale_error": float(scale_error),
          "mean_error": float(np.max(np.abs(mean - probs_BxTxNxS))),
          "mean_error_bound": float(4 * np.sqrt(rate / (1 - rate) / calls) * probs_BxTxNxS.max()),
          "grad_max_error": grad_error}


def main(argv):
  del argv
  import jax
  result = {"bench": "attention_dropout_check", "impl": FLAGS.impl, "device": jax.devices()[0].device_kind,
            "date": time.strftime("%Y-%m-%d"),
            **run_checks(FLAGS.impl, FLAGS.rate, FLAGS.batch, FLAGS.heads, FLAGS.seq, FLAGS.calls)}
  print(json.dumps(result), flush=True)


if __name__ == "__main__":
  sys.exit(app.run(main))
