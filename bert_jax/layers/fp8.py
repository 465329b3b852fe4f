"""FP8 matmuls with delayed scaling for the transformer layers' dense projections (model.fp8).

Each projection quantizes its input and kernel to float8_e4m3fn and its output gradient to float8_e5m2, with
per-tensor scales taken from the largest |value| over the last `amax_history` steps (delayed scaling, as
NVIDIA Transformer Engine and flax's fp8_ops do it): the scale a step uses was computed before the step, so
no reduction over the tensor sits in front of the matmul. The arithmetic is flax's
`fp8_ops.fp8_scaled_dot_general`; this module only holds its six statistics.

The statistics are parameters under a `fp8_meta` scope (param_rules.OVERWRITE_SCOPE), so they are created,
sharded (replicated) and checkpointed like every other parameter. They are not trained: their gradient *is*
their next value (the custom VJP returns the updated scale and history), and the train step writes it over
them instead of giving it to the optimizer (trainers/pretrain.py, param_rules.overwrite_mask). Microbatches
combine them by maximum, which is what one whole batch would have recorded.

On Hopper GPUs XLA turns the quantize -> dot -> dequantize pattern into cuBLASLt FP8 GEMMs; elsewhere the
same numbers are computed by emulation (slower than bf16: for tests and loss-curve checks, not speed).
"""

import functools

import flax.linen as nn
import jax.numpy as jnp
from flax.linen import fp8_ops

from bert_jax.core import param_rules

# Flax's and Transformer Engine's default history length.
DEFAULT_AMAX_HISTORY = 1024


class Fp8DotGeneral(nn.Module):
  """A dot_general for nn.DenseGeneral(dot_general_cls=...) that computes in FP8 with delayed scaling."""
  amax_history: int = DEFAULT_AMAX_HISTORY

  @nn.compact
  def __call__(self, lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    del precision, preferred_element_type  # FP8 GEMMs accumulate in fp32 and return the compute dtype
    replicated = (None,)
    scale = lambda name: self.param(name, nn.with_logical_partitioning(nn.initializers.ones_init(), replicated),
                                    (1,), jnp.float32)
    history = lambda name: self.param(name, nn.with_logical_partitioning(nn.initializers.zeros_init(), replicated),
                                      (self.amax_history,), jnp.float32)
    compute_dtype = rhs.dtype  # DenseGeneral has cast the kernel to the layer's compute dtype
    return fp8_ops.fp8_scaled_dot_general(
        jnp.asarray(lhs, compute_dtype), rhs, dimension_numbers, preferred_element_type=compute_dtype,
        lhs_scale=scale("input_scale"), rhs_scale=scale("kernel_scale"), grad_scale=scale("output_grad_scale"),
        lhs_amax_history=history("input_amax_history"), rhs_amax_history=history("kernel_amax_history"),
        grad_amax_history=history("output_grad_amax_history"), quantize_compute_type=compute_dtype)


def dot_general_cls(amax_history: int = DEFAULT_AMAX_HISTORY):
  """What DenseGeneral takes as dot_general_cls: the FP8 dot with its statistics under `fp8_meta`."""
  return functools.partial(Fp8DotGeneral, amax_history=amax_history, name=param_rules.OVERWRITE_SCOPE)
