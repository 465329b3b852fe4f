"""Fine-tuned models to HF BertForSequenceClassification / BertForTokenClassification / BertForQuestionAnswering.

The encoder rows are pretraining's name table (convert.py); each head adds two rows. HF's token-tagging and
QA models have no pooler, so those rows are left out for them.
"""

import json
import os

import numpy as np

from bert_jax import convert

HF_CLASSES = {"classification": "BertForSequenceClassification", "regression": "BertForSequenceClassification",
              "tagging": "BertForTokenClassification", "qa": "BertForQuestionAnswering"}
HEAD_ROWS = {
    "classification": [("classifier/kernel", "classifier.weight", convert.dense_kernel),
                       ("classifier/bias", "classifier.bias", convert.identity)],
    "tagging": [("classifier/kernel", "classifier.weight", convert.dense_kernel),
                ("classifier/bias", "classifier.bias", convert.identity)],
    "qa": [("qa_outputs/kernel", "qa_outputs.weight", convert.dense_kernel),
           ("qa_outputs/bias", "qa_outputs.bias", convert.identity)],
}
HEAD_ROWS["regression"] = HEAD_ROWS["classification"]


def name_table(model_config, kind: str):
  keep = ("embeddings/", "encoder/") + (("pooler/",) if HF_CLASSES[kind] == "BertForSequenceClassification" else ())
  return [r for r in convert.name_table(model_config) if r[0].startswith(keep)] + HEAD_ROWS[kind]


def params_to_hf(params, model_config, kind: str) -> dict:
  flat = convert._flatten(convert.unscan_params(params, model_config))
  return convert.table_to_hf(flat, name_table(model_config, kind), model_config, dtype=np.float32,
                             what=f"is this a {kind} model?")


def write_hf_dir(params, model_config, spec, output_dir: str, vocab_file: str | None = None,
                 lower_case: bool = False) -> None:
  import torch
  from safetensors.torch import save_file
  os.makedirs(output_dir, exist_ok=True)
  state = params_to_hf(params, model_config, spec.kind)
  save_file({k: torch.from_numpy(np.array(v)).contiguous() for k, v in state.items()},
            os.path.join(output_dir, "model.safetensors"), metadata={"format": "pt"})
  hf = convert.hf_config_dict(model_config)
  hf["architectures"] = [HF_CLASSES[spec.kind]]
  hf["num_labels"] = spec.num_labels
  if spec.label_names:
    hf["id2label"] = dict(enumerate(spec.label_names))
    hf["label2id"] = {n: i for i, n in enumerate(spec.label_names)}
  if spec.kind == "regression":
    hf["problem_type"] = "regression"
  with open(os.path.join(output_dir, "config.json"), "w") as f:
    json.dump(hf, f, indent=2)
  if vocab_file:
    from bert_jax import export
    export.export_tokenizer(vocab_file, lower_case, output_dir)


def check_hf_dir(model, params, spec, output_dir: str, tolerance: float = 1e-4) -> float:
  """Reloads output_dir in transformers and compares its logits with ours on a fixed padded batch."""
  import torch
  import transformers
  cls = getattr(transformers, HF_CLASSES[spec.kind])
  hf = cls.from_pretrained(output_dir, torch_dtype=torch.float32).eval()
  from bert_jax import export
  ids, mask, segments = export.probe_batch(model.config)
  with torch.no_grad():
    out = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
             token_type_ids=torch.from_numpy(segments))
  ours = model.apply({"params": params}, ids, mask, segments)
  real = mask.astype(bool)
  if spec.kind == "qa":
    pairs = [(np.asarray(ours["start_logits"])[real], out.start_logits.numpy()[real]),
             (np.asarray(ours["end_logits"])[real], out.end_logits.numpy()[real])]
  elif spec.kind == "tagging":
    pairs = [(np.asarray(ours["logits"])[real], out.logits.numpy()[real])]
  else:
    pairs = [(np.asarray(ours["logits"]), out.logits.numpy())]
  diff = max(float(np.max(np.abs(a - b))) for a, b in pairs)
  if diff > tolerance:
    raise ValueError(f"HF {HF_CLASSES[spec.kind]} logits differ from ours by {diff:.3g} > {tolerance:g}")
  return diff
