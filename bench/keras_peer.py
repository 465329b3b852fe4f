"""The other JAX BERT a user would pick: KerasHub's BertMaskedLM on Keras' JAX backend, timed as a peer in
bench/train_bench.py (--compare_keras).

Same model sizes, batch, sequence length, masked positions, dropout and compute dtype as our run; AdamW with
the config's settings and gradient clipping; weighted cross-entropy at the masked positions; the batch on the
device before timing. train_on_batch syncs each step (it returns a host float) and reads and re-assigns every
variable in Python on each call (~20 ms a call for 24 layers on cpu-2, part of it while the device waits): a
cost of Keras' one-step API that ours does not pay. KerasHub's BertMaskedLM has no NSP head, so this peer does
MLM only (the NSP head is ~0.1% of a BERT step). Install without TensorFlow Text (only its tokenizers need it):
  pip install keras keras-hub kagglehub kagglesdk --no-deps
"""

import os
import time


def problems(config) -> list:
  """Why this peer would not train the model our run trains (empty: it would). KerasHub's TransformerEncoder has
  one dropout rate, used for the attention probabilities as well as the hidden states."""
  m = config.model
  if m.family != "bert":
    return [f"the KerasHub peer is BERT; this config's model.family is {m.family!r}"]
  if not config.train.deterministic and m.attention_dropout != m.hidden_dropout:
    return [f"KerasHub's BERT drops attention probabilities at its hidden dropout rate ({m.hidden_dropout}); this "
            f"run's attention dropout is {m.attention_dropout} (use --attention_dropout={m.hidden_dropout})"]
  return []


def bench_keras(config, batch: dict, steps: int, warmup: int) -> dict:
  """Times `steps` train_on_batch calls after `warmup`; `batch` is train_bench's numpy batch."""
  os.environ.setdefault("KERAS_BACKEND", "jax")
  import jax
  import keras
  import keras_hub
  if keras.backend.backend() != "jax":
    raise RuntimeError(f"Keras was imported with the {keras.backend.backend()!r} backend before this peer; "
                       f"set KERAS_BACKEND=jax")
  from bert_jax.models.config import SIZES
  m = config.model
  if problems(config):
    raise ValueError("; ".join(problems(config)))
  layers, hidden, heads = SIZES[m.size]
  dropout = 0.0 if config.train.deterministic else m.hidden_dropout
  dtype = "mixed_bfloat16" if m.dtype == "bfloat16" else "float32"
  backbone = keras_hub.models.BertBackbone(
      vocabulary_size=m.vocab_size, num_layers=layers, num_heads=heads, hidden_dim=hidden,
      intermediate_dim=m.intermediate_size or 4 * hidden, dropout=dropout,
      max_sequence_length=m.max_position_embeddings, dtype=dtype)
  model = keras_hub.models.BertMaskedLM(backbone=backbone, preprocessor=None)
  o = config.optim  # our AdamW's settings, gradient clipping included
  model.compile(optimizer=keras.optimizers.AdamW(learning_rate=o.peak_learning_rate, weight_decay=o.weight_decay,
                                                 beta_1=o.b1, beta_2=o.b2, epsilon=o.eps,
                                                 global_clipnorm=o.clip_norm or None),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), weighted_metrics=[],
                jit_compile=True)
  x = {"token_ids": batch["input_ids"], "padding_mask": batch["input_mask"].astype(bool),
       "segment_ids": batch["segment_ids"], "mask_positions": batch["masked_lm_positions"]}
  y, weights = batch["masked_lm_ids"], batch["masked_lm_weights"]
  # on the device before timing, as ours and the torch peer's are (train_on_batch would copy numpy every step)
  x, y, weights = jax.device_put((x, y, weights))
  t0 = time.perf_counter()
  for _ in range(warmup):
    loss = model.train_on_batch(x, y, sample_weight=weights)
  warmup_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  for _ in range(steps):
    loss = model.train_on_batch(x, y, sample_weight=weights)  # returns a host float: one sync per step
  dt = (time.perf_counter() - t0) / steps
  seq_s = batch["input_ids"].shape[0] / dt
  return {"step_ms": dt * 1e3, "seq_per_sec": seq_s, "tokens_per_sec": seq_s * batch["input_ids"].shape[1],
          "warmup_s": warmup_s, "loss": float(loss), "params": model.count_params(), "objective": "mlm",
          "keras": keras.__version__, "keras_hub": keras_hub.__version__}
