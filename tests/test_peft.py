"""Parameter-efficient fine-tuning: adapters start as the identity, LoRA merges exactly, prefixes and prompts
ignore padding, exports load in HF `peft` with our logits, and bad settings are named."""
import dataclasses
import functools
import os

import flax.linen as nn
import jax
import numpy as np
import pytest

from bert_jax.core import param_rules
from bert_jax.finetune import heads, peft_export, peft_methods, task_export, tasks
from bert_jax.layers import attention as attention_lib
from bert_jax.layers import peft as peft_lib
from bert_jax.models import encoder as encoder_lib
from bert_jax.models.albert import AlbertConfig
from bert_jax.models.bert import BertConfig
from bert_jax.models.distilbert import DistilBertConfig
from bert_jax.models.roberta import RobertaConfig

import hf_helpers

SPEC = tasks.TaskSpec("probe", "classification", ("text",), "label", ("a", "b", "c"))
NO_DROPOUT = dict(hidden_dropout=0.0, attention_dropout=0.0)
BERT = BertConfig.from_size("tiny", vocab_size=120, max_position_embeddings=64, **NO_DROPOUT)
ALBERT = AlbertConfig.from_size("tiny", vocab_size=120, max_position_embeddings=64, embedding_size=32,
                                layer_sharing="all", **NO_DROPOUT)
ROBERTA = RobertaConfig.from_size("tiny", vocab_size=120, max_position_embeddings=66, **NO_DROPOUT)


def _batch(seq=16, seed=0, vocab=120):
  rng = np.random.default_rng(seed)
  ids = rng.integers(5, vocab, (2, seq)).astype(np.int32)
  mask = np.ones((2, seq), np.int32)
  mask[1, seq * 2 // 3:] = 0
  segments = (np.arange(seq)[None] >= seq // 3).astype(np.int32) * mask
  return ids, mask, segments


@functools.cache
def _jitted(config):
  """(init, apply) of the classifier, compiled once per config."""
  model = heads.SequenceClassifier(config, num_labels=3)
  return jax.jit(model.init), jax.jit(model.apply)


def _init(config, seed=0):
  ids = np.zeros((1, 8), np.int32)
  params = _jitted(config)[0](jax.random.key(seed), ids, ids, ids)["params"]
  return jax.tree_util.tree_map(np.asarray, nn.meta.unbox(params))


def _logits(config, params, ids, mask, segments):
  return np.asarray(_jitted(config)[1]({"params": params}, ids, mask, segments)["logits"])


def _perturbed_peft(params, scale=0.3, seed=1):
  """Params whose PEFT leaves are random (LoRA's B and the adapters' up-projections start at zero)."""
  base, extra = peft_methods.split_peft(params)
  rng = np.random.default_rng(seed)
  extra = jax.tree_util.tree_map(lambda x: (scale * rng.standard_normal(x.shape)).astype(np.float32), extra)
  return peft_methods.join_peft(base, extra)


@pytest.mark.parametrize("base,overrides", [
    (BERT, dict(adapter_kind="houlsby")),
    (ALBERT, dict(adapter_kind="pfeiffer", scan_layers=True)),  # one adapter shared by every layer, scanned
])
def test_adapters_at_init_are_the_identity(base, overrides):
  base = dataclasses.replace(base, scan_layers=overrides.get("scan_layers", False))
  config = dataclasses.replace(base, **overrides)
  base_params = _init(base)
  with_adapters = _init(config, seed=3)
  assert peft_methods.has_peft_params(with_adapters)
  # The pretrained weights with freshly initialised adapters: the up-projection is zero, so logits are exact.
  params = peft_methods.join_peft(base_params, peft_methods.split_peft(with_adapters)[1])
  batch = _batch()
  np.testing.assert_array_equal(_logits(config, params, *batch), _logits(base, base_params, *batch))
  # Trained adapters do change the output (the check above could not pass by ignoring them).
  assert np.max(np.abs(_logits(config, _perturbed_peft(params), *batch) - _logits(base, base_params, *batch))) > 1e-3


@pytest.mark.parametrize("base,overrides", [
    (BERT, dict(lora_targets=("query", "value", "attention_output", "intermediate", "output"))),
    (ALBERT, dict(scan_layers=True, fused_qkv=True, lora_targets=("query", "key", "value", "output"))),
])
def test_lora_merged_equals_unmerged(base, overrides):
  config = dataclasses.replace(base, lora_rank=4, lora_alpha=8.0, **overrides)
  params = _perturbed_peft(_init(config))
  merged_params, merged_config = peft_export.merged(params, config)
  assert merged_config.lora_rank == 0 and not peft_methods.has_peft_params(merged_params)
  batch = _batch()
  ours = _logits(config, params, *batch)
  np.testing.assert_allclose(_logits(merged_config, merged_params, *batch), ours, atol=1e-5)
  base_params, _ = peft_methods.split_peft(params)
  assert np.max(np.abs(_logits(merged_config, base_params, *batch) - ours)) > 1e-3  # LoRA did something


@pytest.mark.parametrize("base,overrides", [
    (BERT, dict(prompt_kind="prefix", prompt_length=5)),
    (BERT, dict(prompt_kind="prefix", prompt_length=5, scan_layers=True, attention_impl="splash")),
    (BERT, dict(prompt_kind="prompt", prompt_length=5)),
    (ALBERT, dict(prompt_kind="prompt", prompt_length=4)),
])
def test_prompts_and_prefixes_ignore_padding(base, overrides):
  config = dataclasses.replace(base, **overrides)
  params = _perturbed_peft(_init(config), scale=1.0)
  ids, mask, segments = _batch(seq=24)
  short = int(mask[1].sum())
  padded = _logits(config, params, ids, mask, segments)[1]
  unpadded = _logits(config, params, ids[1:, :short], mask[1:, :short], segments[1:, :short])[0]
  np.testing.assert_allclose(padded, unpadded, atol=2e-5)
  base_config = peft_methods.without_peft(config)
  base_logits = _logits(base_config, peft_methods.split_peft(params)[0], ids, mask, segments)
  assert np.max(np.abs(base_logits[1] - padded)) > 1e-4  # the prompt/prefix is used (float noise: ~1e-7)


@pytest.mark.parametrize("base,overrides", [
    (BERT, {}), (ROBERTA, {}), (BERT, dict(prompt_kind="prompt", prompt_length=5))])
def test_mean_pooling_classifies_the_mean_of_the_real_tokens(base, overrides):
  config = dataclasses.replace(base, classifier_pooling="mean", **overrides)
  params = _perturbed_peft(_init(config), scale=1.0)
  assert "pooler" not in params["encoder"] and "classifier_dense" not in params  # mean feeds the classifier
  ids, mask, segments = _batch(seq=24)
  logits = _logits(config, params, ids, mask, segments)
  outputs = encoder_lib.Encoder(config, True).apply({"params": params["encoder"]}, ids, mask, segments)
  outputs = np.asarray(outputs)  # [B, T, H]: the text's tokens only (a soft prompt's outputs are left out)
  assert outputs.shape[1] == ids.shape[1]
  means = np.stack([outputs[b, mask[b] == 1].mean(0) for b in range(2)])
  expected = means @ params["classifier"]["kernel"] + params["classifier"]["bias"]
  np.testing.assert_allclose(logits, expected, atol=2e-5)
  short = int(mask[1].sum())  # padding changes nothing
  np.testing.assert_allclose(_logits(config, params, ids[1:, :short], mask[1:, :short], segments[1:, :short])[0],
                             logits[1], atol=2e-5)
  with pytest.raises(ValueError, match="classifier_pooling 'max' is not one of"):
    _init(dataclasses.replace(config, classifier_pooling="max"))


def test_prompt_length_counts_against_the_position_table():
  config = dataclasses.replace(BERT, prompt_kind="prompt", prompt_length=10)
  ids = np.zeros((1, 60), np.int32)
  with pytest.raises(ValueError, match="soft prompt takes 10"):
    heads.SequenceClassifier(config, num_labels=3).init(jax.random.key(0), ids, ids, ids)


def test_lora_on_a_missing_module_names_the_valid_targets():
  with pytest.raises(ValueError, match=r"\['qkv_proj'\] do not exist; valid targets: query, key, value, "
                                       r"attention_output, intermediate, output"):
    dataclasses.replace(BERT, lora_rank=4, lora_targets=("query", "qkv_proj"))
  with pytest.raises(ValueError, match="do not exist; valid targets"):
    BertConfig(**peft_methods.model_overrides("lora", {"lora_targets": "query,dense"}))
  with pytest.raises(ValueError, match="not one of"):
    peft_methods.default_rules("bitfit")


@pytest.mark.parametrize("method", peft_methods.METHODS)
def test_each_method_trains_only_its_parameters_and_the_head(method):
  config = dataclasses.replace(BERT, **peft_methods.model_overrides(method, {"lora_rank": 4, "prompt_length": 3}))
  ids = np.zeros((1, 8), np.int32)
  model = heads.SequenceClassifier(config, num_labels=3)
  params = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), ids, ids, ids)["params"])
  rules = peft_methods.default_rules(method)
  param_rules.check_rules(params, rules)
  labels = {param_rules.path_of(p): label
            for p, label in jax.tree_util.tree_leaves_with_path(param_rules.labels(params, rules))}
  trained = {p for p, label in labels.items() if label == param_rules.TRAIN}
  head = {p for p in trained if not p.startswith("encoder/")}
  assert head == {"classifier/kernel", "classifier/bias"}
  encoder = trained - head
  if method == "full":
    assert encoder == {p for p in labels if p.startswith("encoder/")}
  elif method == "frozen":
    assert not encoder
  else:
    assert encoder and all(peft_lib.is_peft_path(p) or ("layer_norm" in p and method in ("houlsby", "pfeiffer"))
                           for p in encoder), sorted(encoder)
    trainable, total = param_rules.count(params, rules)
    assert trainable < 0.2 * total


def test_adapters_round_trip_through_our_format(tmp_path):
  config = dataclasses.replace(ROBERTA, adapter_kind="houlsby", adapter_size=8)
  params = _perturbed_peft(_init(config))
  with pytest.raises(ValueError, match="only LoRA merges"):
    peft_export.merged(params, config)
  peft_export.write_native(params, config, SPEC, str(tmp_path))
  loaded, loaded_config, task = peft_export.read_native(str(tmp_path))
  assert loaded_config == config and task["num_labels"] == 3
  batch = _batch()
  np.testing.assert_array_equal(_logits(loaded_config, loaded, *batch), _logits(config, params, *batch))


@pytest.mark.parametrize("base,overrides", [
    (BERT, dict(lora_rank=4, lora_alpha=8.0, scan_layers=True,
                lora_targets=("query", "value", "attention_output", "intermediate", "output"))),
    (ROBERTA, dict(prompt_kind="prompt", prompt_length=6)),
])
def test_peft_export_loads_in_hf_peft_with_our_logits(tmp_path, base, overrides):
  config = dataclasses.replace(base, **overrides)
  params = _perturbed_peft(_init(config))
  with pytest.raises(ValueError, match="peft_export"):  # a plain HF export would drop the PEFT params
    task_export.params_to_hf(params, config, "classification")
  adapter = peft_export.write_peft_dir(params, config, SPEC, str(tmp_path))
  assert {"adapter_config.json", "adapter_model.safetensors"} <= set(os.listdir(adapter))
  assert peft_export.check_peft_dir(params, config, SPEC, str(tmp_path)) <= 1e-4
  if config.lora_rank:  # the merged full model as well
    assert peft_export.write_merged_hf_dir(params, config, SPEC, str(tmp_path / "merged")) <= 1e-4


def test_distilbert_lora_export_is_checked_without_token_types(tmp_path, monkeypatch):
  """transformers 4.x (pyproject allows >=4.45) gives DistilBERT's classes no token_type_ids argument: the peft
  export check must call them as the family's HF classes take it, not fail with a TypeError after training."""
  import transformers
  config = DistilBertConfig.from_size("tiny", vocab_size=120, max_position_embeddings=64, lora_rank=4,
                                      lora_alpha=8.0, **NO_DROPOUT)
  params = _perturbed_peft(_init(config))
  peft_export.write_peft_dir(params, config, SPEC, str(tmp_path))
  hf_helpers.refuse_token_type_ids(monkeypatch, transformers.DistilBertForSequenceClassification)
  assert peft_export.check_peft_dir(params, config, SPEC, str(tmp_path)) <= 1e-4


def test_prefix_key_lengths_agree_with_the_mask():
  """The cuDNN path reads key lengths instead of the mask: with a prefix both must admit the same keys
  (checked through XLA's implementation of the same jax.nn.dot_product_attention arguments)."""
  rng = np.random.default_rng(0)
  prefix, seq = 3, 8
  q = rng.standard_normal((2, seq, 2, 4)).astype(np.float32)
  k, v = (rng.standard_normal((2, prefix + seq, 2, 4)).astype(np.float32) for _ in range(2))
  mask = peft_lib.prefix_mask(encoder_lib.attention_mask(np.array([[1] * seq, [1] * 5 + [0] * 3])), prefix)
  assert mask.key_lengths_B.tolist() == [prefix + seq, prefix + 5] and mask.segment_ids_BxS is None
  by_lengths = jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=mask.key_lengths_B, implementation="xla")
  by_mask = attention_lib.dot_product_attention(q, k, v, mask, implementation="xla")
  np.testing.assert_allclose(by_lengths, by_mask, atol=1e-6)


@pytest.mark.parametrize("kind", ["tagging", "qa"])
def test_lora_peft_export_of_token_tasks_loads_in_hf_peft_with_our_logits(tmp_path, kind):
  """Tagging and extractive QA with LoRA: `PeftModel.from_pretrained(base, adapter)` called with the token type
  ids of a pair gives our logits (peft's PeftModelForQuestionAnswering drops token_type_ids, so a QUESTION_ANS
  adapter would read every token as segment A)."""
  import json
  spec = {"tagging": tasks.TaskSpec("probe_tags", "tagging", ("text",), "label", ("O", "B", "I")),
          "qa": tasks.TaskSpec("probe_qa", "qa", ("question", "context"), "answers", ())}[kind]
  config = dataclasses.replace(BERT, lora_rank=4, lora_alpha=8.0, lora_targets=("query", "key", "value", "output"))
  model = heads.MODELS[kind](config, num_labels=spec.num_labels)
  ids = np.zeros((1, 8), np.int32)
  params = _perturbed_peft(jax.tree_util.tree_map(np.asarray, nn.meta.unbox(
      model.init(jax.random.key(0), ids, ids, ids)["params"])))
  adapter = peft_export.write_peft_dir(params, config, spec, str(tmp_path))
  with open(os.path.join(adapter, "adapter_config.json")) as f:
    saved = json.load(f)
  head = "qa_outputs" if kind == "qa" else "classifier"
  assert saved["peft_type"] == "LORA" and head in saved["modules_to_save"]
  assert peft_export.check_peft_dir(params, config, spec, str(tmp_path)) <= 1e-4


def test_export_all_without_a_transformers_class_skips_the_hf_peft_export(tmp_path):
  """NEZHA has no class in transformers 5: a LoRA or prompt run still ends with its native export (and the merged
  directory, checked bit for bit) instead of failing after training."""
  from bert_jax.models.nezha import NezhaConfig
  import transformers
  base = NezhaConfig(vocab_size=120, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=48,
                     max_position_embeddings=64, **NO_DROPOUT)
  assert not hasattr(transformers, task_export.hf_class(base, "classification"))
  logged = []
  for overrides in (dict(lora_rank=4), dict(prompt_kind="prompt", prompt_length=3)):
    config = dataclasses.replace(base, **overrides)
    params = _perturbed_peft(_init(config))
    workdir = tmp_path / config.prompt_kind
    out = peft_export.export_all(params, config, SPEC, str(workdir), log=logged.append)
    assert "peft_max_logit_diff" not in out
    assert (workdir / "bert_jax_peft" / "model.safetensors").exists() and not (workdir / "hf_peft").exists()
  assert sum(line.startswith("no HF peft export") for line in logged) == 2, logged
