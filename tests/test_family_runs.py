"""Each family's <family>_tiny config end to end on the offline corpus, through the CLIs: pretraining that
learns, the objective's metrics, to_hf loadable by transformers' Auto classes and fill-mask, from_hf
back into init_checkpoint, and fine-tuning from the family's checkpoint."""

import glob
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers

from bert_jax.core import checkpoint as checkpoint_lib
from bert_jax.core import configlib
from bert_jax.data import schema
from bert_jax.data import tokenizer as tokenizer_lib
from bert_jax.models import name_tables as nt
from bert_jax.trainers import finetune
from test_train_loop import _wait_for_checkpoint
from cli_helpers import cli_env, run_module, to_hf_in_process
from train_helpers import PYDOCS_SHORT, PYDOCS_STEPS, pretrained_tiny

ENV = cli_env()
# family config -> (its sentence task or None, the HF class to_hf writes)
FAMILIES = {"albert_tiny": ("sop", "AlbertForPreTraining"), "bert_tiny": ("nsp", "BertForPreTraining"),
            "roberta_tiny": (None, "RobertaForMaskedLM")}


def _records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def pretrained(request, tmp_path_factory):
  name = request.param
  if name == "bert_tiny":  # the run test_finetune.py and test_checkpoint_convert.py read, built once per test run
    return name, str(pretrained_tiny())
  workdir = str(tmp_path_factory.mktemp(name))
  run_module("bert_jax.train", f"--config={name}", f"--workdir={workdir}", f"--config.train.steps={PYDOCS_STEPS}",
             *PYDOCS_SHORT)
  return name, workdir


def test_pretraining_learns_and_logs_the_objectives_fields(pretrained):
  name, workdir = pretrained
  task, _ = FAMILIES[name]
  records = _records(workdir)
  evals = [r for r in records if r.get("split") == "eval"]
  assert [r["step"] for r in evals] == [0, 60, PYDOCS_STEPS]
  assert evals[-1]["mlm_accuracy"] > evals[0]["mlm_accuracy"] + 0.02, evals
  train = [r for r in records if r.get("split") != "eval"]
  for key in ("step", "loss", "learning_rate", "grad_norm", "seq_per_sec", "tokens_per_sec", "mfu",
              "mlm_loss", "mlm_accuracy"):
    assert key in train[-1], key
  sentence_keys = {k for k in train[-1] if k.startswith(("nsp_", "sop_"))}
  assert sentence_keys == ({f"{task}_loss", f"{task}_accuracy"} if task else set())
  if task:  # SOP is learnable only slowly at this size; its labels are balanced, so it starts near chance
    assert 0.3 < evals[0][f"{task}_accuracy"] < 0.7
  # $BERT_JAX_CACHE (set by conftest) holds the corpus the run built, shared with the other runs
  assert glob.glob(os.path.join(os.environ["BERT_JAX_CACHE"], "pydocs-py3.*.txt"))
  assert not glob.glob(os.path.join(workdir, "data", "pydocs-py3.*.txt"))


@pytest.fixture(scope="module")
def exported(pretrained, tmp_path_factory):
  name, workdir = pretrained
  hf_dir = str(tmp_path_factory.mktemp(name + "_hf"))
  return hf_dir, to_hf_in_process(workdir, hf_dir)


def test_to_hf_loads_in_auto_classes_and_fills_masks(pretrained, exported):
  name, workdir = pretrained
  hf_dir, out = exported
  assert f"({FAMILIES[name][1]})" in out and "checked: max |logit difference|" in out
  tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
  model = transformers.AutoModelForMaskedLM.from_pretrained(hf_dir).eval()
  manifest = schema.find_manifest(sorted(glob.glob(os.path.join(workdir, "data", "*", "train", "*"))))
  ours = tokenizer_lib.load(manifest["vocab"]["file"], manifest.get("lower_case", False))
  text = "Return a new sorted list from the items in iterable."
  assert tok(text)["input_ids"] == [ours.cls_id] + ours.encode(text) + [ours.sep_id]
  fill = transformers.pipeline("fill-mask", model=model, tokenizer=tok)
  predictions = fill(f"Return a new sorted {tok.mask_token} from the items in iterable.")
  assert len(predictions) == 5 and all(np.isfinite(p["score"]) for p in predictions)
  long = tok("word " * 2000, truncation=True, return_tensors="pt")
  assert long["input_ids"].shape[1] == tok.model_max_length
  with torch.no_grad():
    assert torch.isfinite(model(**long).logits).all()
  # Past the position table: truncation cuts at model_max_length, so the pipeline runs instead of crashing.
  far = fill(f"Return a new sorted {tok.mask_token} list." + " word" * 700, tokenizer_kwargs={"truncation": True})
  assert len(far) == 5


# RoBERTa: the family without a pooler (its import leaves HF's out, its classifier is dense+tanh+out_proj). BERT's
# import, init_checkpoint, fine-tuning and resume are tested in test_checkpoint_convert.py, test_finetune.py and
# test_train_loop.py, ALBERT's HF parity (a pooler, as BERT's) in test_families.py; resuming is the trainer's, the same for
# every family.
@pytest.mark.parametrize("pretrained", ["roberta_tiny"], indirect=True)
def test_from_hf_then_init_checkpoint(pretrained, exported, tmp_path):
  name, workdir = pretrained
  hf_dir, params_dir = exported[0], str(tmp_path / "params")
  run_module("bert_jax.convert", "from_hf", f"--hf_dir={hf_dir}", f"--output={params_dir}")
  fresh = str(tmp_path / "fresh")
  # 2 steps of the pretraining run's schedule: its programs, which this run loads from the compilation cache
  out = run_module("bert_jax.train", f"--config={name}", f"--workdir={fresh}", "--config.train.steps=2",
                   f"--config.optim.schedule_steps={PYDOCS_STEPS}",
                   f"--config.checkpoint.init_checkpoint={params_dir}", *PYDOCS_SHORT,
                   f"--config.data.train_files={workdir}/data/*/train/*.tfrecord",
                   f"--config.data.eval_files={workdir}/data/*/eval/*.tfrecord")
  assert f"initialised params from {params_dir}" in out
  step0 = [r for r in _records(fresh) if r.get("split") == "eval"][0]
  trained = [r for r in _records(workdir) if r.get("split") == "eval"][-1]  # the newest checkpoint's eval
  assert abs(step0["mlm_loss"] - trained["mlm_loss"]) < 1e-3, (step0, trained)


@pytest.mark.parametrize("pretrained", ["roberta_tiny"], indirect=True)
def test_finetuning_starts_from_the_family_checkpoint(pretrained, tmp_path, capsys):
  name, workdir = pretrained
  ft = str(tmp_path / "ft")
  # What `python -m bert_jax.finetune --config=finetune --init_checkpoint=... --workdir=...` runs, in this process
  # (test_finetune.py runs the CLI itself).
  config = configlib.load("finetune", {"train.max_steps": 12, "train.batch_size": 16, "train.learning_rate": 1e-3})
  finetune.finetune(config, ft, workdir)
  out = capsys.readouterr().out
  with open(os.path.join(ft, "result.json")) as f:
    result = json.load(f)
  assert result["init_checkpoint"] == workdir and 0.0 <= result["accuracy"] <= 1.0
  assert result["hf_max_logit_diff"] < 1e-4, result
  assert FAMILIES[name][1].replace("ForPreTraining", "").replace("ForMaskedLM", "") + "ForSequenceClassification" in out


# The check reads the family from the saved config, the same for every family: one pair of them.
@pytest.mark.parametrize("pretrained", ["albert_tiny"], indirect=True)
def test_resuming_with_another_family_names_both(pretrained):
  name, workdir = pretrained
  other = "roberta_tiny"
  result = subprocess.run([sys.executable, "-m", "bert_jax.train", f"--config={other}", f"--workdir={workdir}",
                           "--config.train.steps=2", *PYDOCS_SHORT], capture_output=True, text=True, timeout=600,
                          env=ENV)
  assert result.returncode != 0
  family = lambda n: n.split("_")[0]
  assert f"model.family={family(name)!r} run, but this config has model.family={family(other)!r}" in result.stderr


DISTIL_STEPS = 20
DISTIL = ["--config=distilbert_tiny", f"--config.train.steps={DISTIL_STEPS}", "--config.train.batch_size=16",
          "--config.optim.warmup_steps=5", "--config.train.log_every=1", "--config.train.eval_every=1000",
          "--config.train.eval_batches=4", "--config.checkpoint.every_steps=5", "--config.data.max_seq_length=64",
          "--config.data.max_predictions_per_seq=10", "--config.data.dynamic_masking=False"]


@pytest.mark.parametrize("pretrained", ["bert_tiny"], indirect=True)  # the teacher is the BERT run
def test_distilbert_student_of_the_bert_run_approaches_it_and_resumes_bit_exact(pretrained, tmp_path):
  """bert_tiny's run is the teacher of a 1-layer DistilBERT (configs/distilbert_tiny.py) on the same records: the
  student's eval MLM accuracy approaches the teacher's, and a run SIGKILLed after its first checkpoint resumes to the
  uninterrupted run's losses and params (student and teacher, one checkpoint) bit for bit."""
  _, teacher = pretrained
  data = [f"--config.distill.teacher={teacher}", f"--config.data.train_files={teacher}/data/*/train/*.tfrecord",
          f"--config.data.eval_files={teacher}/data/*/eval/*.tfrecord"]
  whole, killed = str(tmp_path / "whole"), str(tmp_path / "killed")
  out = run_module("bert_jax.train", f"--workdir={whole}", *DISTIL, *data)
  assert "loaded the teacher from" in out and "trainable)" in out
  evals = [r for r in _records(whole) if r.get("split") == "eval"]
  teacher_eval = [r for r in _records(teacher) if r.get("split") == "eval"][-1]
  first, last = evals[0], evals[-1]
  print(f"teacher {teacher_eval['mlm_accuracy']:.4f}; student step 0 {first['mlm_accuracy']:.4f}, "
        f"step {DISTIL_STEPS} {last['mlm_accuracy']:.4f} (kl {first['kl_loss']:.4f} -> {last['kl_loss']:.4f})")
  # The frozen teacher inside the run scores what it scored in its own run on the same eval batches.
  assert last["teacher_mlm_accuracy"] == pytest.approx(teacher_eval["mlm_accuracy"], abs=1e-4)
  assert first["teacher_mlm_accuracy"] == pytest.approx(teacher_eval["mlm_accuracy"], abs=1e-4)
  # The student starts as the teacher's first layer (plus its embeddings and head) and stays near it; with a teacher
  # this small (about 6% MLM accuracy after 120 steps) a few hundred eval tokens make the numbers coarse.
  assert first["mlm_accuracy"] >= 0.8 * teacher_eval["mlm_accuracy"], (first, teacher_eval)
  assert last["mlm_accuracy"] >= 0.6 * teacher_eval["mlm_accuracy"], (last, teacher_eval)

  proc = subprocess.Popen([sys.executable, "-m", "bert_jax.train", f"--workdir={killed}", *DISTIL, *data],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
  _wait_for_checkpoint(killed, proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  out = run_module("bert_jax.train", f"--workdir={killed}", *DISTIL, *data)
  resumed_from = int(out.split("resumed from checkpoint at step ")[1].split()[0])
  assert 0 < resumed_from < DISTIL_STEPS and "loaded the teacher" not in out
  train = lambda w: {r["step"]: r["loss"] for r in _records(w) if r.get("split") != "eval"}
  assert train(killed) == train(whole)
  params = {}
  for w in (whole, killed):
    manager, step = checkpoint_lib.latest_step(os.path.join(w, "checkpoints"))
    assert step == DISTIL_STEPS
    params[w] = nt.flatten(checkpoint_lib.load_saved_params(manager, step))
  assert sorted(params[whole]) == sorted(params[killed]) and any(p.startswith("teacher/") for p in params[whole])
  for path, value in params[whole].items():
    assert value.tobytes() == params[killed][path].tobytes(), path
  # ... and the teacher in it is the teacher run's newest checkpoint (vocabulary padding rows, which no logit reads,
  # are re-zeroed by the layout conversion).
  manager, step = checkpoint_lib.latest_step(os.path.join(teacher, "checkpoints"))
  real = lambda path, x: x[:8000] if path.endswith(("word_embeddings/embedding", "output_bias")) else x
  for path, value in nt.flatten(checkpoint_lib.load_saved_params(manager, step)).items():
    if f"teacher/{path}" in params[whole]:
      assert real(path, value).tobytes() == real(path, params[whole][f"teacher/{path}"]).tobytes(), path
