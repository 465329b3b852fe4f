"""Parameter-efficient fine-tuning blocks for the shared trunk: bottleneck adapters, LoRA, soft prompts and
per-layer key/value prefixes. All are off by default; each is switched on by fields of the encoder config
(models/config.py), so every family gets them, scanned or unrolled, shared across layers (ALBERT) or not.

  adapters  (Houlsby et al. 2019) x + up(act(down(x))) on a sublayer's output before the residual sum:
            houlsby after attention and after the FFN, pfeiffer after the FFN only. `up` starts at zero, so
            at init the block is exactly the identity. Params: <layer>/attention_adapter, <layer>/ffn_adapter.
  LoRA      (Hu et al. 2021) y = W x + (alpha / r) B A dropout(x) on the chosen dense layers; B starts at
            zero. Params: <scope>/<target>_lora/{lora_a, lora_b} beside the dense layer they adapt.
            merge_lora() folds them into the kernels (for export).
  prompt    (Lester et al. 2021) P trainable embeddings prepended to the word embeddings; they take positions
            0..P-1 and token type 0, as HF peft does (the real tokens move to P..P+T-1).
            Param: encoder/embeddings/prompt_embeddings.
  prefix    (P-tuning v2, Liu et al. 2021) P trainable keys and values prepended in every layer's attention;
            real tokens keep their positions. Params: <layer>/attention/prefix/{key, value}.
"""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bert_jax.layers import attention as attention_lib
from bert_jax.layers import common
from bert_jax.layers import dropout as dropout_lib

ADAPTER_KINDS = ("none", "houlsby", "pfeiffer")
PROMPT_KINDS = ("none", "prompt", "prefix")
# LoRA targets: the dense layers of a transformer layer (HF: attention.self.query/key/value,
# attention.output.dense, intermediate.dense, output.dense).
LORA_TARGETS = ("query", "key", "value", "attention_output", "intermediate", "output")
# Paths of parameters that only PEFT methods create (a '/'-joined parameter path is searched with it).
PEFT_PARAM_PATTERN = r"(^|/)(\w+_lora|attention_adapter|ffn_adapter|prompt_embeddings|prefix)(/|$)"


def check_config(c) -> None:
  """Fails naming the bad field and the valid choices."""
  if c.adapter_kind not in ADAPTER_KINDS:
    raise ValueError(f"adapter_kind {c.adapter_kind!r} is not one of {ADAPTER_KINDS}")
  if c.adapter_kind != "none" and c.adapter_size < 1:
    raise ValueError(f"adapter_size must be >= 1 with adapter_kind={c.adapter_kind!r}, got {c.adapter_size}")
  if c.prompt_kind not in PROMPT_KINDS:
    raise ValueError(f"prompt_kind {c.prompt_kind!r} is not one of {PROMPT_KINDS}")
  if c.prompt_kind != "none" and c.prompt_length < 1:
    raise ValueError(f"prompt_length must be >= 1 with prompt_kind={c.prompt_kind!r}, got {c.prompt_length}")
  if c.lora_rank < 0:
    raise ValueError(f"lora_rank must be >= 0 (0: no LoRA), got {c.lora_rank}")
  if c.lora_rank:
    if isinstance(c.lora_targets, str) or not c.lora_targets:
      raise ValueError(f"lora_targets must be a non-empty tuple of names from {LORA_TARGETS}, got {c.lora_targets!r}")
    unknown = [t for t in c.lora_targets if t not in LORA_TARGETS]
    if unknown:
      raise ValueError(f"LoRA target modules {unknown} do not exist; valid targets: {', '.join(LORA_TARGETS)}")
    if not 0.0 <= c.lora_dropout < 1.0:
      raise ValueError(f"lora_dropout must be in [0, 1), got {c.lora_dropout}")


def is_peft_path(path: str) -> bool:
  return re.search(PEFT_PARAM_PATTERN, path) is not None


def prompt_tokens(c) -> int:
  """Positions the soft prompt adds in front of every row (0 without one)."""
  return c.prompt_length if c.prompt_kind == "prompt" else 0


# --- adapters ---------------------------------------------------------------------------------------------


class Adapter(nn.Module):
  """x + up(act(down(x))), H -> adapter_size -> H; `up` is zero at init, so the block starts as the identity."""
  config: "object"

  @nn.compact
  def __call__(self, x_BxTxH):
    c = self.config
    h = common.dense(c, c.adapter_size, ("embed", None), "down")(x_BxTxH)
    h = common.activation(c.hidden_act)(h)
    up = nn.DenseGeneral(c.hidden_size, dtype=c.dtype, param_dtype=c.param_dtype,
                         kernel_init=common.zeros_init((None, "embed")), bias_init=common.zeros_init(("embed",)),
                         name="up")
    return x_BxTxH + up(h)


def adapt_attention(c, x_BxTxH):
  """The attention sublayer's output through a Houlsby adapter (identity for other kinds)."""
  return Adapter(c, name="attention_adapter")(x_BxTxH) if c.adapter_kind == "houlsby" else x_BxTxH


def adapt_ffn(c, x_BxTxH):
  """The FFN sublayer's output through an adapter (Houlsby and Pfeiffer both place one here)."""
  return Adapter(c, name="ffn_adapter")(x_BxTxH) if c.adapter_kind != "none" else x_BxTxH


# --- LoRA -------------------------------------------------------------------------------------------------


class LoraDelta(nn.Module):
  """(alpha / r) B A dropout(x) for a DenseGeneral contracting x's last `num_in` axes into `out_shape`.

  lora_a [*in, r] starts like peft's (Kaiming-uniform, bound 1/sqrt(fan_in)); lora_b [r, *out] at zero."""
  config: "object"
  in_axes: tuple
  out_shape: tuple
  out_axes: tuple
  deterministic: bool = True

  @nn.compact
  def __call__(self, x):
    c = self.config
    num_in = len(self.in_axes)
    in_shape = x.shape[-num_in:]
    a_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform", in_axis=tuple(range(num_in)),
                                              out_axis=-1)
    a = self.param("lora_a", nn.with_logical_partitioning(a_init, tuple(self.in_axes) + (None,)),
                   tuple(in_shape) + (c.lora_rank,), c.param_dtype)
    b = self.param("lora_b", common.zeros_init((None,) + tuple(self.out_axes)),
                   (c.lora_rank,) + tuple(self.out_shape), c.param_dtype)
    x = dropout_lib.Dropout(c.lora_dropout, deterministic=self.deterministic)(x)
    a, b = jnp.asarray(a, c.dtype), jnp.asarray(b, c.dtype)
    h = jax.lax.dot_general(x, a, (((tuple(range(x.ndim - num_in, x.ndim))), tuple(range(num_in))), ((), ())))
    y = jax.lax.dot_general(h, b, (((h.ndim - 1,), (0,)), ((), ())))
    return y * jnp.asarray(lora_scale(c), y.dtype)


def lora_scale(c) -> float:
  return c.lora_alpha / c.lora_rank


def lora_delta(c, target: str, x, in_axes, out_shape, out_axes, deterministic, name=None):
  """The LoRA term to add to dense layer `target`'s output, or 0 when it is not a LoRA target."""
  if not c.lora_rank or target not in c.lora_targets:
    return 0
  return LoraDelta(c, tuple(in_axes), tuple(out_shape), tuple(out_axes), deterministic,
                   name=name or f"{target}_lora")(x)


def _merged_kernel(kernel, a, b, scale):
  """kernel + scale * A B, where any leading (scanned-layer) axes of the three arrays line up."""
  lead = a.ndim + b.ndim - 2 - kernel.ndim
  in_shape, out_shape = a.shape[lead:-1], b.shape[lead + 1:]
  a2 = a.reshape(a.shape[:lead] + (int(np.prod(in_shape)), a.shape[-1])).astype(np.float32)
  b2 = b.reshape(b.shape[:lead + 1] + (int(np.prod(out_shape)),)).astype(np.float32)
  delta = np.matmul(a2, b2).reshape(kernel.shape)
  return (np.asarray(kernel, np.float32) + scale * delta).astype(np.asarray(kernel).dtype)


_FUSED_SLOT = {"query": 0, "key": 1, "value": 2}


def merge_lora(tree, scale: float):
  """A params tree with every `<name>_lora` folded into its sibling dense layer's kernel and removed
  (numpy arrays out). Under fused QKV, query/key/value LoRA go into their slot of the `qkv` kernel."""
  if not isinstance(tree, dict):
    return tree
  out = {k: merge_lora(v, scale) for k, v in tree.items() if not k.endswith("_lora")}
  for key, lora in tree.items():
    if not key.endswith("_lora"):
      continue
    target = key[:-len("_lora")]
    a, b = np.asarray(lora["lora_a"]), np.asarray(lora["lora_b"])
    if target in out:
      out[target] = {**out[target], "kernel": _merged_kernel(np.asarray(out[target]["kernel"]), a, b, scale)}
    elif target in _FUSED_SLOT and "qkv" in out:
      kernel = np.array(out["qkv"]["kernel"])  # [..., H, 3, N, D]
      slot = (Ellipsis, _FUSED_SLOT[target], slice(None), slice(None))
      kernel[slot] = _merged_kernel(kernel[slot], a, b, scale)
      out["qkv"] = {**out["qkv"], "kernel": kernel}
    else:
      raise ValueError(f"LoRA params {key!r} have no dense layer {target!r} beside them (have {sorted(out)})")
  return out


# --- soft prompts and prefixes ------------------------------------------------------------------------------


def prompt_param(module: nn.Module, c):
  """The [P, E] soft prompt, created in `module` (the embeddings) as `prompt_embeddings`."""
  return module.param("prompt_embeddings", common.normal_init(c, (None, "embed")), (c.prompt_length, c.embedding_width),
                      c.param_dtype)


def prepend_prompt(prompt_PxE, x_BxTxE):
  prompt = jnp.broadcast_to(jnp.asarray(prompt_PxE, x_BxTxE.dtype), (x_BxTxE.shape[0],) + prompt_PxE.shape)
  return jnp.concatenate([prompt, x_BxTxE], axis=1)


def extend_for_prompt(c, input_mask_BxT, segment_ids_BxT, position_ids_BxT, attention_segments_BxT):
  """(mask, segments, positions) of the rows with the soft prompt in front: the prompt is always attended,
  has token type 0 and positions 0..P-1; the tokens follow at P..P+T-1 (HF peft's layout)."""
  if position_ids_BxT is not None or attention_segments_BxT is not None:
    raise ValueError("prompt tuning (prompt_kind='prompt') does not take packed rows or explicit position ids: "
                     "the prompt takes the first positions of each row; use unpacked rows or prompt_kind='prefix'")
  input_mask_BxT, segment_ids_BxT = jnp.asarray(input_mask_BxT), jnp.asarray(segment_ids_BxT)
  batch, seq_len = input_mask_BxT.shape
  p = c.prompt_length
  ones = jnp.ones((batch, p), input_mask_BxT.dtype)
  mask = jnp.concatenate([ones, input_mask_BxT], axis=1)
  segments = jnp.concatenate([jnp.zeros((batch, p), segment_ids_BxT.dtype), segment_ids_BxT], axis=1)
  positions = jnp.broadcast_to(jnp.arange(p + seq_len, dtype=jnp.int32), (batch, p + seq_len))
  return mask, segments, positions


class Prefix(nn.Module):
  """P trainable keys and values [P, N, D] for one attention layer (P-tuning v2, no reparameterisation)."""
  config: "object"

  @nn.compact
  def __call__(self, k_BxSxNxD, v_BxSxNxD):
    c = self.config
    shape = (c.prompt_length, c.num_heads, c.head_dim)
    init = common.normal_init(c, (None, "heads", "kv"))
    key = self.param("key", init, shape, c.param_dtype)
    value = self.param("value", init, shape, c.param_dtype)
    batch = k_BxSxNxD.shape[0]
    grow = lambda p, x: jnp.concatenate([jnp.broadcast_to(jnp.asarray(p, x.dtype), (batch,) + shape), x], axis=1)
    return grow(key, k_BxSxNxD), grow(value, v_BxSxNxD)


def with_prefix(c, k_BxSxNxD, v_BxSxNxD, mask):
  """(keys, values, mask) with the layer's prefix in front when prompt_kind is 'prefix', else unchanged.
  Every query may attend every prefix slot; padded and packed rows keep their masks over the real keys, and
  the cuDNN key lengths grow by P (padding stays a right suffix)."""
  if c.prompt_kind != "prefix":
    return k_BxSxNxD, v_BxSxNxD, mask
  k, v = Prefix(c, name="prefix")(k_BxSxNxD, v_BxSxNxD)
  return k, v, prefix_mask(mask, c.prompt_length)


def prefix_mask(mask, prefix_len: int):
  """An attention mask (AttentionMask or a boolean array) with prefix_len always-visible keys in front."""
  key_lengths = segment_ids = None
  if isinstance(mask, attention_lib.AttentionMask):
    mask, key_lengths, segment_ids = mask
  visible = jnp.ones(mask.shape[:-1] + (prefix_len,), mask.dtype)
  grown = jnp.concatenate([visible, mask], axis=-1)
  if key_lengths is not None:
    key_lengths = key_lengths + prefix_len
  # Splash's segment ids need as many queries as keys; attention falls back from splash when they differ.
  del segment_ids
  return attention_lib.AttentionMask(grown, key_lengths, None)
