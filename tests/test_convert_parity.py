"""Numerical parity with HF PyTorch BertForPreTraining through the conversion table."""
import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import torch  # the [torch] extra; scripts/test.sh installs it, so a missing torch fails rather than skips
import transformers

from bert_jax.convert import hf_dir, hf_params  # noqa: E402
from bert_jax.models import name_tables as nt  # noqa: E402
from bert_jax.models.bert import BertConfig  # noqa: E402
from bert_jax.models.bert import hf_names  # noqa: E402
from bert_jax.models.pretraining import EncoderWithHeads  # noqa: E402
from bert_jax.objectives import masked_lm  # noqa: E402

torch.manual_seed(0)


def BertForPreTraining(config):
  """BERT's pretraining model: the encoder with MLM and NSP heads."""
  return EncoderWithHeads(config, heads=("mlm", "nsp"))


def _hf_config_dict(config):
  """config.json fields of HF BertForPreTraining for this config."""
  return hf_dir.hf_config_dict(config, ("encoder", "pooler", "mlm", "nsp"))


def _config(size, **kw):
  return BertConfig.from_size(size, vocab_size=kw.pop("vocab_size", 1000), **kw)


def _batch(batch=3, seq=24, vocab=1000, predictions=5, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(5, vocab, (batch, seq)).astype(np.int64)
  lengths = [seq, seq - 7, seq // 2]
  mask = (np.arange(seq)[None, :] < np.array(lengths)[:, None]).astype(np.int64)
  ids[mask == 0] = 0
  segments = (np.arange(seq)[None, :] >= np.array([l // 2 for l in lengths])[:, None]).astype(np.int64) * mask
  positions = np.stack([np.sort(rng.choice(np.arange(1, l - 1), predictions, replace=False)) for l in lengths])
  labels = rng.integers(5, vocab, (batch, predictions))
  weights = np.ones((batch, predictions), np.float32)
  weights[2, -2:] = 0.0
  nsp = np.array([0, 1, 0])
  return dict(input_ids=ids, input_mask=mask, segment_ids=segments, masked_lm_positions=positions,
              masked_lm_ids=labels, masked_lm_weights=weights, next_sentence_labels=nsp)


def _hf_model(config, state_dict=None):
  hf = transformers.BertForPreTraining(transformers.BertConfig(**_hf_config_dict(config)))
  if state_dict is not None:
    result = hf.load_state_dict({k: torch.from_numpy(np.array(v, np.float32)) for k, v in state_dict.items()},
                                strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    assert set(result.missing_keys) <= set(hf_names.TIED_HF_KEYS), result.missing_keys
    hf.tie_weights()
  return hf.eval()


def _hf_logits(hf, b):
  with torch.no_grad():
    out = hf(input_ids=torch.from_numpy(b["input_ids"]), attention_mask=torch.from_numpy(b["input_mask"]),
             token_type_ids=torch.from_numpy(b["segment_ids"]))
  return out.prediction_logits.numpy(), out.seq_relationship_logits.numpy()


def _our_logits(config, params, b):
  out = BertForPreTraining(config).apply({"params": params}, jnp.asarray(b["input_ids"]),
                                         jnp.asarray(b["input_mask"]), jnp.asarray(b["segment_ids"]), None)
  return np.asarray(out["mlm_logits"], np.float32), np.asarray(out["nsp_logits"], np.float32)


def _init(config, seed=0):
  ids = jnp.zeros((1, 8), jnp.int32)
  return nn.unbox(jax.jit(BertForPreTraining(config).init)(jax.random.key(seed), ids, ids, ids)["params"])


@pytest.mark.parametrize("size,scan,fused", [("tiny", False, False), ("tiny", True, False), ("base", False, False),
                                             ("tiny", True, True)])
def test_ours_to_hf_logits_match(size, scan, fused):
  config = _config(size, scan_layers=scan, fused_qkv=fused)
  params = _init(config)
  b = _batch()
  hf = _hf_model(config, hf_params.params_to_hf(params, config))
  hf_mlm, hf_nsp = _hf_logits(hf, b)
  mlm, nsp = _our_logits(config, params, b)
  assert np.max(np.abs(mlm - hf_mlm)) <= 1e-4
  assert np.max(np.abs(nsp - hf_nsp)) <= 1e-4


@pytest.mark.parametrize("size,scan,fused", [("tiny", False, False), ("tiny", True, False), ("base", True, False),
                                             ("tiny", False, True)])
def test_hf_to_ours_logits_match(size, scan, fused):
  config = _config(size, scan_layers=scan, fused_qkv=fused)
  hf = _hf_model(config)  # HF's own random init
  state = {k: v.numpy() for k, v in hf.state_dict().items()}
  params = hf_params.hf_to_params(state, config)
  b = _batch(seed=1)
  hf_mlm, hf_nsp = _hf_logits(hf, b)
  mlm, nsp = _our_logits(config, params, b)
  assert np.max(np.abs(mlm - hf_mlm)) <= 1e-4
  assert np.max(np.abs(nsp - hf_nsp)) <= 1e-4


def test_round_trip_is_exact_with_padded_vocab_and_scan():
  config = _config("tiny", scan_layers=True, vocab_pad_multiple=128)
  params = _init(config)
  state = hf_params.params_to_hf(params, config)
  assert state["bert.embeddings.word_embeddings.weight"].shape == (1000, 128)
  assert state["cls.predictions.bias"].shape == (1000,)
  back = hf_params.hf_to_params(state, config)
  real = lambda p: p["encoder"]["embeddings"]["word_embeddings"]["embedding"][:1000]
  np.testing.assert_array_equal(real(back), real(params))
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(nt.unscan_params(params, config.num_layers)),
                          jax.tree_util.tree_leaves(nt.unscan_params(back, config.num_layers))):
    assert a.shape == b.shape, jax.tree_util.keystr(path)


def test_fused_and_separate_qkv_convert_into_each_other_exactly():
  separate = _config("tiny", scan_layers=True)
  fused = dataclasses.replace(separate, fused_qkv=True)
  params = _init(separate)
  via_hf = hf_params.hf_to_params(hf_params.params_to_hf(params, separate), fused)
  qkv = via_hf["encoder"]["layers"]["layer"]["attention"]["qkv"]
  attention = params["encoder"]["layers"]["layer"]["attention"]
  for j, name in enumerate(("query", "key", "value")):  # [layers, H, 3, heads, head_dim]: slot j is `name`
    np.testing.assert_array_equal(qkv["kernel"][:, :, j], attention[name]["kernel"])
    np.testing.assert_array_equal(qkv["bias"][:, j], attention[name]["bias"])
  b = _batch()
  np.testing.assert_allclose(_our_logits(fused, via_hf, b)[0], _our_logits(separate, params, b)[0], atol=1e-5)
  back = hf_params.params_to_hf(via_hf, fused)
  assert back.keys() == hf_params.params_to_hf(params, separate).keys()


def test_bf16_params_convert_and_match():
  config = _config("tiny", param_dtype="bfloat16", dtype="float32")
  params = _init(config)
  assert params["encoder"]["pooler"]["kernel"].dtype == jnp.bfloat16
  state = hf_params.params_to_hf(params, config)
  assert state["bert.pooler.dense.weight"].dtype == jnp.bfloat16
  hf = _hf_model(config, state)  # loaded as fp32: bf16 values are exactly representable
  b = _batch()
  hf_mlm, _ = _hf_logits(hf, b)
  mlm, _ = _our_logits(dataclasses.replace(config, param_dtype="float32"),
                       jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), params), b)
  assert np.max(np.abs(mlm - hf_mlm)) <= 1e-4
  back = hf_params.hf_to_params(state, config, param_dtype=jnp.bfloat16)
  assert back["encoder"]["pooler"]["kernel"].dtype == jnp.bfloat16


def test_query_kernel_gradient_matches_torch():
  config = _config("tiny")
  params = _init(config, seed=3)
  b = _batch(seed=2)
  hf = _hf_model(config, hf_params.params_to_hf(params, config))

  def loss_fn(p):
    out = BertForPreTraining(config).apply({"params": p}, b["input_ids"], b["input_mask"], b["segment_ids"],
                                           b["masked_lm_positions"])
    m = masked_lm.mlm_sums(out["mlm_logits"], b["masked_lm_ids"], b["masked_lm_weights"])
    n = masked_lm.sentence_sums(out["nsp_logits"], b["next_sentence_labels"])
    return m["loss_sum"] / jnp.maximum(m["weight_sum"], 1e-5) + n["loss_sum"] / n["count"]

  ours = np.asarray(jax.jit(jax.grad(loss_fn))(params)["encoder"]["layer_1"]["attention"]["query"]["kernel"])

  out = hf(input_ids=torch.from_numpy(b["input_ids"]), attention_mask=torch.from_numpy(b["input_mask"]),
           token_type_ids=torch.from_numpy(b["segment_ids"]))
  pos = torch.from_numpy(b["masked_lm_positions"])
  logits = torch.gather(out.prediction_logits, 1, pos[..., None].expand(-1, -1, config.vocab_size))
  weights = torch.from_numpy(b["masked_lm_weights"])
  xent = torch.nn.functional.cross_entropy(logits.reshape(-1, config.vocab_size),
                                           torch.from_numpy(b["masked_lm_ids"]).reshape(-1), reduction="none")
  mlm = (xent * weights.reshape(-1)).sum() / weights.sum()
  nsp = torch.nn.functional.cross_entropy(out.seq_relationship_logits, torch.from_numpy(b["next_sentence_labels"]))
  (mlm + nsp).backward()
  theirs_weight = hf.bert.encoder.layer[1].attention.self.query.weight.grad.numpy()
  theirs = nt.qkv_kernel.from_hf(theirs_weight, config)
  rel = np.linalg.norm(ours - theirs) / np.linalg.norm(theirs)
  assert rel <= 1e-4, rel


@pytest.mark.parametrize("act", ["relu", "silu", "gelu_pytorch_tanh"])
def test_other_ffn_activations_export_and_import_under_their_hf_names(act, tmp_path):
  """ERNIE 1.0's ReLU and the other ACT2FN names a BERT config.json may carry: written as given, our logits within
  1e-4 of transformers running that activation, read back into the same config."""
  import hf_helpers
  config = _config("tiny", hidden_act=act)
  params = hf_helpers.perturb_params(_init(config))
  hf_dir.write_hf_dir(params, config, str(tmp_path))
  assert json.loads((tmp_path / "config.json").read_text())["hidden_act"] == act
  assert hf_dir.check_hf_dir(params, config, str(tmp_path)) < 1e-4
  _, again = hf_dir.read_hf_dir(str(tmp_path))
  assert again.hidden_act == act and again == config


def test_an_activation_we_lack_is_refused_naming_ours(tmp_path):
  config = _hf_config_dict(_config("tiny"))
  (tmp_path / "config.json").write_text(json.dumps({**config, "hidden_act": "quick_gelu",
                                                    "architectures": ["BertForPreTraining"]}))
  with pytest.raises(ValueError, match=r"hidden_act 'quick_gelu' is not supported; bert_jax has \('gelu', 'gelu_new'"):
    hf_dir.read_hf_dir(str(tmp_path))


def test_parity_check_runs_our_side_at_full_float32(tmp_path, monkeypatch):
  """XLA on a GPU computes float32 matmuls in TF32 unless asked otherwise: to_hf failed its 1e-4 check there at
  1.8e-3 (H200, BERT-base) although the weights were right. The check's forward must ask for full precision
  whatever the caller's default; XLA:CPU ignores the setting, so this records what the forward ran under."""
  config = _config("tiny")
  params = _init(config)
  hf_dir.write_hf_dir(params, config, str(tmp_path))
  seen = []
  real_apply = EncoderWithHeads.apply

  def recording_apply(self, *args, **kwargs):
    seen.append(jax.config.jax_default_matmul_precision)
    return real_apply(self, *args, **kwargs)

  monkeypatch.setattr(EncoderWithHeads, "apply", recording_apply)
  with jax.default_matmul_precision("tensorfloat32"):  # what a GPU does by default
    assert hf_dir.check_hf_dir(params, config, str(tmp_path)) < 1e-4
    assert hf_dir.check_read_back(params, config, str(tmp_path)) < 1e-4
  assert seen and set(seen) == {"highest"}, seen


def test_bfloat16_export_holds_torchs_rounding_of_the_weights(tmp_path):
  """to_hf --dtype=bfloat16 writes BF16 tensors (through safetensors' numpy API, so torch is not needed to write)
  that are exactly torch's rounding of the float32 export, and config.json says bfloat16."""
  from safetensors.torch import load_file
  config = _config("tiny")
  params = _init(config)
  hf_dir.write_hf_dir(params, config, str(tmp_path / "f32"))
  hf_dir.write_hf_dir(params, config, str(tmp_path / "bf16"), dtype="bfloat16")
  f32, bf16 = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("f32", "bf16"))
  assert sorted(f32) == sorted(bf16) and len(f32) > 20
  for name, value in f32.items():
    assert value.dtype == torch.float32 and bf16[name].dtype == torch.bfloat16, name
    assert torch.equal(bf16[name], value.to(torch.bfloat16)), name
  with open(tmp_path / "bf16" / "config.json") as f:
    assert json.load(f)["torch_dtype"] == "bfloat16"


def test_state_dict_problems_name_the_key():
  config = _config("tiny")
  state = hf_params.params_to_hf(_init(config), config)
  missing = dict(state)
  del missing["bert.encoder.layer.1.output.dense.bias"]
  with pytest.raises(KeyError, match=r"bert\.encoder\.layer\.1\.output\.dense\.bias"):
    hf_params.hf_to_params(missing, config)
  extra = {**state, "bert.encoder.layer.2.output.dense.bias": np.zeros(128)}
  with pytest.raises(KeyError, match=r"bert\.encoder\.layer\.2\.output\.dense\.bias"):
    hf_params.hf_to_params(extra, config)
  wrong = {**state, "bert.pooler.dense.weight": np.zeros((128, 64), np.float32)}
  with pytest.raises(ValueError, match=r"bert\.pooler\.dense\.weight.*\(128, 64\)"):
    hf_params.hf_to_params(wrong, config)
  smaller_vocab = {**state, "cls.predictions.bias": np.zeros(900, np.float32)}
  with pytest.raises(ValueError, match=r"cls\.predictions\.bias"):
    hf_params.hf_to_params(smaller_vocab, config)
  untied = {**state, "cls.predictions.decoder.weight": state["bert.embeddings.word_embeddings.weight"] + 1}
  with pytest.raises(ValueError, match="ties the decoder"):
    hf_params.hf_to_params(untied, config)
