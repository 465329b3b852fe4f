"""The post-LN transformer layer and the layer stack: scanned or unrolled, rematerialised, and
ALBERT's cross-layer parameter sharing.

Parameter trees of the stack (under the trunk's scope):
  sharing none, unrolled   layer_{i}/{attention, attention_layer_norm, intermediate, output, output_layer_norm}
  sharing none, scanned    layers/layer/... stacked on a leading `layers` axis
  sharing all              shared_layer/layer/...  (one set, applied num_layers times; scanned or not)
  sharing attention        shared_attention/{attention, attention_layer_norm} + layer_{i}/{intermediate, ...}
  sharing ffn              shared_ffn/{intermediate, output, output_layer_norm} + layer_{i}/{attention, ...}
"""

import flax.linen as nn
import jax

from bert_jax.layers import attention as attention_lib
from bert_jax.layers import common
from bert_jax.layers import dropout as dropout_lib
from bert_jax.layers import peft as peft_lib

REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
SHARING_MODES = ("none", "all", "attention", "ffn")


class SelfAttention(nn.Module):
  config: "object"
  deterministic: bool = True

  @nn.compact
  def __call__(self, x_BxTxH, mask):
    c = self.config
    if c.fused_qkv:
      qkv_BxTx3xNxD = common.dense(c, (3, c.num_heads, c.head_dim), ("embed", None, "heads", "kv"), "qkv",
                                   fp8_capable=True)(x_BxTxH)
      q, k, v = (qkv_BxTx3xNxD[:, :, j] for j in range(3))
    else:
      project = lambda name: common.dense(c, (c.num_heads, c.head_dim), ("embed", "heads", "kv"), name,
                                            fp8_capable=True)(x_BxTxH)
      q, k, v = project("query"), project("key"), project("value")
    lora = lambda name: peft_lib.lora_delta(c, name, x_BxTxH, ("embed",), (c.num_heads, c.head_dim), ("heads", "kv"),
                                            self.deterministic)
    q, k, v = q + lora("query"), k + lora("key"), v + lora("value")
    k, v, mask = peft_lib.with_prefix(c, k, v, mask)
    dropout_rng = None
    if not self.deterministic and c.attention_dropout > 0:
      dropout_rng = self.make_rng("dropout")
    relative = None
    if c.position_encoding == "relative_sinusoidal":  # NEZHA: fixed vectors added to keys and values
      relative = attention_lib.relative_positions_TxSxD(q.shape[1], c.head_dim, c.max_relative_position, q.dtype)
    out_BxTxNxD = attention_lib.dot_product_attention(
        q, k, v, mask, implementation=c.attention_impl, dropout_rate=c.attention_dropout,
        dropout_rng=dropout_rng, deterministic=self.deterministic, relative_TxSxD=relative)
    out = common.dense(c, c.hidden_size, ("heads", "kv", "embed"), "output", axis=(-2, -1),
                       fp8_capable=True)(out_BxTxNxD)
    return out + peft_lib.lora_delta(c, "attention_output", out_BxTxNxD, ("heads", "kv"), (c.hidden_size,),
                                     ("embed",), self.deterministic, name="output_lora")


def _attention_sublayer(c, deterministic, x_BxTxH, mask):
  """x = LN(x + Dropout(Attn(x))) (no Dropout where config.attention_output_dropout is False: DistilBERT); modules
  are created in the caller's scope."""
  attn = SelfAttention(c, deterministic, name="attention")(x_BxTxH, mask)
  if c.attention_output_dropout:
    attn = dropout_lib.Dropout(c.hidden_dropout, deterministic=deterministic)(attn)
  attn = peft_lib.adapt_attention(c, attn)
  return common.constrain_BxTxH(common.layer_norm(c, "attention_layer_norm")(x_BxTxH + attn))


def _ffn_sublayer(c, deterministic, x_BxTxH):
  """x = LN(x + Dropout(FFN(x))); modules are created in the caller's scope."""
  h = common.dense(c, c.intermediate_size, ("embed", "mlp"), "intermediate", fp8_capable=True)(x_BxTxH)
  h += peft_lib.lora_delta(c, "intermediate", x_BxTxH, ("embed",), (c.intermediate_size,), ("mlp",), deterministic)
  h = common.activation(c.hidden_act)(h)
  h = nn.with_logical_constraint(h, ("activation_batch", "activation_length", "activation_mlp"))
  y = common.dense(c, c.hidden_size, ("mlp", "embed"), "output", fp8_capable=True)(h)
  y += peft_lib.lora_delta(c, "output", h, ("mlp",), (c.hidden_size,), ("embed",), deterministic)
  y = dropout_lib.Dropout(c.hidden_dropout, deterministic=deterministic)(y)
  y = peft_lib.adapt_ffn(c, y)
  return common.constrain_BxTxH(common.layer_norm(c, "output_layer_norm")(x_BxTxH + y))


class TransformerLayer(nn.Module):
  """One post-LN layer: x = LN(x + Attn(x)); x = LN(x + FFN(x))."""
  config: "object"
  deterministic: bool = True

  @nn.compact
  def __call__(self, x_BxTxH, mask):
    x = _attention_sublayer(self.config, self.deterministic, x_BxTxH, mask)
    return _ffn_sublayer(self.config, self.deterministic, x)


class AttentionSublayer(nn.Module):
  config: "object"
  deterministic: bool = True

  @nn.compact
  def __call__(self, x_BxTxH, mask):
    return _attention_sublayer(self.config, self.deterministic, x_BxTxH, mask)


class FfnSublayer(nn.Module):
  config: "object"
  deterministic: bool = True

  @nn.compact
  def __call__(self, x_BxTxH, mask):
    del mask
    return _ffn_sublayer(self.config, self.deterministic, x_BxTxH)


class _ScanStep(nn.Module):
  """Adapts TransformerLayer to nn.scan's (carry, x) -> (carry, y) signature."""
  config: "object"
  deterministic: bool = True

  @nn.compact
  def __call__(self, x_BxTxH, mask):
    return _remat(TransformerLayer, self.config.remat_policy)(self.config, self.deterministic,
                                                              name="layer")(x_BxTxH, mask), None


class _Repeated(nn.Module):
  """One TransformerLayer applied num_layers times, unrolled (ALBERT sharing, scan off)."""
  config: "object"
  deterministic: bool = True

  @nn.compact
  def __call__(self, x_BxTxH, mask):
    layer = _remat(TransformerLayer, self.config.remat_policy)(self.config, self.deterministic, name="layer")
    for _ in range(self.config.num_layers):
      x_BxTxH = layer(x_BxTxH, mask)
    return x_BxTxH


def _remat(module_cls, policy_name: str):
  if policy_name == "none":
    return module_cls
  policy = {
      "full": None,
      "dots": jax.checkpoint_policies.checkpoint_dots,
      "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
  }[policy_name]
  return nn.remat(module_cls, policy=policy, prevent_cse=False)


def check_stack_config(c) -> None:
  if c.layer_sharing not in SHARING_MODES:
    raise ValueError(f"layer_sharing {c.layer_sharing!r} is not one of {SHARING_MODES}")
  if c.remat_policy not in REMAT_POLICIES:
    raise ValueError(f"remat_policy {c.remat_policy!r} is not one of {REMAT_POLICIES}")
  if c.layer_sharing in ("attention", "ffn") and c.scan_layers:
    raise ValueError(f"layer_sharing={c.layer_sharing!r} shares only part of each layer, which nn.scan cannot "
                     f"express; set scan_layers=False (or layer_sharing 'all' or 'none')")


def build_stack(c, deterministic: bool) -> dict[str, nn.Module]:
  """The configured layer stack's modules by parameter name, unbound: a parent assigns each under its name
  (setattr in setup) and runs them with run_stack."""
  scan_kwargs = dict(in_axes=nn.broadcast, length=c.num_layers)
  if c.layer_sharing == "all":
    if c.scan_layers:
      scanned = nn.scan(_ScanStep, variable_broadcast="params", split_rngs={"params": False, "dropout": True},
                        **scan_kwargs)
      return {"shared_layer": scanned(c, deterministic)}
    return {"shared_layer": _Repeated(c, deterministic)}
  if c.layer_sharing == "none":
    if c.scan_layers:
      scanned = nn.scan(_ScanStep, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                        metadata_params={nn.PARTITION_NAME: "layers"}, **scan_kwargs)
      return {"layers": scanned(c, deterministic)}
    layer_cls = _remat(TransformerLayer, c.remat_policy)
    return {f"layer_{i}": layer_cls(c, deterministic) for i in range(c.num_layers)}
  shared_cls, own_cls = ((AttentionSublayer, FfnSublayer) if c.layer_sharing == "attention"
                         else (FfnSublayer, AttentionSublayer))
  modules = {f"shared_{c.layer_sharing}": _remat(shared_cls, c.remat_policy)(c, deterministic)}
  modules.update({f"layer_{i}": _remat(own_cls, c.remat_policy)(c, deterministic) for i in range(c.num_layers)})
  return modules


def run_stack(c, modules, x_BxTxH, mask):
  """Applies build_stack's modules (now bound, looked up by name through `modules(name)`) in order."""
  if c.layer_sharing == "all":
    out = modules("shared_layer")(x_BxTxH, mask)
    return out[0] if c.scan_layers else out
  if c.layer_sharing == "none":
    if c.scan_layers:
      return modules("layers")(x_BxTxH, mask)[0]
    for i in range(c.num_layers):
      x_BxTxH = modules(f"layer_{i}")(x_BxTxH, mask)
    return x_BxTxH
  shared = modules(f"shared_{c.layer_sharing}")
  for i in range(c.num_layers):
    own = modules(f"layer_{i}")
    if c.layer_sharing == "attention":
      x_BxTxH = own(shared(x_BxTxH, mask), mask)
    else:
      x_BxTxH = shared(own(x_BxTxH, mask), mask)
  return x_BxTxH
