"""Multiple choice: every family's head exported to its transformers ForMultipleChoice class with the same
scores, and its LoRA export through HF peft. Features and labels: test_task_features; a run end to end:
test_finetune."""
import dataclasses

import flax.linen as nn
import jax
import numpy as np
import pytest
import transformers

import hf_helpers
from bert_jax.convert import hf_dir
from bert_jax.finetune import heads, peft_export, peft_methods, task_export, tasks
from bert_jax.models import registry

SPEC = tasks.TaskSpec("t", "multiple_choice", ("context",), choice_keys=("choices",))
SIZES = dict(vocab_size=128, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128,
             hidden_dropout=0.0, attention_dropout=0.0)


def _config(family: str):
  config_cls = registry.get_family(family).config_cls
  return config_cls(**SIZES, max_position_embeddings=64 + config_cls.position_offset)


def _params(model, config):
  ids, mask, segments = (x[None] for x in hf_dir.probe_batch(config))
  return hf_helpers.perturb_params(nn.unbox(jax.jit(model.init)(jax.random.key(0), ids, mask, segments)["params"]))


@pytest.mark.parametrize("family", sorted(registry.FAMILIES))
def test_each_family_exports_to_its_multiple_choice_class_with_the_same_scores(family, tmp_path):
  """Random weights everywhere, so a head row mapped to the wrong HF name (RoBERTa's pooler, ELECTRA's sequence
  summary, DistilBERT's pre_classifier) shows as a score difference; the probe's padded row is a second choice."""
  config = _config(family)
  model = heads.MODELS["multiple_choice"](config)
  params = _params(model, config)
  task_export.write_hf_dir(params, config, SPEC, str(tmp_path))
  name = task_export.hf_class(config, "multiple_choice")
  assert name == registry.get_family(family).hf_architectures[("mlm",)].replace("ForMaskedLM", "ForMultipleChoice")
  diff = task_export.check_hf_dir(model, params, SPEC, str(tmp_path))
  if hasattr(transformers, name):
    assert diff < 1e-4
  else:  # NEZHA left transformers in v5: the weights file is checked bit for bit instead
    assert diff is None


def test_multiple_choice_scores_do_not_depend_on_the_other_choices():
  """Choices are scored independently (the softmax over them is the loss's), so scoring a choice alone or beside
  others gives the same number: no attention or pooling crosses the choice axis."""
  config = _config("bert")
  model = heads.MODELS["multiple_choice"](config)
  ids, mask, segments = (x[None] for x in hf_dir.probe_batch(config))
  params = _params(model, config)
  both = model.apply({"params": params}, ids, mask, segments)["logits"]
  alone = [model.apply({"params": params}, ids[:, i:i + 1], mask[:, i:i + 1], segments[:, i:i + 1])["logits"]
           for i in range(2)]
  np.testing.assert_allclose(np.concatenate(alone, 1), both, rtol=1e-5, atol=1e-6)


def test_a_multiple_choice_head_scores_with_one_output():
  config = _config("bert")
  ids = np.zeros((1, 2, 8), np.int32)
  with pytest.raises(ValueError, match="one output, not 3"):
    heads.MultipleChoice(config, num_labels=3).init(jax.random.key(0), ids, ids, ids)


def test_lora_multiple_choice_exports_through_peft_with_the_same_scores(tmp_path):
  """RoBERTa's: its pooler is the head's dense, trained and saved in base/, outside the adapter's modules_to_save."""
  config = dataclasses.replace(_config("roberta"), **peft_methods.model_overrides("lora", None))
  model = heads.MODELS["multiple_choice"](config)
  params = _params(model, config)
  adapter = peft_export.write_peft_dir(params, config, SPEC, str(tmp_path / "hf_peft"))
  assert peft_export.check_peft_dir(params, config, SPEC, str(tmp_path / "hf_peft")) < 1e-4, adapter
