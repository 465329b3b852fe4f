"""Fine-tuned models to HF <Family>ForSequenceClassification / ForTokenClassification / ForQuestionAnswering /
ForMultipleChoice.

The encoder rows are the family's pretraining name table (models/<family>/hf_names.py); each head adds
its rows. The pooler's rows go only where the HF class has one (sequence classification and multiple choice of
a family with a pooler).
"""

import json
import os

import jax
import numpy as np

from bert_jax.convert import hf_dir, hf_params
from bert_jax.data import hf_tokenizer
from bert_jax.layers import peft as peft_lib
from bert_jax.models import name_tables as nt
from bert_jax.models import registry

HF_TASKS = {"classification": "ForSequenceClassification", "regression": "ForSequenceClassification",
            "tagging": "ForTokenClassification", "qa": "ForQuestionAnswering",
            "multiple_choice": "ForMultipleChoice"}
POOLED_KINDS = ("classification", "regression", "multiple_choice")  # their heads read the pooled [CLS]
_CLASSIFIER = [("classifier/kernel", "classifier.weight", nt.dense_kernel),
               ("classifier/bias", "classifier.bias", nt.identity)]
HEAD_ROWS = {
    "classification": _CLASSIFIER, "regression": _CLASSIFIER, "tagging": _CLASSIFIER, "multiple_choice": _CLASSIFIER,
    "qa": [("qa_outputs/kernel", "qa_outputs.weight", nt.dense_kernel),
           ("qa_outputs/bias", "qa_outputs.bias", nt.identity)],
}
# RoBERTa's classification head: dense + tanh on <s>, then out_proj (no pooler).
NO_POOLER_CLASSIFIER = [("classifier_dense/kernel", "classifier.dense.weight", nt.dense_kernel),
                        ("classifier_dense/bias", "classifier.dense.bias", nt.identity),
                        ("classifier/kernel", "classifier.out_proj.weight", nt.dense_kernel),
                        ("classifier/bias", "classifier.out_proj.bias", nt.identity)]
# DistilBERT's: pre_classifier + ReLU on [CLS], then classifier.
NO_POOLER_CLASSIFIERS = {"distilbert": [("classifier_dense/kernel", "pre_classifier.weight", nt.dense_kernel),
                                        ("classifier_dense/bias", "pre_classifier.bias", nt.identity)] + _CLASSIFIER}


def _dense_rows(hf_module: str) -> list:
  return [("classifier_dense/kernel", f"{hf_module}.weight", nt.dense_kernel),
          ("classifier_dense/bias", f"{hf_module}.bias", nt.identity)]


# Multiple choice without our pooler: the head's dense + activation on [CLS] is HF's pooler (RoBERTa, tanh), its
# sequence summary (ELECTRA, gelu) or pre_classifier (DistilBERT, ReLU); then classifier, one output.
NO_POOLER_MULTIPLE_CHOICE = {"roberta": _dense_rows("roberta.pooler.dense") + _CLASSIFIER,
                             "electra": _dense_rows("sequence_summary.summary") + _CLASSIFIER,
                             "distilbert": _dense_rows("pre_classifier") + _CLASSIFIER}


def hf_class(model_config, kind: str) -> str:
  masked_lm = registry.family_of(model_config).hf_architectures[("mlm",)]
  return masked_lm.replace("ForMaskedLM", "") + HF_TASKS[kind]


def _layout(model_config, kind: str):
  """(sections, head rows) of the HF task class."""
  pooled = kind in POOLED_KINDS
  family = type(model_config).family
  if kind == "multiple_choice" and not model_config.use_pooler:
    if family not in NO_POOLER_MULTIPLE_CHOICE:
      raise ValueError(f"no {hf_class(model_config, kind)} layout is known for a {family} model without a pooler; "
                       f"export with use_pooler=True")
    return ["encoder"], NO_POOLER_MULTIPLE_CHOICE[family]
  if pooled and not model_config.use_pooler:
    return ["encoder"], NO_POOLER_CLASSIFIERS.get(family, NO_POOLER_CLASSIFIER)
  return ["encoder"] + (["pooler"] if pooled else []), HEAD_ROWS[kind]


def params_to_hf(params, model_config, kind: str) -> dict:
  peft_paths = [p for p in nt.flatten(params) if peft_lib.is_peft_path(p)]
  if peft_paths:  # the name table would leave them out: a model without its fine-tuning
    raise ValueError(f"params hold parameter-efficient blocks ({peft_paths[0]}, ...) that a plain "
                     f"{hf_class(model_config, kind)} has no place for; export with finetune/peft_export.py "
                     f"(LoRA merged or as an HF peft adapter, or the bert_jax format)")
  sections, rows = _layout(model_config, kind)
  return {k: np.asarray(v, np.float32) for k, v in
          hf_params.params_to_hf(params, model_config, sections, extra_rows=rows).items()}


def write_hf_dir(params, model_config, spec, output_dir: str, vocab_file: str | None = None,
                 lower_case: bool = False) -> None:
  import torch
  from safetensors.torch import save_file
  os.makedirs(output_dir, exist_ok=True)
  state = params_to_hf(params, model_config, spec.kind)
  save_file({k: torch.from_numpy(np.array(v)).contiguous() for k, v in state.items()},
            os.path.join(output_dir, "model.safetensors"), metadata={"format": "pt"})
  hf = hf_dir.hf_config_dict(model_config, ["encoder"])
  hf["architectures"] = [hf_class(model_config, spec.kind)]
  hf["num_labels"] = spec.num_labels
  if spec.label_names and spec.kind != "multiple_choice":  # there, the names are of choice positions, not outputs
    hf["id2label"] = dict(enumerate(spec.label_names))
    hf["label2id"] = {n: i for i, n in enumerate(spec.label_names)}
  if spec.kind == "regression":
    hf["problem_type"] = "regression"
  with open(os.path.join(output_dir, "config.json"), "w") as f:
    json.dump(hf, f, indent=2)
  if vocab_file:
    hf_tokenizer.save_hf_tokenizer(vocab_file, lower_case, output_dir, model_max_length=model_config.max_sequence_length)


def describe_check(model_config, kind: str, diff: float | None) -> str:
  """The export log's words for check_hf_dir's result."""
  import transformers
  if diff is None:
    return (f"transformers {transformers.__version__} has no {hf_class(model_config, kind)} class, so its logits "
            f"were not compared; the weights read back bit for bit")
  return f"logits match ours to {diff:.2g}"


def as_task_inputs(kind: str, *arrays_BxT):
  """The probe batch as the task's model takes it: for multiple choice, its two rows as one example's two
  choices [1, 2, T]."""
  return tuple(x[None] for x in arrays_BxT) if kind == "multiple_choice" else arrays_BxT


def logit_difference(ours: dict, theirs, mask_BxT, kind: str) -> float:
  """Max |difference| between our task outputs and an HF model's, over real tokens for per-token kinds."""
  real = mask_BxT.astype(bool)
  if kind == "qa":
    pairs = [(np.asarray(ours["start_logits"])[real], theirs.start_logits.numpy()[real]),
             (np.asarray(ours["end_logits"])[real], theirs.end_logits.numpy()[real])]
  elif kind == "tagging":
    pairs = [(np.asarray(ours["logits"])[real], theirs.logits.numpy()[real])]
  else:
    pairs = [(np.asarray(ours["logits"]), theirs.logits.numpy())]
  return max(float(np.max(np.abs(a - b))) for a, b in pairs)


@hf_dir.full_float32
def check_hf_dir(model, params, spec, output_dir: str, tolerance: float = 1e-4) -> float | None:
  """Reloads output_dir in transformers and compares its logits with ours on a fixed padded batch. For a class
  the installed transformers lacks (NEZHA since v5): checks that the weights file holds the params bit for bit
  and returns None."""
  import torch
  import transformers
  name = hf_class(model.config, spec.kind)
  if not hasattr(transformers, name):
    written = hf_dir.load_safetensors(os.path.join(output_dir, "model.safetensors"))
    expected = params_to_hf(params, model.config, spec.kind)
    differing = sorted(k for k in expected if k not in written or not np.array_equal(written[k], expected[k]))
    if differing or set(written) != set(expected):
      raise ValueError(f"{output_dir}/model.safetensors does not hold the params: {differing[:5]} differ, "
                       f"{sorted(set(written) ^ set(expected))[:5]} are extra or missing")
    return None
  hf = getattr(transformers, name).from_pretrained(output_dir, dtype=torch.float32).eval()
  ids, mask, segments = as_task_inputs(spec.kind, *hf_dir.probe_batch(model.config))
  with torch.no_grad():
    out = hf(**hf_dir.torch_inputs(model.config, ids, mask, segments))
  ours = jax.jit(model.apply)({"params": params}, ids, mask, segments)  # one compile, not one per op
  diff = logit_difference(ours, out, mask, spec.kind)
  if diff > tolerance:
    raise ValueError(f"HF {name} logits differ from ours by {diff:.3g} > {tolerance:g}")
  return diff
