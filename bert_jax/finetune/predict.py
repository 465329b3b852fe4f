"""Inference from a workdir: fill-mask and embeddings from a pretraining run, classify/tag/qa/choose from a
fine-tuning run.

Input is text, one example per line (blank lines are skipped; every output record repeats its input, so
outputs line up with inputs by content, not by count):
  fill-mask  a sentence with one or more masks, written `[MASK]` or `<mask>` whatever the vocabulary
             (RoBERTa's `<mask>` swallows the space before it, as HF's tokenizer does)
  embed      a text; `pooled` is the pooler's tanh(dense([CLS])), `mean` the mean over its real tokens
  classify   a text, or two texts separated by a tab for pair tasks (regression tasks give a value)
  tag        whitespace-separated words; one tag per word (read on its first sub-token, as trained)
  qa         question<TAB>context; the best span over all context windows, from the original text
  choose     context<TAB>choice<TAB>choice...; with a question (a task of two text_keys),
             context<TAB>question<TAB>choice<TAB>choice...; the scores of the choices and the best one
Output is JSON lines (embed: also .npy, chosen by the output's extension). The forward pass is jitted once
per run and applied in fixed-size batches, padded to the longest line (fill-mask, embed) or to the
fine-tuning length (classify, tag, qa, choose).
"""

import dataclasses
import json
import os
import re
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bert_jax.convert import workdir as workdir_lib
from bert_jax.core import checkpoint as checkpoint_lib
from bert_jax.data import tokenizer as tokenizer_lib
from bert_jax.finetune import heads, tasks
from bert_jax.models import registry
from bert_jax.models.encoder import Encoder
from bert_jax.models.pretraining import EncoderWithHeads

COMMANDS = ("fill-mask", "embed", "classify", "tag", "qa", "choose")
MODEL_INFO = "finetuned_model.json"  # written by fine-tuning: what predict needs to rebuild model and features
MASK_TOKENS = ("[MASK]", "<mask>")
_LENGTH_MULTIPLE = 16  # fill-mask/embed pad to a multiple of this: few shapes, few compiles


# ---- fine-tuning workdirs --------------------------------------------------------------------------------


def write_model_info(workdir: str, model_config, spec: tasks.TaskSpec, vocab_file: str, lower_case: bool,
                     data_config) -> None:
  info = {"family": registry.family_of(model_config).name, "encoder_config": dataclasses.asdict(model_config),
          "task": dataclasses.asdict(spec), "vocab_file": os.path.abspath(vocab_file), "lower_case": lower_case,
          "max_seq_length": data_config.max_seq_length, "doc_stride": data_config.doc_stride,
          "max_query_length": data_config.max_query_length}
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, MODEL_INFO), "w") as f:
    json.dump(info, f, indent=2)


def _tuples(d: dict) -> dict:
  return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def read_model_info(workdir: str) -> dict:
  with open(os.path.join(workdir, MODEL_INFO)) as f:
    info = json.load(f)
  info["model_config"] = registry.get_family(info["family"]).config_cls(**_tuples(info["encoder_config"]))
  info["spec"] = tasks.TaskSpec(**_tuples(info["task"]))
  return info


def is_finetuning_workdir(workdir: str) -> bool:
  return os.path.exists(os.path.join(workdir, MODEL_INFO))


def _finetuned_params(workdir: str):
  """WORKDIR/params (written at the end), else the newest checkpoint's params (a run still going)."""
  if os.path.isdir(os.path.join(workdir, "params")):
    return checkpoint_lib.load_params(os.path.join(workdir, "params"))
  manager, step = checkpoint_lib.latest_step(os.path.join(workdir, "checkpoints"))
  if step is None:
    raise FileNotFoundError(f"{workdir} has neither params/ nor checkpoints yet; let the fine-tuning run save")
  return checkpoint_lib.load_saved_params(manager, step)


def load(workdir: str, vocab_file: str = ""):
  """(params, encoder config, tokenizer, fine-tuning info or None) of a pretraining or fine-tuning workdir."""
  workdir = os.path.abspath(workdir)
  if vocab_file and not os.path.exists(vocab_file):  # else reported as the workdir's own vocabulary not found
    raise FileNotFoundError(f"--vocab_file {vocab_file} does not exist; leave it out to use the workdir's own")
  if is_finetuning_workdir(workdir):
    info = read_model_info(workdir)
    tok = tokenizer_lib.load(vocab_file or info["vocab_file"], info["lower_case"])
    return _finetuned_params(workdir), info["model_config"], tok, info
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    raise FileNotFoundError(f"{workdir} is neither a pretraining workdir (checkpoints/) nor a fine-tuning one "
                            f"({MODEL_INFO})")
  params, model_config, run_config, _ = workdir_lib.load_workdir_params(workdir)
  found, lower_case = workdir_lib.find_vocab(run_config, workdir)
  vocab_file = vocab_file or found
  if not vocab_file or not os.path.exists(vocab_file):
    raise FileNotFoundError(f"the vocabulary of {workdir} was not found ({found or 'no manifest names one'}); "
                            f"pass --vocab_file")
  return params, model_config, tokenizer_lib.load(vocab_file, lower_case), None


# ---- batching --------------------------------------------------------------------------------------------


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def _run_batched(fn, params, features: dict, batch_size: int):
  """fn(params, batch) over all rows in fixed-size batches (the last padded by repeating row 0); numpy out."""
  n = len(next(iter(features.values())))
  outputs = []
  for start in range(0, n, batch_size):
    idx = np.arange(start, min(start + batch_size, n))
    idx = np.concatenate([idx, np.zeros(batch_size - len(idx), np.int64)])
    out = jax.device_get(fn(params, {k: v[idx] for k, v in features.items()}))
    outputs.append(jax.tree_util.tree_map(lambda x: np.asarray(x)[:min(batch_size, n - start)], out))
  return jax.tree_util.tree_map(lambda *xs: np.concatenate(xs), *outputs)


def _single_segment(token_lists, tok, max_len: int) -> dict:
  """[CLS] ids [SEP] rows padded to the longest (rounded up, at most max_len)."""
  length = min(max_len, _round_up(max(len(t) for t in token_lists) + 2, _LENGTH_MULTIPLE))
  ids = np.zeros((len(token_lists), length), np.int32)
  for row, tokens in enumerate(token_lists):
    seq = [tok.cls_id] + list(tokens)[:length - 2] + [tok.sep_id]
    ids[row, :len(seq)] = seq
  mask = (np.arange(length)[None] < np.array([min(len(t), length - 2) + 2 for t in token_lists])[:, None])
  return {"input_ids": ids, "input_mask": mask.astype(np.int32), "segment_ids": np.zeros_like(ids)}


# ---- fill-mask and embed (any encoder with an MLM head / any encoder) --------------------------------------


def token_text(tok, token_id: int) -> str:
  """A vocabulary piece as text: without SentencePiece's '▁', WordPiece's '##' or byte-level BPE's 'Ġ'."""
  if tok.kind == "bpe":
    return tok.backend.decode([int(token_id)]).strip()
  piece = tok.pieces[int(token_id)]
  return piece[2:] if tok.kind == "wordpiece" and piece.startswith("##") else piece.replace("\u2581", " ").strip()


def encode_with_masks(tok, text: str) -> list[int]:
  """Ids of text where each [MASK] / <mask> becomes the vocabulary's mask id (the space before it dropped)."""
  parts = re.split("(" + "|".join(re.escape(m) for m in MASK_TOKENS) + ")", text)
  ids = []
  for i, part in enumerate(parts):
    if part in MASK_TOKENS:
      ids.append(tok.mask_id)
    elif part:
      ids += tok.encode(part.rstrip() if i + 1 < len(parts) else part)
  return ids


def fill_mask(params, model_config, tok, texts, top_k: int = 5, batch_size: int = 32) -> list[dict]:
  """The top_k tokens (with probabilities) for every mask of every text."""
  if "mlm" not in params:
    raise ValueError(f"these params have no masked-LM head (sections {sorted(params)}); fill-mask needs a "
                     f"pretraining workdir trained with an MLM objective")
  encoded = [encode_with_masks(tok, t) for t in texts]
  room = model_config.max_sequence_length - 2
  for n, (text, ids) in enumerate(zip(texts, encoded), 1):
    where = [i for i, t in enumerate(ids) if t == tok.mask_id]
    if not where:
      raise ValueError(f"line {n} has no mask ({' or '.join(MASK_TOKENS)}): {text[:80]!r}")
    if where[-1] >= room:
      raise ValueError(f"line {n}: a mask at token {where[-1]} lies past the model's {room}-token limit; "
                       f"shorten the line")
  features = _single_segment(encoded, tok, model_config.max_sequence_length)
  masks = [[i + 1 for i, t in enumerate(ids) if t == tok.mask_id] for ids in encoded]
  positions = np.zeros((len(texts), max(len(m) for m in masks)), np.int32)
  for row, m in enumerate(masks):
    positions[row, :len(m)] = m
  features["masked_lm_positions"] = positions
  model = EncoderWithHeads(model_config, heads=("mlm",))

  @jax.jit
  def top(p, batch):
    logits = model.apply({"params": p}, batch["input_ids"], batch["input_mask"], batch["segment_ids"],
                         batch["masked_lm_positions"])["mlm_logits"]
    probs, ids = jax.lax.top_k(jax.nn.softmax(logits.astype(jnp.float32), axis=-1), top_k)
    return probs, ids

  probs, ids = _run_batched(top, {"encoder": params["encoder"], "mlm": params["mlm"]}, features, batch_size)
  out = []
  for row, text in enumerate(texts):
    out.append({"text": text, "masks": [
        {"position": int(pos), "predictions": [
            {"token": token_text(tok, t), "piece": tok.pieces[int(t)], "id": int(t), "score": float(p)}
            for p, t in zip(probs[row, k], ids[row, k])]}
        for k, pos in enumerate(masks[row])]})
  return out


class _Embedder(nn.Module):
  config: object
  pooling: str

  @nn.compact
  def __call__(self, input_ids_BxT, input_mask_BxT, segment_ids_BxT):
    encoder = Encoder(self.config, True, name="encoder")
    x = encoder(input_ids_BxT, input_mask_BxT, segment_ids_BxT).astype(jnp.float32)
    if self.pooling == "pooled":
      return encoder.pool(x).astype(jnp.float32)
    return heads.mean_over_tokens(x, input_mask_BxT)


def embed(params, model_config, tok, texts, pooling: str = "mean", batch_size: int = 32) -> np.ndarray:
  """[N, hidden] float32 vectors: `pooled` ([CLS] through the pooler) or `mean` (over real tokens)."""
  if pooling not in ("pooled", "mean"):
    raise ValueError(f"pooling {pooling!r} is not 'pooled' or 'mean'")
  if pooling == "pooled" and "pooler" not in params["encoder"]:
    raise ValueError("this model has no pooler (it never trained one: e.g. RoBERTa, or an MLM-only run); "
                     "use --pooling=mean")
  features = _single_segment([tok.encode(t) for t in texts], tok, model_config.max_sequence_length)
  model = _Embedder(model_config, pooling)
  fn = jax.jit(lambda p, b: model.apply({"params": p}, b["input_ids"], b["input_mask"], b["segment_ids"]))
  return _run_batched(fn, {"encoder": params["encoder"]}, features, batch_size)


# ---- fine-tuned task heads ----------------------------------------------------------------------------------


def _task_outputs(params, info: dict, features: dict, batch_size: int):
  spec, model_config = info["spec"], info["model_config"]
  model = heads.MODELS[spec.kind](model_config, num_labels=spec.num_labels)
  fn = jax.jit(lambda p, b: model.apply({"params": p}, b["input_ids"], b["input_mask"], b["segment_ids"]))
  keys = ("input_ids", "input_mask", "segment_ids")
  return _run_batched(fn, params, {k: features[k] for k in keys}, batch_size)


def _need_kind(info: dict | None, kinds: tuple, command: str) -> None:
  if info is None:
    raise ValueError(f"{command} needs a fine-tuning workdir (one with {MODEL_INFO}); this is a pretraining one")
  if info["spec"].kind not in kinds:
    raise ValueError(f"{command} needs a model fine-tuned for {' or '.join(kinds)}; this one is "
                     f"{info['spec'].kind} ({info['spec'].name}): use `{_COMMAND_OF[info['spec'].kind]}`")


KINDS_OF = {"classify": ("classification", "regression"), "tag": ("tagging",), "qa": ("qa",),
            "choose": ("multiple_choice",)}
_COMMAND_OF = {kind: command for command, kinds in KINDS_OF.items() for kind in kinds}


def classify(params, info: dict, tok, texts, batch_size: int = 32) -> list[dict]:
  spec = info["spec"]
  pairs = len(spec.text_keys) > 1  # a single-text task never saw a second segment: a tab is part of its text
  examples = []
  for text in texts:
    a, _, b = text.partition("\t") if pairs else (text, "", "")
    examples.append({"text_a": a, "text_b": b or None, "label": 0.0 if spec.kind == "regression" else 0})
  features = tasks.classification_features(examples, tok, info["max_seq_length"], spec.kind == "regression")
  logits = _task_outputs(params, info, features, batch_size)["logits"]
  if spec.kind == "regression":
    return [{"text": t, "value": float(v)} for t, v in zip(texts, logits[:, 0])]
  probs = np.asarray(jax.nn.softmax(logits, axis=-1))
  return [{"text": t, "label": spec.label_names[int(np.argmax(p))], "score": float(np.max(p)),
           "scores": {name: float(x) for name, x in zip(spec.label_names, p)}} for t, p in zip(texts, probs)]


def tag(params, info: dict, tok, texts, batch_size: int = 32) -> list[dict]:
  spec = info["spec"]
  sentences = [t.split() for t in texts]
  features = tasks.tagging_features([{"words": w, "labels": [0] * len(w)} for w in sentences], tok,
                                    info["max_seq_length"])
  logits = _task_outputs(params, info, features, batch_size)["logits"]
  first_pieces = np.argmax(logits, -1)[features["label_weights"] > 0]  # one per word, in input order
  out, start = [], 0
  for words in sentences:
    out.append({"words": words, "tags": [spec.label_names[int(i)] for i in first_pieces[start:start + len(words)]]})
    start += len(words)
  return out


def qa(params, info: dict, tok, texts, batch_size: int = 32) -> list[dict]:
  examples = []
  for n, text in enumerate(texts, 1):
    question, sep, context = text.partition("\t")
    if not sep:
      raise ValueError(f"line {n}: qa needs question<TAB>context, got no tab in {text[:80]!r}")
    examples.append({"id": str(n), "question": question, "context": context, "answers": [], "answer_start": -1})
  features = tasks.qa_features(examples, tok, info["max_seq_length"], info["doc_stride"], info["max_query_length"])
  out = _task_outputs(params, info, features, batch_size)
  answers = tasks.qa_decode(examples, features, out["start_logits"], out["end_logits"],
                            null_answers=info["spec"].metric == "squad_v2")
  return [{"question": e["question"], "answer": answers[e["id"]]} for e in examples]


def choose(params, info: dict, tok, texts, batch_size: int = 32) -> list[dict]:
  spec = info["spec"]
  with_question = len(spec.text_keys) > 1
  examples = []
  for n, text in enumerate(texts, 1):
    fields = text.split("\t")
    context, question, choices = fields[0], fields[1] if with_question else None, fields[2 if with_question else 1:]
    if len(choices) < 2:
      layout = "context<TAB>question<TAB>choice<TAB>choice..." if with_question else "context<TAB>choice<TAB>choice..."
      raise ValueError(f"line {n}: choose needs {layout} with at least 2 choices, got {len(choices)} in {text[:80]!r}")
    examples.append({"context": context, "question": question or None, "choices": choices, "label": 0})
  features = tasks.multiple_choice_features(examples, tok, info["max_seq_length"])
  logits = _task_outputs(params, info, features, batch_size)["logits"]
  out = []
  for ex, scores, real in zip(examples, logits, features["choice_mask"]):
    probs = np.asarray(jax.nn.softmax(np.where(real > 0, scores, -np.inf)))[:len(ex["choices"])]
    best = int(np.argmax(probs))
    out.append({"context": ex["context"], **({"question": ex["question"]} if with_question else {}),
                "choices": ex["choices"], "choice": best, "answer": ex["choices"][best],
                "scores": [float(p) for p in probs]})
  return out


# ---- the CLI's one call -------------------------------------------------------------------------------------


def read_lines(path: str) -> list[str]:
  """Non-blank lines of a file, or of stdin for '' or '-'."""
  if path in ("", "-"):
    lines = sys.stdin.read().splitlines()
  else:
    with open(path, encoding="utf-8") as f:
      lines = f.read().splitlines()
  return [line for line in lines if line.strip()]


def _write_jsonl(records, path: str) -> None:
  text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
  if path in ("", "-"):
    sys.stdout.write(text)
    sys.stdout.flush()
  else:
    with open(path, "w", encoding="utf-8") as f:
      f.write(text)


def run(command: str, workdir: str, input_path: str = "-", output_path: str = "-", *, top_k: int = 5,
        pooling: str = "mean", batch_size: int = 32, vocab_file: str = "") -> int:
  """Reads lines, predicts, writes JSON lines (embed to .npy too); returns the number of examples."""
  if command not in COMMANDS:
    raise ValueError(f"unknown command {command!r}; choose one of {COMMANDS}")
  for name, value in (("top_k", top_k), ("batch_size", batch_size)):
    if value < 1:  # top_k=0 printed no predictions without a word; batch_size=0 failed in range()
      raise ValueError(f"--{name}={value} must be at least 1")
  texts = read_lines(input_path)
  if not texts:
    raise ValueError(f"no input lines in {input_path or 'stdin'}")
  params, model_config, tok, info = load(workdir, vocab_file)
  if command == "fill-mask":
    _write_jsonl(fill_mask(params, model_config, tok, texts, top_k, batch_size), output_path)
  elif command == "embed":
    vectors = embed(params, model_config, tok, texts, pooling, batch_size)
    if output_path.endswith(".npy"):
      np.save(output_path, vectors)
    else:
      _write_jsonl([{"text": t, "embedding": v.tolist()} for t, v in zip(texts, vectors)], output_path)
  else:
    _need_kind(info, KINDS_OF[command], command)
    fn = {"classify": classify, "tag": tag, "qa": qa, "choose": choose}[command]
    _write_jsonl(fn(params, info, tok, texts, batch_size), output_path)
  return len(texts)
