"""DistilBERT and distillation: HF DistilBertForMaskedLM parity both ways (with tokenizer), the loss against
HF's distiller formula, the student built from the teacher's layers, the frozen teacher (bit-identical, no
optimizer state), sharded = single device, and bad teachers refused by name."""

import dataclasses
import os

import flax.linen as nn
import jax
import numpy as np
import pytest
import torch
import transformers

from bert_jax.convert import hf_dir, hf_params
from bert_jax.core import optim, param_rules, sharding
from bert_jax.core.train_state import create_train_state
from bert_jax.data import tokenizer as tokenizer_lib
from bert_jax.finetune import heads, task_export
from bert_jax.models import name_tables as nt
from bert_jax.models import registry
from bert_jax.models.bert import BertConfig
from bert_jax.models.distilbert import DistilBertConfig
from bert_jax.models.electra import ElectraConfig
from bert_jax.models.pretraining import EncoderWithHeads
from bert_jax.objectives import distill
from bert_jax.objectives import registry as objectives
from bert_jax.trainers import init_sources, pretrain

import hf_helpers
import train_helpers

VOCAB, SEQ, PRED = 128, train_helpers.SEQ, train_helpers.PRED
# Every sharded dim divides by 8 (heads 8, embed 64, mlp 128, vocab 128).
TEACHER_HF = transformers.BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=4, num_attention_heads=8,
                                     intermediate_size=128, max_position_embeddings=64, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0)
STUDENT = DistilBertConfig(vocab_size=VOCAB, hidden_size=64, num_layers=2, num_heads=8, intermediate_size=128,
                           max_position_embeddings=64, hidden_dropout=0.0, attention_dropout=0.0)


def _write_vocab(path, words_seed=0):
  rng = np.random.default_rng(words_seed)
  words = sorted({"".join(rng.choice(list("abcdefghij"), 5)) for _ in range(400)})[:VOCAB - 5]
  with open(path, "w") as f:
    f.write("\n".join(list(tokenizer_lib.SPECIAL_TOKENS) + words) + "\n")
  return str(path)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
  """An HF BertForMaskedLM directory with a WordPiece vocab.txt: a teacher built here, never downloaded."""
  path = tmp_path_factory.mktemp("hf_teacher")
  hf_helpers.randomize_torch(transformers.BertForMaskedLM(TEACHER_HF)).save_pretrained(path)
  _write_vocab(path / "vocab.txt")
  return str(path)


@pytest.fixture(scope="module")
def reference(teacher_dir):
  """(objective, its fresh params on the host, batches, per-step [loss, kl, cos, mlm]) on one device."""
  objective = _objective(teacher_dir)
  mesh = _mesh((1, 1, 1))
  state, step_fn, _, rules = _start(objective, mesh)
  initial = jax.device_get(state.params)
  batches = _batches(1) * 3  # the learning rate is 0 at step 0, so step 3 sees the first update's effect
  _, metrics = _steps(state, step_fn, rules, mesh, batches)
  assert metrics[2][0] < metrics[0][0], metrics
  return objective, initial, batches, metrics


def _objective(teacher, student=STUDENT, **settings):
  return objectives.make_objective("distill", student, SEQ, PRED, {"teacher": teacher, "teacher_dtype": "float32",
                                                                   **settings}, init_sources.encoder_config)


def _start(objective, mesh, cfg=None):
  """(state, step_fn, eval_fn, rules) as the trainer starts a fresh run: teacher loaded, student from it."""
  cfg = cfg or train_helpers.config()
  rules = sharding.rules_from_config(cfg.mesh.logical_axis_rules)
  tx, schedule = optim.make_optimizer(cfg.optim, cfg.train.steps, objective.param_rules())
  with nn.logical_axis_rules(rules):
    state, shardings = create_train_state(objective.init_params, tx, mesh, rules, 0)
    params = init_sources.load_sources(objective, state.params, shardings.params, finish=True, log=lambda _: None)
    step_fn, eval_fn = pretrain.make_step_functions(cfg, objective, tx, schedule, mesh, shardings)
  return state.replace(params=params), step_fn, eval_fn, rules


def _mesh(shape):
  return sharding.create_mesh(dict(zip(sharding.MESH_AXES, shape)), devices=jax.devices()[:int(np.prod(shape))])


def _batches(n, batch=16):
  out = []
  for seed in range(n):
    b = train_helpers.random_batch(batch, seed=seed, vocab=VOCAB)
    b["segment_ids"] = np.zeros_like(b["segment_ids"])  # DistilBERT inputs have one segment
    out.append(b)
  return out


def test_hf_distilbert_to_ours_and_back():
  hf_config = transformers.DistilBertConfig(vocab_size=101, dim=32, n_layers=3, n_heads=4, hidden_dim=48,
                                            max_position_embeddings=40, dropout=0.0, attention_dropout=0.0)
  hf = hf_helpers.randomize_torch(transformers.DistilBertForMaskedLM(hf_config))
  state = {k: v.numpy() for k, v in hf.state_dict().items()}
  for scan in (False,):  # the scanned layout goes through the same table (test_families covers it)
    config = hf_dir.config_from_hf_json(hf_config.to_dict(), scan_layers=scan)
    assert isinstance(config, DistilBertConfig) and config.num_layers == 3 and config.type_vocab_size == 0
    params = hf_params.hf_to_params(state, config)
    assert "token_type_embeddings" not in params["encoder"]["embeddings"] and "pooler" not in params["encoder"]
    ids, mask, _ = hf_dir.probe_batch(config)
    ours = EncoderWithHeads(config, ("mlm",)).apply({"params": params}, ids, mask, np.zeros_like(ids), None)
    with torch.no_grad():
      theirs = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
    assert np.max(np.abs(np.asarray(ours["mlm_logits"]) - theirs)) < 1e-4
    back = hf_params.params_to_hf(params, config)
    family = registry.family_of(config)
    assert set(back) == set(state) - set(family.tied_hf_keys) - family.ignored_hf_keys
    for k, v in back.items():
      np.testing.assert_array_equal(v, state[k], err_msg=k)


def test_student_exports_to_hf_distilbert_with_tokenizer_and_reads_back(reference, teacher_dir, tmp_path):
  """The student of a distillation params tree (teacher left out, as exported_models gives it) written as
  DistilBertForMaskedLM with tokenizer files; transformers' logits equal ours, and the directory reads back."""
  objective, initial, *_ = reference
  params = hf_helpers.perturb_params(initial, seed=3)
  (name, (student, config)), = objective.exported_models(params).items()
  assert name == "" and sorted(student) == ["encoder", "mlm"] and config == STUDENT
  out = str(tmp_path / "hf")
  assert hf_dir.write_hf_dir(student, config, out, vocab_file=os.path.join(teacher_dir, "vocab.txt"),
                             lower_case=False) == "DistilBertForMaskedLM"
  assert hf_dir.check_hf_dir(student, config, out) < 1e-4
  tok = transformers.AutoTokenizer.from_pretrained(out)
  assert tok.convert_ids_to_tokens([2, 3, 4]) == ["[CLS]", "[SEP]", "[MASK]"]
  back, back_config = hf_dir.read_hf_dir(out)
  assert back_config == dataclasses.replace(config, vocab_pad_multiple=1)
  for path, value in nt.flatten(student).items():
    np.testing.assert_allclose(nt.flatten(back)[path], value, atol=1e-6, err_msg=path)


def test_finetuned_student_exports_as_hf_distilbert_sequence_classifier():
  """Fine-tuning a DistilBERT puts HF's head on [CLS] (pre_classifier -> ReLU -> classifier), so the export loads
  into DistilBertForSequenceClassification with our logits."""
  model = heads.SequenceClassifier(STUDENT, num_labels=3)
  ids, mask, _ = hf_dir.probe_batch(STUDENT)
  params = nn.unbox(jax.jit(model.init)(jax.random.key(0), ids, mask, np.zeros_like(ids))["params"])
  params = hf_helpers.perturb_params(params)
  assert task_export.hf_class(STUDENT, "classification") == "DistilBertForSequenceClassification"
  hf = transformers.DistilBertForSequenceClassification(transformers.DistilBertConfig(
      **hf_dir.hf_config_dict(STUDENT, ["encoder"]), num_labels=3))
  state = task_export.params_to_hf(params, STUDENT, "classification")
  result = hf.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, strict=False)
  assert not result.unexpected_keys and set(result.missing_keys) <= {"distilbert.embeddings.position_ids"}, result
  with torch.no_grad():
    theirs = hf.eval()(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
  ours = np.asarray(jax.jit(model.apply)({"params": params}, ids, mask, np.zeros_like(ids))["logits"])
  assert np.max(np.abs(ours - theirs)) < 1e-4


def _head_inputs(config, train: bool):
  """(encoder output at [CLS], classifier_dense's input and output, classifier's input) of a SequenceClassifier."""
  model = heads.SequenceClassifier(config, num_labels=3)
  ids, mask, _ = hf_dir.probe_batch(config)
  ids, mask = np.tile(ids, (8, 1)), np.tile(mask, (8, 1))
  params = jax.jit(model.init)(jax.random.key(0), ids, mask, np.zeros_like(ids))["params"]
  seen = {}

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__" and context.module.name in ("encoder", "classifier_dense", "classifier"):
      seen[context.module.name] = (np.asarray(args[0], np.float32), np.asarray(out, np.float32))
    return out
  with nn.intercept_methods(record):
    model.apply({"params": params}, ids, mask, np.zeros_like(ids), deterministic=not train,
                rngs={"dropout": jax.random.key(1)})
  return seen["encoder"][1][:, 0], seen["classifier_dense"][0], seen["classifier_dense"][1], seen["classifier"][0]


def test_sequence_classifier_dropouts_are_hf_distilberts():
  """HF's DistilBertForSequenceClassification feeds [CLS] to pre_classifier undropped and drops its ReLU output at
  seq_classif_dropout (0.2), where RoBERTa's and ELECTRA's heads drop [CLS] at the hidden dropout rate first."""
  student = dataclasses.replace(STUDENT, hidden_dropout=0.1)
  cls, dense_in, dense_out, classifier_in = _head_inputs(student, train=True)
  np.testing.assert_array_equal(dense_in, cls)  # undropped
  active = np.maximum(dense_out, 0) > 0
  ratio = classifier_in[active] / np.maximum(dense_out, 0)[active]
  assert np.all(np.isclose(ratio, 0) | np.isclose(ratio, 1 / 0.8, rtol=1e-3))
  assert 0.13 < np.mean(np.isclose(ratio, 0)) < 0.27, np.mean(np.isclose(ratio, 0))  # ~0.2 of ~500
  electra = ElectraConfig(vocab_size=VOCAB, hidden_size=64, num_layers=2, num_heads=8, intermediate_size=128,
                          max_position_embeddings=64, hidden_dropout=0.1, attention_dropout=0.0)
  cls, dense_in, _, _ = _head_inputs(electra, train=True)
  assert not np.array_equal(dense_in, cls)  # ELECTRA's head drops [CLS] before its dense
  cls, dense_in, dense_out, classifier_in = _head_inputs(student, train=False)
  np.testing.assert_array_equal(classifier_in, np.maximum(dense_out, 0))  # evaluation drops nothing
  cls, dense_in, dense_out, classifier_in = _head_inputs(STUDENT, train=True)  # nor a model without dropout
  np.testing.assert_array_equal(classifier_in, np.maximum(dense_out, 0))


def test_qa_head_drops_the_hidden_states_as_hf_distilbert():
  """DistilBertForQuestionAnswering drops the hidden states at qa_dropout (0.1) before qa_outputs; BERT's does not.
  A model configured without dropout (hidden_dropout=0) has none there either."""
  ids, mask, _ = hf_dir.probe_batch(STUDENT)
  bert = BertConfig(vocab_size=VOCAB, hidden_size=64, num_layers=2, num_heads=8, intermediate_size=128,
                    max_position_embeddings=64, hidden_dropout=0.1, attention_dropout=0.0)
  for config, drops in ((dataclasses.replace(STUDENT, hidden_dropout=0.1), True), (bert, False), (STUDENT, False)):
    model = heads.QuestionAnswering(config)
    params = jax.jit(model.init)(jax.random.key(0), ids, mask, np.zeros_like(ids))["params"]
    seen = {}

    def record(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if context.method_name == "__call__" and context.module.name in ("encoder", "qa_outputs"):
        seen[context.module.name] = np.asarray(out if context.module.name == "encoder" else args[0], np.float32)
      return out
    with nn.intercept_methods(record):
      model.apply({"params": params}, ids, mask, np.zeros_like(ids), deterministic=False,
                  rngs={"dropout": jax.random.key(1)})
    assert np.array_equal(seen["encoder"], seen["qa_outputs"]) != drops, (type(config).__name__, config.hidden_dropout)


def test_kl_and_cosine_terms_match_hf_distiller_formulas():
  rng = np.random.default_rng(0)
  s, t = rng.normal(size=(2, 7, 11)).astype(np.float32), rng.normal(size=(2, 7, 11)).astype(np.float32)
  mask = np.ones((2, 7), np.float32)
  mask[1, 4:] = 0
  sums = distill.kl_sums(s, t, mask, 2.0)
  keep = mask.astype(bool)
  hf_kl = torch.nn.KLDivLoss(reduction="batchmean")(torch.log_softmax(torch.from_numpy(s[keep]) / 2, -1),
                                                    torch.softmax(torch.from_numpy(t[keep]) / 2, -1))
  np.testing.assert_allclose(float(sums["kl_sum"] / sums["weight_sum"]), float(hf_kl), rtol=1e-5)
  hs, ht = torch.from_numpy(s[keep]), torch.from_numpy(t[keep])
  hf_cos = torch.nn.CosineEmbeddingLoss()(hs, ht, torch.ones(hs.shape[0]))
  np.testing.assert_allclose(float(distill.cosine_sums(s, t, mask)["cos_sum"] / mask.sum()), float(hf_cos), rtol=1e-5)


def test_student_starts_from_every_other_teacher_layer(reference, teacher_dir):
  assert distill.teacher_layers(12, 6) == [0, 2, 4, 7, 9, 11]  # HF extract_distilbert.py's choice
  assert distill.teacher_layers(4, 2) == [0, 3] and distill.teacher_layers(2, 1) == [0]
  scanned = {}
  for scan in (False, True):
    if scan:
      state, *_ = _start(_objective(teacher_dir, dataclasses.replace(STUDENT, scan_layers=True)), _mesh((1, 1, 1)))
      params = jax.device_get(state.params)
    else:
      params = reference[1]
    student = nt.flatten(nt.unscan_params(distill.student_params(params), 2))
    teacher = nt.flatten(nt.unscan_params(params["teacher"], 4))
    scanned[scan] = student
    for path, value in student.items():
      source = path.replace("layer_1/", "layer_3/")
      if path.endswith("position_embeddings/embedding"):
        expected = teacher[path] + teacher["encoder/embeddings/token_type_embeddings/embedding"][0]
      else:
        expected = teacher[source]
      np.testing.assert_array_equal(value, expected, err_msg=path)
  for path, value in scanned[False].items():
    np.testing.assert_array_equal(value, scanned[True][path], err_msg=path)


def test_a_student_with_all_the_teachers_layers_matches_it_exactly(teacher_dir):
  """Token-type row 0 folded into the positions: on one-segment inputs the copied student is the teacher, so the
  KL and cosine terms vanish and both have the same MLM accuracy."""
  objective = _objective(teacher_dir, dataclasses.replace(STUDENT, num_layers=4))
  teacher, _ = hf_dir.read_hf_dir(teacher_dir)
  fresh = nn.unbox(jax.eval_shape(objective.init_params, jax.random.key(0)))
  student = jax.tree_util.tree_map(lambda x: np.zeros(x.shape, x.dtype), distill.student_params(fresh))
  params = objective.finish_init({**student, "teacher": teacher})
  sums = objective.loss_sums(params, _batches(1)[0], jax.random.key(0), True)
  m = jax.device_get(objective.summaries(sums))
  assert m["kl_loss"] < 1e-6 and abs(m["cosine_loss"]) < 1e-6, m
  assert m["mlm_accuracy"] == m["teacher_mlm_accuracy"] and m["mlm_loss"] == pytest.approx(m["teacher_mlm_loss"])


def test_a_student_of_another_width_trains_without_the_cosine_term(teacher_dir):
  """alpha_cos=0 is what the teacher check offers a student narrower than its teacher (hidden states that cannot be
  compared): the loss must then not compare them either."""
  student = dataclasses.replace(STUDENT, hidden_size=32, num_heads=4, intermediate_size=64)
  objective = _objective(teacher_dir, student, alpha_cos=0.0, init_from_teacher=False)
  params = objective.init_params(jax.random.key(0))
  sums = objective.loss_sums(nn.unbox(params), _batches(1)[0], jax.random.key(0), True)
  m = jax.device_get(objective.summaries(sums))
  assert np.isfinite(m["loss"]) and m["kl_loss"] > 0 and m["cosine_loss"] == 0, m


def _two_segment_batch():
  return train_helpers.random_batch(16, seed=0, vocab=VOCAB)  # segment 1 on each row's second half


def test_a_student_with_token_types_keeps_the_teachers_positions(teacher_dir):
  """Token-type row 0 is folded into the positions only for a student without a token-type table; a BERT-family
  student copies both tables as they are (folding would add row 0 twice) and, with all the teacher's layers, is the
  teacher on two-segment inputs too."""
  bert_student = BertConfig(vocab_size=VOCAB, hidden_size=64, num_layers=4, num_heads=8, intermediate_size=128,
                            max_position_embeddings=64, hidden_dropout=0.0, attention_dropout=0.0)
  objective = _objective(teacher_dir, bert_student)
  teacher, _ = hf_dir.read_hf_dir(teacher_dir)
  fresh = nn.unbox(jax.eval_shape(objective.init_params, jax.random.key(0)))
  student = jax.tree_util.tree_map(lambda x: np.zeros(x.shape, x.dtype), distill.student_params(fresh))
  params = objective.finish_init({**student, "teacher": teacher})
  got, want = nt.flatten(distill.student_params(params)), nt.flatten(teacher)
  for path in ("encoder/embeddings/position_embeddings/embedding", "encoder/embeddings/token_type_embeddings/embedding"):
    np.testing.assert_array_equal(got[path], want[path], err_msg=path)
  s, t = objective._outputs(params, _two_segment_batch(), jax.random.key(0), True)
  np.testing.assert_allclose(np.asarray(s["sequence_output"]), np.asarray(t["sequence_output"]), atol=1e-5)


def _steps(state, step_fn, rules, mesh, batches):
  metrics = []
  with nn.logical_axis_rules(rules):
    for b in batches:
      state, m = step_fn(state, sharding.global_batch(b, mesh))
      metrics.append([float(m[k]) for k in ("loss", "kl_loss", "cosine_loss", "mlm_loss")])
  return state, metrics


def test_sharded_equals_one_device_and_the_teacher_stays_frozen(reference):
  """On each 8-device mesh: the same losses as one device; the teacher bit-identical after training steps and
  absent from the optimizer state, while every student leaf moves."""
  objective, initial, batches, expected = reference
  teacher_before = initial["teacher"]
  for shape in [(2, 2, 2), (1, 1, 8)]:  # batch, fsdp and tensor axes; (1, 1, 8) splits heads and the vocabulary
    mesh = _mesh(shape)
    state, step_fn, _, rules = _start(objective, mesh)
    paths = [param_rules.path_of(p) for p, _ in jax.tree_util.tree_leaves_with_path(state.opt_state)]
    assert any(p.startswith("1/0/mu/encoder") or "encoder" in p for p in paths), paths
    assert not [p for p in paths if "teacher" in p], paths
    state, got = _steps(state, step_fn, rules, mesh, batches)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6, err_msg=str(shape))
    params = jax.device_get(state.params)
    for (path, before), after in zip(jax.tree_util.tree_leaves_with_path(teacher_before),
                                     jax.tree_util.tree_leaves(params["teacher"])):
      assert before.tobytes() == after.tobytes(), jax.tree_util.keystr(path)
    moved = [not np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(distill.student_params(initial)),
                                                      jax.tree_util.tree_leaves(distill.student_params(params)))]
    assert all(moved), shape


def test_bad_teachers_are_refused_by_name(teacher_dir, tmp_path):
  missing = str(tmp_path / "no_such_teacher")
  with pytest.raises(FileNotFoundError, match="teacher .*no_such_teacher.* does not exist"):
    _objective(missing).init_sources()
  with pytest.raises(ValueError, match="teacher .* is not a training workdir"):
    _objective(str(tmp_path)).init_sources()
  roberta = tmp_path / "roberta"
  transformers.RobertaForMaskedLM(transformers.RobertaConfig(
      vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=8, intermediate_size=128)
  ).save_pretrained(roberta)
  with pytest.raises(ValueError, match="teacher .*roberta holds a 'roberta' model; the teacher must be a bert"):
    _objective(str(roberta)).init_sources()
  with pytest.raises(ValueError, match="vocab_size 128 but the student has model.vocab_size=100"):
    _objective(teacher_dir, dataclasses.replace(STUDENT, vocab_size=100)).init_sources()
  with pytest.raises(ValueError, match="needs the run config's `distill` section"):
    objectives.make_objective("distill", STUDENT, SEQ, PRED, {}, init_sources.encoder_config)
  # The data's vocabulary differs from the teacher's: both files are named.
  other = _write_vocab(tmp_path / "other_vocab.txt", words_seed=1)
  sources = _objective(teacher_dir).init_sources()
  with pytest.raises(ValueError, match=f"teacher {teacher_dir} uses the vocabulary {teacher_dir}/vocab.txt but the "
                                       f"data uses {other} .*first difference at id 5"):
    init_sources.check_vocabulary(sources, tokenizer_lib.load(other, False))
  init_sources.check_vocabulary(sources, tokenizer_lib.load(os.path.join(teacher_dir, "vocab.txt"), False))


def test_an_fp8_student_learns_from_a_full_precision_teacher(teacher_dir):
  """model.fp8 reaches the student only: the teacher (no backward pass to update FP8 statistics) runs without, the
  student's statistics survive its copy from the teacher and record its first step."""
  objective = _objective(teacher_dir, dataclasses.replace(STUDENT, fp8=True, fp8_amax_history=4))
  assert not objective.teacher_config.fp8
  mesh = _mesh((1, 1, 1))
  state, step_fn, _, rules = _start(objective, mesh)
  meta = lambda params: {nt_path: v for nt_path, v in nt.flatten(jax.device_get(params)).items() if "fp8_meta" in nt_path}
  assert not any(p.startswith("teacher/") for p in meta(state.params))
  assert len(meta(state.params)) == 2 * 6 * 6  # layers x projections x (3 scales + 3 histories)
  teacher_before = jax.device_get(state.params["teacher"])
  state, metrics = _steps(state, step_fn, rules, mesh, _batches(1) * 2)
  assert all(np.isfinite(m).all() for m in metrics)
  histories = {p: v for p, v in meta(state.params).items() if p.endswith("amax_history")}
  assert all(v[0] > 0 for v in histories.values())
  jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(state.params["teacher"]), teacher_before)
