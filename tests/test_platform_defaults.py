"""Per-platform defaults for the config fields left at auto (core/platform_defaults.py)."""

import pytest

from bert_jax.core import configlib, platform_defaults

LARGE = dict(num_layers=24, hidden=1024, heads=16, ffn=4096, vocab=30522)
BASE = dict(num_layers=12, hidden=768, heads=12, ffn=3072, vocab=30522)
# what JAX may allocate (memory_stats()["bytes_limit"]): XLA's default 75% of the card
H100_BYTES = 0.75 * 79.6 * 2**30
H200_BYTES = 104.8 * 2**30  # as the train CLI read it on the H200 (bench/RESULTS.md, 2026-11-27)


def _resolve(backend, memory, seq, local_batch, explicit, **overrides):
  cfg = configlib.load("large", {"data.max_seq_length": seq, **overrides})
  return platform_defaults.resolve(cfg, backend, memory, LARGE, local_batch, explicit)


def test_gpu_unrolls_and_remats_only_when_activations_do_not_fit():
  cfg, line = _resolve("gpu", H100_BYTES, 128, 256, True)
  assert (cfg.model.scan_layers, cfg.model.remat_policy, cfg.train.prng_impl) == (False, "none", "threefry2x32")
  assert line.startswith("platform defaults for gpu: scan_layers=False, remat_policy=none (est.")
  # seq 512 x 64 with explicit attention keeps 5*a*s^2*b bytes of scores per layer: over budget, so remat
  # (measured faster there on the H100); with a fused kernel it fits again.
  assert _resolve("gpu", H100_BYTES, 512, 64, True)[0].model.remat_policy == "dots_no_batch"
  assert _resolve("gpu", H100_BYTES, 512, 64, False)[0].model.remat_policy == "none"
  # A 16 GB GPU cannot hold seq 128 x 256 activations.
  assert _resolve("gpu", 16 * 2**30, 128, 256, False)[0].model.remat_policy == "dots_no_batch"


def test_tpu_and_cpu_choices():
  cfg, _ = _resolve("tpu", 32 * 2**30, 128, 32, True)
  assert (cfg.model.scan_layers, cfg.train.prng_impl) == (True, "rbg")
  cfg, line = _resolve("cpu", None, 128, 32, True)
  assert (cfg.model.scan_layers, cfg.model.remat_policy, cfg.train.prng_impl) == (True, "none", "threefry2x32")


def test_set_fields_are_kept_and_the_input_config_is_untouched():
  cfg = configlib.load("large", {"model.scan_layers": True, "model.remat_policy": "full", "train.prng_impl": "rbg"})
  resolved, line = platform_defaults.resolve(cfg, "gpu", H100_BYTES, LARGE, 256, True)
  assert (resolved.model.scan_layers, resolved.model.remat_policy, resolved.train.prng_impl) == (True, "full", "rbg")
  assert line == "platform defaults for gpu: none left at auto"
  auto = configlib.load("large")
  platform_defaults.resolve(auto, "gpu", H100_BYTES, LARGE, 256, True)
  assert auto.model.scan_layers is None and auto.model.remat_policy == "auto"


def test_budget_covers_the_measured_peaks():
  """On the H200 (256 x 128, explicit attention, no remat) BERT-large peaked at 53.7 GiB and base at 20.7 GiB;
  the chosen remat policy must leave room for such a peak, not only for the formula's estimate."""
  for dims, peak in ((LARGE, 53.65 * 2**30), (BASE, 20.71 * 2**30)):
    est = platform_defaults.estimate_memory(seq_len=128, local_batch=256, explicit_attention=True, **dims)
    assert est.total * platform_defaults.PEAK_OVER_ESTIMATE >= peak
  # the H200 ran both without remat, and chose so
  assert _resolve("gpu", H200_BYTES, 128, 256, True)[0].model.remat_policy == "none"
  base = platform_defaults.resolve(configlib.load("base"), "gpu", H200_BYTES, BASE, 256, True)[0]
  assert base.model.remat_policy == "none"


def test_memory_estimate_matches_the_paper_formula():
  e = platform_defaults.estimate_memory(num_layers=1, hidden=1024, heads=16, ffn=4096, vocab=0, seq_len=128,
                                        local_batch=2, explicit_attention=True)
  assert e.activation_bytes == pytest.approx(34 * 128 * 2 * 1024 + 5 * 16 * 128 ** 2 * 2)
  assert e.state_bytes == 16 * (4 * 1024 ** 2 + 2 * 1024 * 4096)
