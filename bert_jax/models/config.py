"""EncoderConfig: the trunk's hyper-parameters, one frozen dataclass every family specialises.

A family (models/<family>/) subclasses it to set its defaults and checks; the model sees only this,
never the ConfigDict.
"""

import dataclasses
from typing import Any, ClassVar

import jax.numpy as jnp

from bert_jax.layers import attention as attention_lib
from bert_jax.layers import common
from bert_jax.layers import peft as peft_lib
from bert_jax.layers import transformer

# name: (num_layers, hidden_size, num_heads); intermediate is 4 * hidden.
SIZES = {
    "tiny": (2, 128, 2),
    "mini": (4, 256, 4),
    "small": (4, 512, 8),
    "medium": (8, 512, 8),
    "base": (12, 768, 12),
    "large": (24, 1024, 16),
    "xlarge": (24, 2048, 16),    # ALBERT-xlarge
    "xxlarge": (12, 4096, 64),   # ALBERT-xxlarge (one shared layer; FFN 4 x 4096 = 16384)
    "electra_small": (12, 256, 4),  # ELECTRA-Small's discriminator (FFN 1024, embeddings 128)
}


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
  """Trunk hyper-parameters shared by every family."""
  family: ClassVar[str] = "bert"
  # Sequence classification without a pooler: dense + this on [CLS] (RoBERTa's head: tanh; DistilBERT's: relu).
  classifier_activation: ClassVar[str] = "tanh"
  # Whether the family's HF classes have task-type embeddings (ERNIE), so task_type_vocab_size may be set.
  has_task_types: ClassVar[bool] = False
  # Whether the family's HF classes always hold a token-type table (all but DistilBERT), so export needs one.
  has_token_types: ClassVar[bool] = True
  # HF RoBERTa's padding_idx: default position ids count only tokens whose id is not this (HF
  # create_position_ids_from_input_ids), and those tokens sit at position padding_idx; None: 0..T-1 for every token.
  position_padding_idx: ClassVar[int | None] = None
  # Whether hidden dropout follows the attention output projection (BERT and all but DistilBERT, whose HF
  # TransformerBlock adds out_lin's output to the residual undropped).
  attention_output_dropout: ClassVar[bool] = True
  # Task heads as the family's HF classes train them: whether a sequence classifier without a pooler drops [CLS]
  # before its dense (RoBERTa's and ELECTRA's heads do, DistilBERT's pre_classifier takes it undropped), the rate
  # of the dropout before the classifier (None: hidden_dropout; DistilBERT's seq_classif_dropout is 0.2), and of
  # a dropout before the QA output layer (0: none, as BERT; DistilBERT's qa_dropout is 0.1). The family rates apply
  # only while hidden_dropout > 0, so a model configured without dropout has none in its head either.
  classifier_input_dropout: ClassVar[bool] = True
  classifier_dropout: ClassVar[float | None] = None
  qa_dropout: ClassVar[float] = 0.0
  vocab_size: int = 30522
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  intermediate_size: int = 3072
  max_position_embeddings: int = 512
  type_vocab_size: int = 2         # 0: no token-type embeddings (DistilBERT)
  task_type_vocab_size: int = 0    # ERNIE's task-type embeddings (HF use_task_id); 0: none
  layer_norm_eps: float = 1e-12
  hidden_dropout: float = 0.1
  attention_dropout: float = 0.1
  initializer_range: float = 0.02
  hidden_act: str = "gelu"        # gelu (erf) | gelu_new (tanh approximation) | relu | silu (layers/common.py)
  embedding_size: int = 0         # 0: the hidden size; ALBERT factorizes to E and projects E -> H
  layer_sharing: str = "none"     # none | all | attention | ffn (ALBERT cross-layer sharing)
  position_offset: int = 0        # added to position ids (RoBERTa: padding_idx + 1 = 2)
  position_encoding: str = "absolute"  # absolute (learned table) | relative_sinusoidal (NEZHA, in attention)
  max_relative_position: int = 64  # relative_sinusoidal: distances j - i clipped to [-this, this]
  use_pooler: bool = True         # the [CLS] dense+tanh pooler (RoBERTa has none)
  # Sequence classification input: cls (the pooler, or the no-pooler head's dense on [CLS], as HF) | mean (the
  # mean of the real tokens' outputs: no HF class has it; what a frozen encoder's features need, see RESULTS).
  classifier_pooling: str = "cls"
  dtype: str = "float32"          # compute dtype
  param_dtype: str = "float32"
  remat_policy: str = "none"      # one of transformer.REMAT_POLICIES
  scan_layers: bool = False
  vocab_pad_multiple: int = 1     # e.g. 128 pads 30522 -> 30592 for faster matmuls
  attention_impl: str = "xla"     # see attention.IMPLEMENTATIONS
  mlm_all_positions: bool = False  # MLM logits at all T positions, then gather (HF's way; a benchmark baseline)
  fused_qkv: bool = False         # one [H, 3, heads, head_dim] projection instead of query/key/value
  fp8: bool = False               # the layers' projections in FP8 with delayed scaling (layers/fp8.py)
  fp8_amax_history: int = 1024    # steps of amax history an FP8 scale is taken from
  # Parameter-efficient fine-tuning (layers/peft.py); all off by default, which leaves params and outputs as without.
  adapter_kind: str = "none"      # none | houlsby (after attention and FFN) | pfeiffer (after FFN only)
  adapter_size: int = 64          # adapter bottleneck width
  lora_rank: int = 0              # 0: no LoRA; r of the low-rank update B A
  lora_alpha: float = 16.0        # LoRA update scaled by lora_alpha / lora_rank
  lora_dropout: float = 0.0       # dropout on the LoRA input
  lora_targets: tuple = ("query", "value")  # dense layers LoRA adapts (peft_lib.LORA_TARGETS)
  prompt_kind: str = "none"       # none | prompt (soft prompt before the embeddings) | prefix (keys/values per layer)
  prompt_length: int = 20         # virtual tokens of the prompt or prefix

  def __post_init__(self):
    if self.hidden_size % self.num_heads:
      raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")
    transformer.check_stack_config(self)
    _check_position_encoding(self)
    if self.attention_impl not in attention_lib.IMPLEMENTATIONS:
      raise ValueError(f"attention_impl {self.attention_impl!r} is not one of {attention_lib.IMPLEMENTATIONS}")
    if self.hidden_act not in common.ACTIVATIONS:
      raise ValueError(f"hidden_act {self.hidden_act!r} is not one of {common.ACTIVATIONS}")
    for name in ("vocab_size", "num_layers", "intermediate_size", "max_position_embeddings", "vocab_pad_multiple"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
    if self.embedding_size < 0 or self.position_offset < 0 or self.type_vocab_size < 0:
      raise ValueError("embedding_size, position_offset and type_vocab_size must be >= 0")
    if self.has_token_types and not self.type_vocab_size:  # caught here, not by to_hf after training
      raise ValueError(f"model.type_vocab_size must be >= 1 for model.family={self.family!r}: its HF classes always "
                       f"have a token-type table; set model.type_vocab_size=1 for one segment (or 2), or use "
                       f"model.family='distilbert' for a model without token types")
    if self.task_type_vocab_size < 0 or (self.task_type_vocab_size and not self.has_task_types):
      raise ValueError(f"task_type_vocab_size={self.task_type_vocab_size}: task-type embeddings exist only in "
                       f"model.family='ernie' (>= 1 there, 0 for none); {self.family!r} has no HF place for them")
    for field in ("dtype", "param_dtype"):  # fail early on a bad dtype name, naming the field numpy does not
      try:
        jnp.dtype(getattr(self, field))
      except TypeError:
        raise ValueError(f"model.{field}={getattr(self, field)!r} is not a dtype name (e.g. float32, "
                         f"bfloat16)") from None
    if isinstance(self.lora_targets, (list, str)):  # from a ConfigDict: a list, or 'query,value'
      targets = self.lora_targets.split(",") if isinstance(self.lora_targets, str) else self.lora_targets
      object.__setattr__(self, "lora_targets", tuple(t.strip() for t in targets if t.strip()))
    peft_lib.check_config(self)
    _check_fp8(self)

  @classmethod
  def from_size(cls, size: str, **overrides: Any) -> "EncoderConfig":
    if size not in SIZES:
      raise ValueError(f"unknown model size {size!r}; choose one of {sorted(SIZES)}")
    layers, hidden, heads = SIZES[size]
    fields = dict(num_layers=layers, hidden_size=hidden, num_heads=heads, intermediate_size=4 * hidden)
    fields.update(overrides)
    return cls(**fields)

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def embedding_width(self) -> int:
    """Width of the embedding tables and of the MLM decoder's input."""
    return self.embedding_size or self.hidden_size

  @property
  def padded_vocab_size(self) -> int:
    m = self.vocab_pad_multiple
    return -(-self.vocab_size // m) * m

  @property
  def max_sequence_length(self) -> int:
    return self.max_position_embeddings - self.position_offset


def _check_fp8(c: EncoderConfig) -> None:
  if not c.fp8:
    return
  if c.fp8_amax_history < 1:
    raise ValueError(f"fp8_amax_history must be >= 1, got {c.fp8_amax_history}")
  if c.layer_sharing != "none":
    raise ValueError(f"fp8 keeps one set of scaling statistics per projection, but layer_sharing="
                     f"{c.layer_sharing!r} applies each projection {c.num_layers} times a step; set model.fp8=False "
                     f"or model.layer_sharing=none")


def _check_position_encoding(c: EncoderConfig) -> None:
  if c.position_encoding not in attention_lib.POSITION_ENCODINGS:
    raise ValueError(f"position_encoding {c.position_encoding!r} is not one of {attention_lib.POSITION_ENCODINGS}")
  if c.position_encoding != "relative_sinusoidal":
    return
  if c.max_relative_position < 1:
    raise ValueError(f"max_relative_position must be >= 1, got {c.max_relative_position}")
  if c.head_dim % 2:
    raise ValueError(f"relative sinusoidal positions pair sin/cos over the head size, which must be even; "
                     f"hidden_size {c.hidden_size} / num_heads {c.num_heads} = {c.head_dim}")
  if c.prompt_kind == "prefix":
    raise ValueError("prefix tuning (prompt_kind='prefix') adds keys that have no position, so relative positions "
                     "have no distance for them; use prompt_kind='prompt' (the prompt takes the first positions), "
                     "LoRA or adapters")


def trunk_flops_per_sequence(config: EncoderConfig, seq_len: int) -> float:
  """Training FLOPs (3x forward, multiply-add = 2) of the trunk for one sequence of seq_len tokens:
  dense layer weights 6*T*L*(4*H*H + 2*H*I), attention 12*L*T*T*H, ALBERT's E->H projection 6*T*E*H.
  NEZHA's relative positions add two [T, T, D] einsums per head (q.a^K and p.a^V), 4*L*T*T*H forward; their
  backward goes only to q and p (the table is a constant, it gets no gradient), so 8*L*T*T*H in training.
  Sharing changes parameters, not compute. Lookups, norms, softmax and GELU are not counted; the pooler
  is counted by the objective that reads it."""
  H, I, L, T = config.hidden_size, config.intermediate_size, config.num_layers, seq_len
  flops = 6 * T * L * (4 * H * H + 2 * H * I) + 12 * L * T * T * H
  if config.embedding_size:
    flops += 6 * T * config.embedding_size * H
  if config.position_encoding == "relative_sinusoidal":
    flops += 8 * L * T * T * H
  return float(flops)
