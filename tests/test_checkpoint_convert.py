"""Checkpoints across meshes and after corruption; bert_jax.convert to/from HF and from TF1."""
import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest
import torch
import transformers

from bert_jax.convert import hf_dir, hf_params, tf1, workdir
from bert_jax.core import checkpoint as checkpoint_lib
from bert_jax.core import sharding
from bert_jax.data import corpora
from bert_jax.models.pretraining import EncoderWithHeads
import hf_helpers
from train_helpers import PYDOCS_STEPS, SMALL, build, config, pretrained_tiny, random_batch
from cli_helpers import cli_env

ENV = cli_env()
PRETRAINING_SECTIONS = ("encoder", "pooler", "mlm", "nsp")


def BertForPreTraining(model_config):
  """BERT's pretraining model: the encoder with MLM and NSP heads."""
  return EncoderWithHeads(model_config, heads=("mlm", "nsp"))


def _hf_config_dict(model_config):
  """config.json fields of HF BertForPreTraining for this config."""
  return hf_dir.hf_config_dict(model_config, PRETRAINING_SECTIONS)


def _mesh(shape):
  return sharding.create_mesh(dict(zip(sharding.MESH_AXES, shape)), devices=jax.devices()[:int(np.prod(shape))])


def _trained_state(mesh, cfg):
  state, step_fn, _, rules = build(cfg, mesh)
  with nn.logical_axis_rules(rules):
    for s in range(2):
      state, _ = step_fn(state, sharding.global_batch(random_batch(16, seed=s), mesh))
  return state


@pytest.mark.parametrize("saved_on,restored_on", [((8, 1, 1), (2, 1, 1)), ((2, 2, 2), (8, 1, 1))])
def test_restore_onto_another_mesh(tmp_path, saved_on, restored_on):
  cfg = config(**{"checkpoint.every_steps": 1, "checkpoint.async_save": False})
  saved = _trained_state(_mesh(saved_on), cfg)
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path), cfg, log=lambda m: None)
  ckpt.save(2, saved, force=True)
  ckpt.wait()
  target_mesh = _mesh(restored_on)
  fresh, *_ = build(cfg, target_mesh)
  restored = checkpoint_lib.Checkpointer(str(tmp_path), cfg).restore_or_init(
      fresh, jax.tree_util.tree_map(lambda x: x.sharding, fresh))
  assert int(restored.step) == 2
  for a, b in zip(jax.tree_util.tree_leaves(saved), jax.tree_util.tree_leaves(restored)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  kernel = restored.params["encoder"]["layer_0"]["intermediate"]["kernel"]
  assert kernel.sharding.mesh.devices.size == int(np.prod(restored_on))


def _damage(step_dir, how):
  for root, _, files in os.walk(step_dir / "state"):
    for name in files:
      path = os.path.join(root, name)
      if how == "truncate_all" and not name.endswith(".json"):
        open(path, "wb").close()
      elif how == "halve_data" and os.path.basename(root) == "d":
        data = open(path, "rb").read()
        open(path, "wb").write(data[:len(data) // 2])
  if how == "delete_metadata":
    os.remove(step_dir / "state" / "_METADATA")


def test_damaged_latest_checkpoint_is_moved_aside_and_saved_again(tmp_path, capfd):
  cfg = config(**{"checkpoint.every_steps": 1, "checkpoint.async_save": False})
  mesh = _mesh((2, 1, 1))
  state = _trained_state(mesh, cfg)
  fresh, *_ = build(cfg, mesh)
  shardings = jax.tree_util.tree_map(lambda x: x.sharding, fresh)
  for how in ("truncate_all", "halve_data", "delete_metadata"):
    directory = tmp_path / how / "checkpoints"
    ckpt = checkpoint_lib.Checkpointer(str(directory), cfg, log=lambda m: None)
    ckpt.save(5, state, force=True)
    ckpt.save(10, state.replace(step=state.step + 8), force=True)
    ckpt.wait()
    _damage(directory / "10", how)
    messages = []
    # Readers (convert, fine-tuning) skip the damaged step, saying so, before any training run moves it.
    _, _, step = workdir.load_workdir_tree(str(tmp_path / how), log=messages.append)
    assert step == 5 and "step 10" in messages[0] and "is damaged" in messages[0], (how, messages)
    messages.clear()
    ckpt = checkpoint_lib.Checkpointer(str(directory), cfg, log=messages.append)
    restored = ckpt.restore_or_init(fresh, shardings)
    assert int(restored.step) == int(state.step), how
    warning = next(m for m in messages if "WARNING: checkpoint at step 10" in m)
    assert "is damaged" in warning and "falling back" in warning, (how, warning)
    assert any("resumed from checkpoint at step 5" in m for m in messages), how
    assert "Event loop is closed" not in capfd.readouterr().err, how
    # The damaged step went to damaged/, so step 10 is saved afresh and readers see a good newest step.
    assert [d.name.split("-")[0] for d in (directory / "damaged").iterdir()] == ["10"]
    assert ckpt.manager.all_steps() == [5]
    assert ckpt.save(10, restored.replace(step=restored.step + 8), force=True)
    ckpt.wait()
    manager, latest = checkpoint_lib.latest_step(str(directory))
    assert latest == 10
    params = checkpoint_lib.load_saved_params(manager, 10)
    np.testing.assert_array_equal(params["encoder"]["layer_0"]["intermediate"]["kernel"],
                                  np.asarray(state.params["encoder"]["layer_0"]["intermediate"]["kernel"]))


def test_checkpoint_of_another_structure_is_refused_not_moved(tmp_path):
  cfg = config(**{"checkpoint.every_steps": 1, "checkpoint.async_save": False})
  mesh = _mesh((2, 1, 1))
  state = _trained_state(mesh, cfg)
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path), cfg, log=lambda m: None)
  ckpt.save(2, state, force=True)
  ckpt.wait()
  other, *_ = build(config(**{"optim.name": "lamb"}), mesh)
  with pytest.raises(ValueError, match="holds a train state of another structure than this run builds"):
    checkpoint_lib.Checkpointer(str(tmp_path), cfg).restore_or_init(
        other, jax.tree_util.tree_map(lambda x: x.sharding, other))
  assert checkpoint_lib.Checkpointer(str(tmp_path), cfg).manager.all_steps() == [2]


@pytest.fixture(scope="module")
def tiny_workdir():
  """A tiny model pretrained on pydocs through the CLI: the one test_finetune.py reads (built once per test run)."""
  return pretrained_tiny()


def test_to_hf_without_the_export_packages_names_them_and_the_fix(tiny_workdir, tmp_path):
  """The Quick start installs no transformers or safetensors; to_hf then fails before any work, naming both and the
  pip command, without a traceback."""
  blocker = tmp_path / "blocker"
  blocker.mkdir()
  (blocker / "sitecustomize.py").write_text(
      "import sys\nfor name in ('transformers', 'safetensors', 'torch'):\n  sys.modules[name] = None\n")
  env = {**ENV, "PYTHONPATH": os.pathsep.join([str(blocker), os.environ.get("PYTHONPATH", "")])}
  out = tmp_path / "hf"
  result = subprocess.run([sys.executable, "-m", "bert_jax.convert", "to_hf", f"--workdir={tiny_workdir}",
                           f"--output={out}"], capture_output=True, text=True, env=env, timeout=300)
  assert result.returncode != 0
  assert "safetensors and transformers are not installed" in result.stderr, result.stderr[-3000:]
  assert "Fix: pip install -e '.[torch]'" in result.stderr and "Traceback" not in result.stderr
  assert not out.exists()


def test_round_trip_to_hf_logits_and_tokenizer(tiny_workdir, tmp_path):
  out = tmp_path / "hf"
  result = subprocess.run([sys.executable, "-m", "bert_jax.convert", "to_hf", f"--workdir={tiny_workdir}",
                           f"--output={out}"], capture_output=True, text=True, env=ENV, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "checked: max |logit difference| vs transformers" in result.stdout
  assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(out))
  assert json.load(open(out / "config.json"))["vocab_size"] == 8000  # padded 8064 cut back

  params, model_config, cfg, step = workdir.load_workdir_params(str(tiny_workdir))
  assert step == PYDOCS_STEPS
  hf = transformers.BertForPreTraining.from_pretrained(str(out)).eval()
  rng = np.random.default_rng(1)
  ids = rng.integers(5, 8000, (3, 40))
  mask = np.ones_like(ids)
  mask[2, 25:] = 0
  seg = (np.arange(40)[None] > 17).astype(np.int64) * mask
  with torch.no_grad():
    theirs = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                token_type_ids=torch.from_numpy(seg))
  ours = BertForPreTraining(model_config).apply({"params": params}, ids, mask, seg, None)
  assert np.max(np.abs(np.asarray(ours["mlm_logits"]) - theirs.prediction_logits.numpy())) <= 1e-4
  assert np.max(np.abs(np.asarray(ours["nsp_logits"]) - theirs.seq_relationship_logits.numpy())) <= 1e-4

  from bert_jax.data import tokenizer as tokenizer_lib
  manifest = json.load(open(next((tiny_workdir / "data").glob("*/manifest.json"))))
  tok = tokenizer_lib.load(manifest["vocab"]["file"])
  hf_tok = transformers.AutoTokenizer.from_pretrained(str(out))
  corpus_file = next(pathlib.Path(corpora.run_cache_dir(str(tiny_workdir / "data"))).glob("pydocs-*.txt"))
  sentences = [l for l in open(corpus_file, encoding="utf-8").read().splitlines() if l][::150][:100]
  assert len(sentences) == 100
  for s in sentences:
    assert hf_tok(s, add_special_tokens=False)["input_ids"] == tok.encode(s), s
  pair = hf_tok(sentences[0], sentences[1])
  assert pair["input_ids"][0] == tok.cls_id and pair["input_ids"][-1] == tok.sep_id
  assert pair["token_type_ids"][-1] == 1


def test_from_hf_writes_an_init_checkpoint(tmp_path):
  model_config = SMALL
  hf = transformers.BertForPreTraining(transformers.BertConfig(**_hf_config_dict(model_config))).eval()
  hf_path = tmp_path / "hf"
  hf.save_pretrained(str(hf_path))
  result = subprocess.run([sys.executable, "-m", "bert_jax.convert", "from_hf", f"--hf_dir={hf_path}",
                           f"--output={tmp_path / 'ckpt'}"], capture_output=True, text=True, env=ENV, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert json.load(open(tmp_path / "ckpt" / workdir.PARAMS_CONFIG_FILE))["family"] == "bert"
  expected = hf_params.hf_to_params({k: v.numpy() for k, v in hf.state_dict().items()}, model_config)
  like = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), expected)
  shardings = jax.tree_util.tree_map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), expected)
  restored = workdir.restore_params(str(tmp_path / "ckpt"), like, shardings, model_config)
  for a, b in zip(jax.tree_util.tree_leaves(expected), jax.tree_util.tree_leaves(restored)):
    np.testing.assert_array_equal(a, np.asarray(b))
  # A scanned, fused-QKV run starts from the same (per-layer, separate-QKV) checkpoint: layout converted.
  scanned_fused = dataclasses.replace(model_config, scan_layers=True, fused_qkv=True)
  target = hf_params.hf_to_params({k: v.numpy() for k, v in hf.state_dict().items()}, scanned_fused)
  target_like = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), target)
  target_shardings = jax.tree_util.tree_map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), target)
  with pytest.raises(ValueError, match="different parameter tree"):  # not converted: the saved layout's config
    workdir.restore_params(str(tmp_path / "ckpt"), target_like, target_shardings, model_config)
  converted = workdir.restore_params(str(tmp_path / "ckpt"), target_like, target_shardings, scanned_fused)
  for a, b in zip(jax.tree_util.tree_leaves(target), jax.tree_util.tree_leaves(converted)):
    np.testing.assert_array_equal(a, np.asarray(b))
  deeper = dataclasses.replace(scanned_fused, num_layers=model_config.num_layers + 1)
  with pytest.raises(ValueError, match="does not fit this model"):
    workdir.restore_params(str(tmp_path / "ckpt"), target_like, target_shardings, deeper)
  wrong = jax.tree_util.tree_map(lambda x: x, like)
  wrong["encoder"]["pooler"]["kernel"] = jax.ShapeDtypeStruct((64, 64), np.float32)
  with pytest.raises(ValueError, match=r"encoder\['pooler'\]\['kernel'\] has shape \(128, 128\), this model needs \(64, 64\)"):
    workdir.restore_params(str(tmp_path / "ckpt"), wrong, shardings, model_config)


def test_init_checkpoint_of_a_larger_vocabulary_is_refused_not_truncated(tmp_path):
  hf = transformers.BertForMaskedLM(transformers.BertConfig(
      vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37,
      max_position_embeddings=64))
  hf.save_pretrained(str(tmp_path / "hf"))
  params, saved_config = hf_dir.read_hf_dir(str(tmp_path / "hf"))
  padded = hf_params.to_layout(params, dataclasses.replace(saved_config, vocab_pad_multiple=128))
  workdir.write_params_checkpoint(str(tmp_path / "ckpt"), padded, saved_config)  # 128 rows for 99 tokens
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])

  def restore(vocab_size, pad):
    config = dataclasses.replace(saved_config, vocab_size=vocab_size, vocab_pad_multiple=pad)
    ids = np.zeros((1, 4), np.int32)
    like = nn.unbox(jax.eval_shape(EncoderWithHeads(config, ("mlm",)).init, jax.random.key(0), ids, ids, ids))["params"]
    return workdir.restore_params(str(tmp_path / "ckpt"), like, jax.tree_util.tree_map(lambda _: device, like),
                                  config)

  for smaller in ((90, 1), (90, 8), (100, 128)):  # 100 pads to 128 too: the rows alone cannot tell
    with pytest.raises(ValueError, match=r"128 rows \(vocab_size 99\).*model.vocab_size is \d+.*data.vocab_file"):
      restore(*smaller)
  # The same vocabulary under another padding is converted, the real rows kept.
  got = restore(99, 8)["encoder"]["embeddings"]["word_embeddings"]["embedding"]
  assert got.shape == (104, 32)
  np.testing.assert_array_equal(np.asarray(got)[:99], params["encoder"]["embeddings"]["word_embeddings"]["embedding"])
  # Without the saved vocab_size only the run's own padding counts as padding.
  with pytest.raises(ValueError, match=r"does not fit this model: its word table has 128 rows \(an unknown"):
    hf_params.to_layout(padded, dataclasses.replace(saved_config, vocab_size=90), where="init_checkpoint X")


def test_hf_dir_whose_config_disagrees_with_weights_fails_clearly(tmp_path):
  hf = transformers.BertForPreTraining(transformers.BertConfig(**_hf_config_dict(SMALL)))
  hf.save_pretrained(str(tmp_path))
  cfg = json.load(open(tmp_path / "config.json"))
  cfg["intermediate_size"] = 256
  json.dump(cfg, open(tmp_path / "config.json", "w"))
  with pytest.raises(ValueError, match=r"intermediate\.dense\.weight' has shape \(512, 128\) but this config needs \(256, 128\)"):
    hf_dir.read_hf_dir(str(tmp_path))


def test_legacy_layernorm_gamma_beta_names_import_as_transformers_loads_them(tmp_path):
  """Older hub BERT checkpoints (bert-base-uncased's pytorch_model.bin) name LayerNorm weights gamma/beta."""
  hf = hf_helpers.randomize_torch(transformers.BertForPreTraining(transformers.BertConfig(
      vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
      max_position_embeddings=64)))
  hf.save_pretrained(str(tmp_path))
  os.remove(tmp_path / "model.safetensors")
  legacy = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
            for k, v in hf.state_dict().items()}
  assert any(k.endswith("LayerNorm.gamma") for k in legacy) and any(k.endswith("LayerNorm.beta") for k in legacy)
  torch.save(legacy, tmp_path / "pytorch_model.bin")
  params, model_config = hf_dir.read_hf_dir(str(tmp_path))
  ids, mask, segments = hf_dir.probe_batch(model_config)
  with jax.default_matmul_precision("highest"):
    ours = EncoderWithHeads(model_config, ("mlm", "nsp")).apply({"params": params}, ids, mask, segments, None)
  with torch.no_grad():
    out = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
             token_type_ids=torch.from_numpy(segments))
  np.testing.assert_allclose(np.asarray(ours["mlm_logits"]), out.prediction_logits.numpy(), atol=1e-4)
  np.testing.assert_allclose(np.asarray(ours["nsp_logits"]), out.seq_relationship_logits.numpy(), atol=1e-4)


def test_tf1_checkpoint_import_matches_hf_conversion(tmp_path):
  import tensorflow as tf
  model_config = SMALL
  hf = transformers.BertForPreTraining(transformers.BertConfig(**_hf_config_dict(model_config))).eval()
  hf_state = {k: v.numpy() for k, v in hf.state_dict().items()}
  rows = list(tf1.TF_EMBEDDING_AND_HEAD_MAP) + [
      (t.format(i=i), h.format(i=i), tr) for i in range(model_config.num_layers) for t, h, tr in tf1.TF_LAYER_MAP]
  graph = tf.Graph()
  with graph.as_default():
    variables = [tf.compat.v1.get_variable(name, initializer=(hf_state[hf_name].T if transpose else hf_state[hf_name]))
                 for name, hf_name, transpose in rows]
    variables.append(tf.compat.v1.get_variable("bert/pooler/dense/kernel/adam_m", initializer=np.ones((128, 128),
                                                                                                    np.float32)))
    variables.append(tf.compat.v1.get_variable("global_step", initializer=np.int64(7)))
    saver = tf.compat.v1.train.Saver(variables)
    with tf.compat.v1.Session(graph=graph) as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      prefix = saver.save(sess, str(tmp_path / "bert_model.ckpt"))
  json.dump(_hf_config_dict(model_config), open(tmp_path / "bert_config.json", "w"))
  result = subprocess.run([sys.executable, "-m", "bert_jax.convert", "from_tf", f"--tf_checkpoint={prefix}",
                           f"--tf_config={tmp_path / 'bert_config.json'}", f"--output={tmp_path / 'ckpt'}"],
                          capture_output=True, text=True, env=ENV, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  via_hf = hf_params.hf_to_params(hf_state, model_config)
  like = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), via_hf)
  shardings = jax.tree_util.tree_map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), via_hf)
  imported = workdir.restore_params(str(tmp_path / "ckpt"), like, shardings, model_config)
  rng = np.random.default_rng(0)
  ids = rng.integers(5, 1024, (2, 24))
  mask = np.ones_like(ids)
  seg = (np.arange(24)[None] > 10).astype(np.int64).repeat(2, 0)
  model = BertForPreTraining(model_config)
  apply = jax.jit(model.apply)
  a = apply({"params": imported}, ids, mask, seg, None)
  b = apply({"params": via_hf}, ids, mask, seg, None)
  np.testing.assert_array_equal(np.asarray(a["mlm_logits"]), np.asarray(b["mlm_logits"]))
  with torch.no_grad():
    theirs = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                token_type_ids=torch.from_numpy(seg)).prediction_logits.numpy()
  assert np.max(np.abs(np.asarray(a["mlm_logits"]) - theirs)) <= 1e-4
