"""bench/ scripts whose figures RESULTS.md quotes and that a CPU can check."""
import os

import numpy as np

from cli_helpers import load_bench


def _records(rng, rows, seq, vocab, mask_id):
  """Rows of a text where token t is always followed by t + 1 (mod vocab, past the 5 special ids), each with 3
  masked positions shown as [MASK], never side by side, and 8 padding slots."""
  start = rng.integers(5, vocab, rows)
  ids = 5 + (start[:, None] - 5 + np.arange(seq)[None]) % (vocab - 5)
  mask = np.ones((rows, seq), np.int64)
  mask[:, -8:] = 0
  ids = ids * mask
  positions = np.sort(np.stack([rng.choice(np.arange(1, seq - 9, 2), 3, replace=False) for _ in range(rows)]), 1)
  labels = np.take_along_axis(ids, positions, 1)
  masked = ids.copy()
  np.put_along_axis(masked, positions, mask_id, 1)
  return {"input_ids": masked, "input_mask": mask, "masked_lm_positions": positions, "masked_lm_ids": labels,
          "masked_lm_weights": np.ones((rows, 3), np.float32)}, ids


def test_ngram_baseline_unmasks_counts_neighbours_and_predicts_a_deterministic_text():
  baseline = load_bench("ngram_mlm_baseline")
  rng, vocab = np.random.default_rng(0), 50
  train, original = _records(rng, 200, 24, vocab, mask_id=4)
  np.testing.assert_array_equal(baseline.unmasked(train), original)
  next_given, unigram = baseline.bigram_tables(original, train["input_mask"], vocab, 0.3)
  np.testing.assert_allclose(next_given.sum(1), 1.0, rtol=1e-5)  # rows never seen (the special ids) too
  result = baseline.score(_records(rng, 50, 24, vocab, mask_id=4)[0], next_given, unigram)
  # Each masked token is fixed by its neighbours; no single token is right more than ~1/45 of the time.
  assert result["positions"] == 150 and result["bigram_accuracy"] == 1.0, result
  assert result["unigram_accuracy"] < 0.1 and result["bigram_loss"] < result["unigram_loss"], result


def test_hf_curve_auc_is_the_pairwise_probability_with_ties_half():
  hf_curve = load_bench("hf_curve")
  rng = np.random.default_rng(0)
  scores, labels = rng.integers(0, 6, 300).astype(np.float32), rng.random(300) < 0.3  # many ties
  pos, neg = scores[labels], scores[~labels]
  brute = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))
  assert abs(hf_curve.auc(scores, labels) - brute) < 1e-12


def _mlm_batch(rows=4, seq=32, vocab=8000, predictions=5):
  """Random ids with a padded tail on every other row, masked slots at real positions (the last slot padded)."""
  rng = np.random.default_rng(0)
  ids = rng.integers(5, vocab, (rows, seq))
  mask = np.ones((rows, seq), np.int64)
  mask[1::2, seq // 2:] = 0
  positions = np.sort(np.stack([rng.choice(np.arange(1, seq // 2), predictions, replace=False)
                                for _ in range(rows)]), 1)
  weights = np.ones((rows, predictions), np.float32)
  weights[:, -1] = 0.0
  positions[:, -1] = 0
  return {"input_ids": ids * mask, "input_mask": mask, "segment_ids": (np.arange(seq)[None] >= 10) * mask,
          "masked_lm_positions": positions, "masked_lm_ids": rng.integers(5, vocab, (rows, predictions)),
          "masked_lm_weights": weights, "next_sentence_labels": rng.integers(0, 2, (rows, 1))}


def test_hf_curve_peer_starts_from_our_weights_with_our_loss(tmp_path):
  """The HF peer loaded from write_start's directory gives our objective's eval losses on the same batch, so the
  two curves start from one point and measure one loss."""
  import jax
  import jax.numpy as jnp
  import torch
  from bert_jax.core import checkpoint as checkpoint_lib
  from bert_jax.core import configlib
  from bert_jax.trainers import pretrain
  hf_curve = load_bench("hf_curve")
  config = configlib.load("tiny", {"train.steps": 10, "optim.warmup_steps": 1})
  init = hf_curve.write_start(config, str(tmp_path))
  peer = hf_curve.MaskedLmPeer(config, str(tmp_path / hf_curve.INIT_HF))
  batch = _mlm_batch()
  peer.modules.train(False)
  with torch.no_grad():
    theirs = peer.summaries({k: v[None] for k, v in peer.sums(hf_curve.torch_batch(batch))[1].items()})
  _, objective = pretrain.build(config)
  sums = jax.jit(lambda p, b, k: objective.loss_sums(p, b, k, True))(
      checkpoint_lib.load_params(init), jax.tree_util.tree_map(jnp.asarray, batch), jax.random.key(0))
  ours = objective.summaries(sums)
  for key in ("mlm_loss", "nsp_loss", "mlm_accuracy", "nsp_accuracy"):
    assert abs(float(ours[key]) - theirs[key]) < 1e-4, (key, float(ours[key]), theirs[key])


def test_hf_curve_electra_peer_replaces_only_the_real_masked_slots(tmp_path):
  """The HF peer corrupts what our objective corrupts: each masked position with a weight (padded slots, which
  point at position 0, write nothing), labels exactly where the sample differs from the original."""
  import torch
  from bert_jax.core import configlib
  hf_curve = load_bench("hf_curve")
  config = configlib.load("electra_tiny", {"train.steps": 10, "optim.warmup_steps": 1})
  hf_curve.write_start(config, str(tmp_path))
  peer = hf_curve.ElectraPeer(config, str(tmp_path / hf_curve.INIT_HF))
  rng = np.random.default_rng(0)
  ids = rng.integers(5, 8000, (2, 16))
  batch = {"input_ids": ids, "input_mask": np.ones((2, 16), np.int64), "segment_ids": np.zeros((2, 16), np.int64),
           "masked_lm_positions": np.array([[1, 3, 0], [2, 5, 0]]), "masked_lm_ids": ids[:, [1, 3, 0]],
           "masked_lm_weights": np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]], np.float32)}
  torch.manual_seed(0)
  loss, sums = peer.sums(hf_curve.torch_batch(batch))
  labels = sums["rtd_labels"].numpy().reshape(2, 16)
  # an untrained generator samples from ~8k tokens: every real slot's sample differs from its original
  np.testing.assert_array_equal(np.argwhere(labels), [[0, 1], [0, 3], [1, 2], [1, 5]])
  assert float(sums["replaced"]) == 4 and float(sums["real"]) == 32 and np.isfinite(float(loss))


def _train_bench():
  """bench/train_bench.py as a module, with bench/ importable (it imports keras_peer from there)."""
  import sys
  from cli_helpers import BENCH
  if BENCH not in sys.path:
    sys.path.insert(0, BENCH)
  return load_bench("train_bench")


def test_train_bench_refuses_peer_comparisons_that_are_not_like_for_like():
  from bert_jax.core import configlib
  problems = _train_bench().peer_problems
  large = configlib.load("large")
  assert problems(large, 1, True, True, False) == []
  assert problems(large, 1, False, False, False) == []
  # ours data-parallel on 8 devices against a one-device peer: 8x in our favour
  assert "8 devices" in " ".join(problems(large, 8, True, False, False))
  # a flag that would silently change nothing
  assert problems(large, 1, False, True, False) == ["--torch_compile needs --compare_torch"]
  assert "BertForPreTraining peer only" in " ".join(problems(configlib.load("electra_base"), 1, True, True, False))
  assert problems(configlib.load("electra_base"), 1, True, False, False) == []
  assert problems(configlib.load("distilbert_base"), 1, True, False, False) == []
  # LAMB, bf16 moments, gradient accumulation, or another family than the peer's model
  torch_problems = lambda name, overrides=None: " ".join(
      problems(configlib.load(name, overrides), 1, True, False, False))
  assert "AdamW" in torch_problems("large_lamb")
  assert "float32" in torch_problems("large", {"optim.state_dtype": "bfloat16"})
  assert "microbatches" in torch_problems("large", {"train.microbatches": 2})
  assert "bert model" in torch_problems("large", {"model.family": "roberta"})
  assert "mlm_sop" in torch_problems("albert_base")
  assert "every real token" in torch_problems("distilbert_base", {"distill.kl_positions": "masked"})
  # KerasHub drops attention probabilities at its one dropout rate
  assert problems(large, 1, False, False, True) == []
  no_attention_dropout = configlib.load("large", {"model.attention_dropout": 0.0})
  assert "attention dropout is 0.0" in " ".join(problems(no_attention_dropout, 1, False, False, True))
  assert problems(configlib.load("large", {"model.attention_dropout": 0.0, "train.deterministic": True}),
                  1, False, False, True) == []


def test_train_bench_line_has_the_command_versions_and_both_sides_mfu_from_one_formula():
  """A tiny --compare_torch run's JSON line: what RESULTS.md quotes (command, commit, versions, machine, date) and
  each side's tokens/s, with the peer's MFU from our FLOP count and peak (the peer gets no credit for extra work)."""
  import json
  import subprocess
  import sys
  from cli_helpers import BENCH, cli_env
  args = ["--config=tiny", "--batch=2", "--seq=16", "--steps=1", "--warmup=1", "--compare_torch", "--peak_flops=1e12"]
  run = subprocess.run([sys.executable, os.path.join(BENCH, "train_bench.py"), *args], capture_output=True,
                       text=True, timeout=600, env=cli_env())
  assert run.returncode == 0, run.stderr[-3000:]
  line = json.loads(run.stdout.strip().splitlines()[-1])
  assert line["command"].endswith("bench/train_bench.py " + " ".join(args)), line["command"]
  assert line["commit"] and line["date"] and line["devices"] == "1 x cpu"
  assert {"python", "jax", "jaxlib", "flax", "optax", "torch", "transformers"} <= set(line["versions"])
  ours, theirs = line["jax"], line["torch"]
  assert ours["flops_per_sequence"] > 0 and ours["peak_flops_per_device"] == 1e12
  assert abs(ours["mfu"] - ours["flops_per_sequence"] * ours["seq_per_sec"] / 1e12) < 1e-12
  assert abs(theirs["mfu"] / ours["mfu"] - theirs["seq_per_sec"] / ours["seq_per_sec"]) < 1e-9
  assert abs(line["speedup_vs_torch"] - ours["tokens_per_sec"] / theirs["tokens_per_sec"]) < 1e-9
  assert theirs["optimizer"] == "torch.optim.AdamW(fused=True)" and theirs["warmup_s"] > 0
  assert theirs["graphs_compiled_while_timed"] == 0
  assert theirs["float32_matmul_precision"] == "highest"  # "high" (TF32, as XLA's default) on a GPU only


def test_mfu_peak_is_the_dense_bf16_figure_of_each_hopper_variant():
  from bert_jax.core.metrics import peak_flops_per_device as peak
  assert peak("NVIDIA H100 80GB HBM3") == peak("NVIDIA H200") == peak("NVIDIA GH200 480GB") == 989e12
  assert peak("NVIDIA H100 PCIe") == 756e12  # not the SXM part's 989: its MFU would read 1.31x too low
  assert peak("NVIDIA H100 NVL") == peak("NVIDIA H200 NVL") == 835e12
  assert peak("cpu") is None and peak("cpu", 1e12) == 1e12
