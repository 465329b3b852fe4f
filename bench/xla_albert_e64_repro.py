"""The README's known issue (ALBERT E=64 on the 2x2x2 mesh) without our code: an XLA SPMD-partitioner bug.

  python bench/xla_albert_e64_repro.py [--gspmd]

Only jax and numpy, on 8 simulated CPU devices, mesh (data, fsdp, tensor) = (2, 2, 2). Sharding annotations must
not change values, yet:

1. minimal: h [4, 2] sharded P(("data", "fsdp")) like a batch, t [2, 2] sharded P("tensor", "fsdp") like our
   [V, E] word table, out P("fsdp", "tensor") like the [H, E] MLM transform kernel: jit of
   h.T @ ((h @ t.T) @ t) is off by 2.14 (values of order 1). After the spmd-partitioning pass, the middle
   product's rows are collective-permuted into (fsdp, data) order, and the last dot contracts them with h's rows
   in (data, fsdp) order: row 1 meets row 2 and row 2 meets row 1. The pass's own output is wrong, not a later
   pass or the CPU runtime (the per-device program, simulated in numpy, gives the same wrong numbers).
2. albert_head: the gradient of sum(logsumexp((h @ W) @ table.T) * weights) for the kernel W [H=128, E], at
   our test's shapes (V 1024, 16 x 5 masked rows), W and table sharded as ours. E=64 is wrong (relative error
   ~1); E=32, 128 and 256 match, as does E=64 on every two-axis mesh. The loss agrees; the gradients do not.
   No weights needed here: sum(logsumexp(...)) alone is as wrong.

Tested on jax/jaxlib 0.10.2 (Python 3.11, our venv) and 0.12.0.1 (Python 3.12, the newest on PyPI on
2026-11-28), Shardy (the default) and GSPMD (--gspmd), identical on both versions: minimal 2.14 off, E=64 1.30
relative; E=32 matches under both partitioners, E=128 and 256 under Shardy only (GSPMD 1.16 and 1.25). Not fixed.
"""

import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

if "--gspmd" in sys.argv:
  jax.config.update("jax_use_shardy_partitioner", False)
MESH = Mesh(np.array(jax.devices()[:8]).reshape(2, 2, 2), ("data", "fsdp", "tensor"))
BATCH = ("data", "fsdp")


def S(*spec):
  return NamedSharding(MESH, P(*spec))


def minimal():
  rng = np.random.default_rng(0)
  t, h = rng.normal(size=(2, 2)).astype(np.float32), rng.normal(size=(4, 2)).astype(np.float32)
  f = lambda t, h: h.T @ ((h @ t.T) @ t)
  exact = h.astype(np.float64).T @ ((h.astype(np.float64) @ t.T) @ t)
  plain = np.asarray(jax.jit(f)(t, h))
  sharded = np.asarray(jax.jit(f, in_shardings=(S("tensor", "fsdp"), S(BATCH)),
                               out_shardings=S("fsdp", "tensor"))(t, h))
  print(f"minimal: max |unsharded - float64| {np.abs(plain - exact).max():.2e}, "
        f"max |sharded - float64| {np.abs(sharded - exact).max():.2e}")


def albert_head(E, V=1024, H=128, B=16, Pn=5):
  rng = np.random.default_rng(0)
  table = rng.normal(size=(V, E)).astype(np.float32)
  w = (rng.normal(size=(H, E)) / np.sqrt(H)).astype(np.float32)
  h = rng.normal(size=(B, Pn, H)).astype(np.float32)
  weights = (rng.random((B, Pn)) > 0.3).astype(np.float32)

  def loss(w, table, h, weights):
    logits = jnp.einsum("bpe,ve->bpv", h @ w, table)
    return jnp.sum(jax.nn.logsumexp(logits, -1) * weights)

  grad = jax.value_and_grad(loss)
  l1, g1 = jax.jit(grad)(w, table, h, weights)
  l8, g8 = jax.jit(grad, in_shardings=(S("fsdp", "tensor"), S("tensor", "fsdp"), S(BATCH), S(BATCH)),
                   out_shardings=(S(), S("fsdp", "tensor")))(w, table, h, weights)
  g1, g8 = np.asarray(g1), np.asarray(g8)
  rel = np.abs(g8 - g1).max() / np.abs(g1).max()
  print(f"albert_head E={E:3d}: loss {float(l1):.4f} vs {float(l8):.4f}, "
        f"max |dW sharded - dW one device| / max |dW| = {rel:.2e}")


if __name__ == "__main__":
  print(f"jax {jax.__version__}, jaxlib {jax.lib.__version__}, "
        f"{'GSPMD' if '--gspmd' in sys.argv else 'Shardy'}")
  minimal()
  for e in (32, 64, 128, 256):
    albert_head(e)
