"""ERNIE: HF parity both ways (ErnieForPreTraining, ErnieForMaskedLM, ErnieModel; task-type embeddings on and off),
the fine-tuning export, the exported tokenizer, ernie_base's size against HF's, and bad input refused by name."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from bert_jax.convert import hf_dir, hf_params, workdir
from bert_jax.core import configlib
from bert_jax.data import tokenizer as tokenizer_lib
from bert_jax.finetune import heads, task_export
from bert_jax.layers import common
from bert_jax.models import bert, ernie, registry
from bert_jax.models.pretraining import EncoderWithHeads

import hf_helpers

# ERNIE 1.0's own example sentence (the README of PaddlePaddle/ERNIE, and PaddleNLP's ernie-1.0 README): "Harbin is
# the capital of Heilongjiang, a famous international city of ice and snow culture."
HARBIN = "哈尔滨是黑龙江的省会，国际冰雪文化名城"
SMALL = dict(vocab_size=101, hidden_size=32, num_layers=1, num_heads=4, intermediate_size=48,
             max_position_embeddings=64)


def _hf_config(task_types: int, **overrides):
  return transformers.ErnieConfig(**{**dict(
      vocab_size=101, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, use_task_id=bool(task_types),
      task_type_vocab_size=task_types or 3), **overrides})


def _logits(hf, ids, mask, segments):
  with torch.no_grad():
    return hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
              token_type_ids=torch.from_numpy(segments))


@pytest.mark.parametrize("task_types", [0, 3], ids=["no_task_types", "task_types"])
@pytest.mark.parametrize("hf_cls,heads_", [(transformers.ErnieForPreTraining, ("mlm", "nsp")),
                                           (transformers.ErnieForMaskedLM, ("mlm",))],
                         ids=["ForPreTraining", "ForMaskedLM"])
def test_hf_parity_both_ways(hf_cls, heads_, task_types, tmp_path):
  # HF -> ours: every HF weight random (the task-type table's unused rows too), logits equal, names back bit-exact.
  hf = hf_helpers.randomize_torch(hf_cls(_hf_config(task_types)))
  state = {k: v.numpy() for k, v in hf.state_dict().items()}
  config = hf_dir.config_from_hf_json(hf.config.to_dict())
  assert type(config) is ernie.ErnieConfig and config.task_type_vocab_size == task_types
  params = hf_params.hf_to_params(state, config)
  has_task_table = "task_type_embeddings" in nn.unbox(params)["encoder"]["embeddings"]
  assert has_task_table == bool(task_types)
  ids, mask, segments = hf_dir.probe_batch(config)
  ours = EncoderWithHeads(config, heads_).apply({"params": params}, ids, mask, segments, None)
  out = _logits(hf, ids, mask, segments)
  names = ernie.FAMILY.hf_output_names(hf_cls.__name__)
  for our_key, hf_key in ((f"{h}_logits", names[f"{h}_logits"]) for h in heads_):
    assert np.max(np.abs(np.asarray(ours[our_key]) - getattr(out, hf_key).numpy())) < 1e-4, our_key
  back = hf_params.params_to_hf(params, config)
  assert set(back) == set(state) - set(ernie.FAMILY.tied_hf_keys) - ernie.FAMILY.ignored_hf_keys
  for k, v in back.items():
    np.testing.assert_array_equal(v, state[k], err_msg=k)
  # ours -> HF: our params perturbed, written as the family's class, reloaded by transformers and compared.
  mine = hf_helpers.perturb_params(params, seed=task_types + len(heads_))
  assert hf_dir.write_hf_dir(mine, config, str(tmp_path)) == hf_cls.__name__
  written = json.loads((tmp_path / "config.json").read_text())
  assert (written["model_type"], written["use_task_id"]) == ("ernie", bool(task_types))
  assert hf_dir.check_hf_dir(mine, config, str(tmp_path)) < 1e-4
  again, again_config = hf_dir.read_hf_dir(str(tmp_path))
  assert again_config == config
  for a, b in zip(jax.tree_util.tree_leaves(again), jax.tree_util.tree_leaves(mine)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_encoder_exports_as_ernie_model_and_a_bare_one_reads_back(tmp_path):
  """Encoder and pooler -> ErnieModel (hidden states compared in transformers); HF's own save_pretrained of a bare
  ErnieModel (keys without `ernie.`) reads back to the same weights."""
  config = hf_dir.config_from_hf_json(_hf_config(3).to_dict())
  ids, mask, segments = hf_dir.probe_batch(config)
  model = EncoderWithHeads(config, ("nsp",))  # the NSP head creates the pooler; only encoder/ is exported
  params = hf_helpers.perturb_params(nn.unbox(jax.jit(model.init)(jax.random.key(0), ids, mask, segments)["params"]))
  encoder_only = {"encoder": params["encoder"]}
  assert hf_dir.write_hf_dir(encoder_only, config, str(tmp_path / "ours")) == "ErnieModel"
  assert hf_dir.check_hf_dir(encoder_only, config, str(tmp_path / "ours")) < 1e-4
  bare = hf_helpers.randomize_torch(transformers.ErnieModel(_hf_config(3)), seed=4)
  bare.save_pretrained(str(tmp_path / "bare"))
  read, _ = hf_dir.read_hf_dir(str(tmp_path / "bare"))
  np.testing.assert_array_equal(read["encoder"]["embeddings"]["task_type_embeddings"]["embedding"],
                                bare.embeddings.task_type_embeddings.weight.detach().numpy())
  np.testing.assert_array_equal(read["encoder"]["pooler"]["kernel"], bare.pooler.dense.weight.detach().numpy().T)


def test_finetuned_model_exports_as_hf_ernie_sequence_classifier():
  config = hf_dir.config_from_hf_json(_hf_config(3).to_dict())
  model = heads.SequenceClassifier(config, num_labels=3)
  ids, mask, segments = hf_dir.probe_batch(config)
  params = hf_helpers.perturb_params(nn.unbox(jax.jit(model.init)(jax.random.key(0), ids, mask, segments)["params"]))
  assert task_export.hf_class(config, "classification") == "ErnieForSequenceClassification"
  hf = transformers.ErnieForSequenceClassification(transformers.ErnieConfig(
      **hf_dir.hf_config_dict(config, ["encoder"]), num_labels=3)).eval()
  state = task_export.params_to_hf(params, config, "classification")
  result = hf.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, strict=False)
  assert not result.unexpected_keys and set(result.missing_keys) <= ernie.FAMILY.ignored_hf_keys, result
  theirs = _logits(hf, ids, mask, segments).logits.numpy()
  ours = np.asarray(jax.jit(model.apply)({"params": params}, ids, mask, segments)["logits"])
  assert np.max(np.abs(ours - theirs)) < 1e-4


def _wordpiece_vocab(path):
  """A lower-cased Chinese-style WordPiece vocab.txt: BERT's special tokens, one piece per character of the
  paper's sentence (CJK is split per character), and letters/digits as word-initial and ## pieces."""
  chars = sorted(set(HARBIN))
  ascii_pieces = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789")
  pieces = list(tokenizer_lib.SPECIAL_TOKENS) + chars + ascii_pieces + ["##" + p for p in ascii_pieces]
  pieces += list(".,;:'!?-[]<>()\"")
  path.write_text("\n".join(pieces) + "\n", encoding="utf-8")
  return str(path), len(pieces)


def test_to_hf_writes_a_wordpiece_tokenizer_that_auto_classes_load(tmp_path):
  vocab_file, vocab_size = _wordpiece_vocab(tmp_path / "vocab.txt")
  config = ernie.ErnieConfig(**{**SMALL, "vocab_size": vocab_size, "vocab_pad_multiple": 8})
  ids, mask, segments = hf_dir.probe_batch(config)
  params = nn.unbox(EncoderWithHeads(config, ("mlm", "nsp")).init(jax.random.key(0), ids, mask, segments)["params"])
  hf_dir.write_hf_dir(params, config, str(tmp_path / "hf"), vocab_file=vocab_file, lower_case=True)
  tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"), local_files_only=True)
  ours = tokenizer_lib.load(vocab_file, True)
  assert tok(HARBIN, "Ice and snow")["input_ids"] == (
      [ours.cls_id] + ours.encode(HARBIN) + [ours.sep_id] + ours.encode("Ice and snow") + [ours.sep_id])
  assert len(ours.encode(HARBIN)) == len(HARBIN) and ours.unk_id not in ours.encode(HARBIN)  # per character
  hf = transformers.AutoModelForPreTraining.from_pretrained(str(tmp_path / "hf"))
  assert type(hf).__name__ == "ErnieForPreTraining"


def _count_ours(overrides):
  """Weights of ernie_base's pretraining model (trunk, pooler, MLM and NSP heads), by eval_shape."""
  config = configlib.load("ernie_base", {"model.vocab_pad_multiple": 1, **overrides})
  assert config.train.objective == "mlm_nsp"
  model_config = registry.encoder_config(config.model.to_dict())
  ids = jnp.zeros((1, 8), jnp.int32)
  model = registry.family_of(model_config).build_model(model_config, ("mlm", "nsp"))
  return common.count_params(jax.eval_shape(model.init, jax.random.key(0), ids, ids, ids)), model_config


@pytest.mark.parametrize("task_types", [0, 3])
def test_ernie_base_has_hf_ernie_for_pretraining_size(task_types):
  """ERNIE 1.0 base: ~100M weights (18000-piece vocabulary, 513 positions); ours equal HF's for the same config."""
  ours, config = _count_ours({"model.task_type_vocab_size": task_types})
  hf_config = transformers.ErnieConfig(**hf_dir.hf_config_dict(config, ["encoder", "pooler", "mlm", "nsp"]))
  with torch.device("meta"):  # shapes only: no 100M-weight allocation
    theirs = sum(p.numel() for p in transformers.ErnieForPreTraining(hf_config).parameters())
  assert ours == theirs, (ours, theirs)
  assert 99e6 < ours < 101e6


def test_bad_input_is_refused_naming_the_problem(tmp_path):
  # A BERT directory relabelled as ERNIE (config.json edited, weights still bert.*) names both.
  bert_hf = hf_helpers.randomize_torch(transformers.BertForMaskedLM(transformers.BertConfig(**{
      k: v for k, v in _hf_config(0).to_dict().items() if k in ("vocab_size", "hidden_size", "num_hidden_layers",
                                                                 "num_attention_heads", "intermediate_size")})))
  bert_hf.save_pretrained(str(tmp_path / "relabelled"))
  config_file = tmp_path / "relabelled" / "config.json"
  config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "model_type": "ernie"}))
  with pytest.raises(ValueError, match=r"model_type 'ernie' but the weights are named for 'bert' \(bert\.\*\)"):
    hf_dir.read_hf_dir(str(tmp_path / "relabelled"))
  # An ERNIE params checkpoint does not start a BERT run.
  config = ernie.ErnieConfig(**SMALL)
  ids = np.ones((1, 8), np.int32)
  params = nn.unbox(EncoderWithHeads(config, ("mlm",)).init(jax.random.key(0), ids, ids, ids)["params"])
  workdir.write_params_checkpoint(str(tmp_path / "ernie"), jax.device_get(params), config)
  bert_config = bert.BertConfig(**SMALL)
  like = nn.unbox(EncoderWithHeads(bert_config, ("mlm",)).init(jax.random.key(0), ids, ids, ids)["params"])
  with pytest.raises(ValueError, match=r"'ernie' checkpoint but this run's model family is 'bert'"):
    workdir.restore_params(str(tmp_path / "ernie"), like, jax.tree_util.tree_map(lambda x: x.sharding, like),
                           bert_config)
  # Weights with a task-type table under a config that says use_task_id=false.
  state = {k: v.numpy() for k, v in hf_helpers.randomize_torch(
      transformers.ErnieForMaskedLM(_hf_config(3))).state_dict().items()}
  with pytest.raises(KeyError, match="unexpected keys.*task_type_embeddings"):
    hf_params.hf_to_params(state, hf_dir.config_from_hf_json(_hf_config(0).to_dict()))
  # Task types only where HF has a place for them; ERNIE's HF classes need token types and the pooler.
  with pytest.raises(ValueError, match=r"task-type embeddings exist only in model.family='ernie'.*'bert'"):
    bert.BertConfig(task_type_vocab_size=3)
  with pytest.raises(ValueError, match="type_vocab_size must be >= 1"):
    ernie.ErnieConfig(type_vocab_size=0)
  # The released ERNIE 1.0 uses ReLU and LayerNorm eps 1e-5: read as they are; an activation we lack is refused.
  released = hf_dir.config_from_hf_json(_hf_config(0, hidden_act="relu", layer_norm_eps=1e-5).to_dict())
  assert (released.hidden_act, released.layer_norm_eps) == ("relu", 1e-5)
  with pytest.raises(ValueError, match=r"hidden_act 'quick_gelu' is not supported.*'gelu'"):
    hf_dir.config_from_hf_json(_hf_config(0, hidden_act="quick_gelu").to_dict())
