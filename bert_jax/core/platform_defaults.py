"""Per-platform choices for the run-config fields left at auto: model.scan_layers (None), model.remat_policy
("auto") and train.prng_impl ("auto"). Every choice is overridable by setting the field.

Why, from the H100 measurements in bench/RESULTS.md (BERT-large, bf16):
  - GPU: unrolled layers. Scan over layers alone cost 1.8x at batch 256 x seq 128: its stacked residuals
    push memory to XLA's 75% cap, which then rematerializes. Compile time (61 s vs 13 s) is the price.
  - Remat only when the activations would not fit: no remat was faster wherever it fit (seq 128 x 256), remat
    faster where it did not (seq 512 x 64: 277 vs 365 ms/step). The estimate below, times PEAK_OVER_ESTIMATE,
    against what JAX may allocate decides.
  - TPU: scan (compile time and memory on 16-32 GB chips, where the pattern above does not hold), threefry's
    bit generation is slow there, so rbg; on the H100, threefry and rbg measured the same, so threefry stays.
  - CPU: scan (fast compiles; tests and the demo configs set their own), no remat, threefry.
"""

import dataclasses

# Measured peaks over the estimate below, on an H200 at 256 x 128 with explicit attention (bench/RESULTS.md):
# BERT-large 53.7 GiB against 38.0 (1.41x), BERT-base 20.7 against 14.0 (1.48x); XLA's temporaries, the bf16
# weight copies and the fp32 logits are not in the formula. The estimate times this must fit what JAX may allocate.
PEAK_OVER_ESTIMATE = 1.5


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
  state_bytes: float        # params, grads and AdamW moments (fp32)
  activation_bytes: float   # saved for the backward pass without remat

  @property
  def total(self) -> float:
    return self.state_bytes + self.activation_bytes


def estimate_memory(num_layers: int, hidden: int, heads: int, ffn: int, vocab: int, seq_len: int,
                    local_batch: int, explicit_attention: bool, param_shards: int = 1) -> MemoryEstimate:
  """Per-device bytes of a BERT train step without remat. Activations follow Korthikanti et al. (2022) in
  16-bit compute: per layer s*b*(18h + 4f) bytes (34*s*b*h at f = 4h: attention 11, FFN 3 + 4f/h, LayerNorms 4),
  plus 5*a*s^2*b for attention scores, probabilities and dropout mask when attention runs explicitly."""
  params = num_layers * (4 * hidden * hidden + 2 * hidden * ffn) + vocab * hidden
  per_layer = seq_len * local_batch * (18 * hidden + 4 * ffn)
  if explicit_attention:
    per_layer += 5 * heads * seq_len * seq_len * local_batch
  return MemoryEstimate(state_bytes=16 * params / param_shards, activation_bytes=num_layers * per_layer)


def resolve(config, backend: str, allocator_limit_bytes: float | None, model_dims: dict, local_batch: int,
            explicit_attention: bool):
  """(config with the auto fields set, one line saying what was chosen and why). `allocator_limit_bytes` is what
  JAX may allocate on one device (memory_stats()["bytes_limit"]: on a GPU 75% of its memory by default, or
  XLA_PYTHON_CLIENT_MEM_FRACTION of it); `model_dims` holds num_layers, hidden, heads, ffn, vocab of the model;
  `config` is not modified."""
  c = config.copy_and_resolve_references()
  choices = []
  if c.model.scan_layers is None:
    c.model.scan_layers = backend != "gpu"
    choices.append(f"scan_layers={c.model.scan_layers}")
  if c.model.remat_policy == "auto":
    if allocator_limit_bytes is None:
      c.model.remat_policy = "none"
      choices.append("remat_policy=none")
    else:
      shards = c.mesh.fsdp if c.mesh.fsdp > 0 else 1
      need = estimate_memory(seq_len=c.data.max_seq_length, local_batch=local_batch,
                             explicit_attention=explicit_attention, param_shards=shards, **model_dims)
      budget = allocator_limit_bytes / PEAK_OVER_ESTIMATE
      c.model.remat_policy = "none" if need.total <= budget else "dots_no_batch"
      choices.append(f"remat_policy={c.model.remat_policy} (est. {need.total / 2**30:.1f} GiB without remat, "
                     f"budget {budget / 2**30:.1f} GiB)")
  if c.train.prng_impl == "auto":
    c.train.prng_impl = "rbg" if backend == "tpu" else "threefry2x32"
    choices.append(f"prng_impl={c.train.prng_impl}")
  line = (f"platform defaults for {backend}: " + ", ".join(choices) if choices
          else f"platform defaults for {backend}: none left at auto")
  return c, line
