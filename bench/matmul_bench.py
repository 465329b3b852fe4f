"""fp32 matmul rate, XLA (jax.jit) against PyTorch, at the shapes of a `mini` train step on CPU.

  python bench/matmul_bench.py [--threads=N]

One JSON line per shape [M, K] x [K, N] with GFLOP/s for each and their ratio. Tells whether a gap to
HF PyTorch in bench/train_bench.py comes from the GEMMs themselves or from everything around them.
"""

import json
import os
import sys
import time

# (M, K, N): QKV/attention-output, FFN in, FFN out (batch 32 x seq 128 = 4096 rows, hidden 256),
# the MLM decoder at 640 masked rows over a 30592-row vocabulary, and a weight gradient (K = 4096 rows).
SHAPES = [(4096, 256, 256), (4096, 256, 1024), (4096, 1024, 256), (640, 256, 30592), (256, 4096, 1024)]


def _seconds_per_call(fn, repeats: int) -> float:
  fn()
  start = time.perf_counter()
  for _ in range(repeats):
    fn()
  return (time.perf_counter() - start) / repeats


def main(argv):
  threads = next((int(a.split("=")[1]) for a in argv[1:] if a.startswith("--threads=")), os.cpu_count())
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  torch.set_num_threads(threads)
  matmul = jax.jit(jnp.matmul)
  rng = np.random.default_rng(0)
  for m, k, n in SHAPES:
    a, b = rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n), np.float32)
    ja, jb, ta, tb = jnp.asarray(a), jnp.asarray(b), torch.from_numpy(a), torch.from_numpy(b)
    flops = 2 * m * k * n
    jax_s = _seconds_per_call(lambda: matmul(ja, jb).block_until_ready(), 20)
    torch_s = _seconds_per_call(lambda: torch.matmul(ta, tb), 20)
    print(json.dumps({"bench": "matmul", "shape": [m, k, n], "threads": threads,
                      "jax_gflops": round(flops / jax_s / 1e9, 1), "torch_gflops": round(flops / torch_s / 1e9, 1),
                      "ratio": round(torch_s / jax_s, 3), "jax": jax.__version__, "torch": torch.__version__}))


if __name__ == "__main__":
  main(sys.argv)
