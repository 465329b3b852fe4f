"""Small building blocks shared by every family: initialisers with logical axes, Dense/LayerNorm
factories bound to an encoder config, activations, activation constraints and an fp32 row gather.

The `config` these take is any object with initializer_range, layer_norm_eps, dtype and param_dtype (and fp8,
fp8_amax_history for FP8-capable denses) (models.config.EncoderConfig); layers never import models.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from bert_jax.layers import fp8 as fp8_lib

# FFN activations under transformers' names (ACT2FN), so an HF config's hidden_act reads and writes back as is.
ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu", "swish")


def normal_init(config, axes):
  return nn.with_logical_partitioning(nn.initializers.normal(stddev=config.initializer_range), axes)


def zeros_init(axes):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)


def ones_init(axes):
  return nn.with_logical_partitioning(nn.initializers.ones_init(), axes)


def layer_norm(config, name: str, axis_name: str = "embed") -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=config.layer_norm_eps, dtype=config.dtype, param_dtype=config.param_dtype,
                      scale_init=ones_init((axis_name,)), bias_init=zeros_init((axis_name,)), name=name)


def dense(config, features, kernel_axes, name, axis=-1, fp8_capable=False):
  """DenseGeneral whose bias carries the kernel's output axes (those after the contracted ones). fp8_capable
  denses compute in FP8 (layers/fp8.py) when config.fp8 is set: the transformer layers' projections."""
  num_contracted = 1 if isinstance(axis, int) else len(axis)
  dot_general_cls = fp8_lib.dot_general_cls(config.fp8_amax_history) if fp8_capable and config.fp8 else None
  return nn.DenseGeneral(features, axis=axis, dtype=config.dtype, param_dtype=config.param_dtype,
                         dot_general_cls=dot_general_cls, kernel_init=normal_init(config, kernel_axes),
                         bias_init=zeros_init(kernel_axes[num_contracted:]), name=name)


def activation(name: str):
  """'gelu' is the exact (erf) GELU of BERT; 'gelu_new' (and torch's name for it, 'gelu_pytorch_tanh') the tanh
  approximation ALBERT uses; 'relu' ERNIE 1.0's; 'silu' (alias 'swish') x * sigmoid(x)."""
  if name == "gelu":
    return lambda x: nn.gelu(x, approximate=False)
  if name in ("gelu_new", "gelu_pytorch_tanh"):
    return lambda x: nn.gelu(x, approximate=True)
  if name == "relu":
    return nn.relu
  if name in ("silu", "swish"):
    return nn.silu
  raise ValueError(f"hidden_act {name!r} is not one of {ACTIVATIONS}")


def constrain_BxTxH(x):
  return nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_embed"))


def gather_rows(x_BxTxH, positions_BxP):
  """x at the given positions, [B, P, H], gathered in fp32 and cast back.

  The gradient of a bf16 gather is a bf16 scatter-add, which GPUs run as compare-and-swap loops;
  in fp32 it uses native atomics.
  """
  wide = x_BxTxH.astype(jnp.promote_types(x_BxTxH.dtype, jnp.float32))
  return jnp.take_along_axis(wide, positions_BxP[..., None].astype(jnp.int32), axis=1).astype(x_BxTxH.dtype)


def count_params(params) -> int:
  return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))
