"""Knowledge distillation (DistilBERT, Sanh et al. 2019): a student learns from a frozen BERT teacher.

  loss = alpha_ce * T^2 * KL(teacher_T || student_T)   soft targets at temperature T, per real token
       + alpha_mlm * MLM cross-entropy                 the usual hard targets at the masked positions
       + alpha_cos * (1 - cos(h_student, h_teacher))   last hidden states, per real token
with the paper's defaults T=2 and alphas 5/2/1 (HF's distiller.py computes the same terms).

The teacher lives in the same params tree under `teacher/` (so it is sharded like the student and saved in the
checkpoint), frozen through param_rules (no optimizer state, never updated) and run under stop_gradient in its
own dtype (bf16 halves its cost on accelerators). The trainer loads it from `distill.teacher` (a workdir, a
params checkpoint or an HF BERT directory) through init_sources(), then finish_init() copies every other
teacher layer into the student. Export and fine-tuning see only the student (exported_models()).

metrics.jsonl fields: mlm_loss, mlm_accuracy, kl_loss (T^2 * mean KL), cosine_loss, teacher_mlm_loss,
teacher_mlm_accuracy (the teacher on the same masked tokens: the number the student approaches).
"""

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp

from bert_jax.core import param_rules
from bert_jax.models import name_tables as nt
from bert_jax.models import pretraining
from bert_jax.models.config import EncoderConfig, trunk_flops_per_sequence
from bert_jax.objectives import base
from bert_jax.objectives.base import ratio
from bert_jax.objectives.masked_lm import MLM_KEYS, mlm_sums

TEACHER = "teacher"
TEACHER_FAMILIES = ("bert",)
KL_POSITIONS = ("all", "masked")


@dataclasses.dataclass(frozen=True)
class DistillSettings:
  """The run config's `distill` section (configs/distilbert_base.py documents each field)."""
  teacher: str
  temperature: float = 2.0
  alpha_ce: float = 5.0
  alpha_mlm: float = 2.0
  alpha_cos: float = 1.0
  teacher_dtype: str = "bfloat16"
  init_from_teacher: bool = True
  kl_positions: str = "all"

  def __post_init__(self):
    if not self.teacher:
      raise ValueError("distillation needs a teacher: set --config.distill.teacher to a BERT workdir, params "
                       "checkpoint or HF directory (e.g. the Quick start's runs/tiny)")
    if self.temperature <= 0:
      raise ValueError(f"distill.temperature must be > 0, got {self.temperature}")
    if min(self.alpha_ce, self.alpha_mlm, self.alpha_cos) < 0 or not (self.alpha_ce or self.alpha_mlm or self.alpha_cos):
      raise ValueError(f"distill.alpha_ce/alpha_mlm/alpha_cos must be >= 0 and not all 0, got "
                       f"{self.alpha_ce}/{self.alpha_mlm}/{self.alpha_cos}")
    if self.kl_positions not in KL_POSITIONS:
      raise ValueError(f"distill.kl_positions {self.kl_positions!r} is not one of {KL_POSITIONS}")


def teacher_layers(teacher_layers_count: int, student_layers_count: int) -> list[int]:
  """Teacher layer copied into each student layer: spread evenly from the first to the last, which for 12 -> 6
  is [0, 2, 4, 7, 9, 11], the layers HF's extract_distilbert.py takes ("every other layer")."""
  if student_layers_count == 1:
    return [0]
  step = (teacher_layers_count - 1) / (student_layers_count - 1)
  return [int(round(i * step)) for i in range(student_layers_count)]


def kl_sums(student_logits, teacher_logits, weights, temperature):
  """Weighted sum over positions of KL(softmax(t/T) || softmax(s/T)), and the weight."""
  log_p_s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
  log_p_t = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
  kl = jnp.sum(jnp.exp(log_p_t) * (log_p_t - log_p_s), axis=-1)
  weights = weights.astype(jnp.float32)
  return {"kl_sum": jnp.sum(kl * weights), "weight_sum": jnp.sum(weights)}


def cosine_sums(student_BxTxH, teacher_BxTxH, weights_BxT):
  """Weighted sum over tokens of 1 - cos(student, teacher) (torch's CosineEmbeddingLoss with target 1); 0 when the
  widths differ (a student narrower than its teacher trains with alpha_cos=0, which _check_teacher requires)."""
  if student_BxTxH.shape[-1] != teacher_BxTxH.shape[-1]:
    return {"cos_sum": jnp.zeros((), jnp.float32)}
  s, t = student_BxTxH.astype(jnp.float32), teacher_BxTxH.astype(jnp.float32)
  cos = jnp.sum(s * t, -1) / jnp.maximum(jnp.linalg.norm(s, axis=-1) * jnp.linalg.norm(t, axis=-1), 1e-8)
  return {"cos_sum": jnp.sum((1.0 - cos) * weights_BxT.astype(jnp.float32))}


class Distillation(base.Objective):
  name = "distill"
  heads = ("mlm",)
  batch_keys = MLM_KEYS
  log_fields = ("mlm_accuracy", "teacher_mlm_accuracy", "kl_loss")

  def __init__(self, config: EncoderConfig, seq_len: int, predictions: int, settings: DistillSettings, load_config):
    """load_config(path) -> the encoder config stored at the teacher path; read on first use (init_sources(), which
    the trainer calls before any data work), so building the objective touches no file."""
    self.config, self.seq_len, self.predictions, self.settings = config, seq_len, predictions, settings
    self._load_config = load_config
    self.model = pretraining.EncoderWithHeads(config, ("mlm",))

  @functools.cached_property
  def teacher_config(self) -> EncoderConfig:
    if self._load_config is None:
      raise ValueError("objective 'distill' needs load_config to read the teacher's encoder config")
    teacher = self._teacher_as_run(self._load_config(self.settings.teacher))
    self._check_teacher(teacher)
    return teacher

  @functools.cached_property
  def teacher_model(self):
    return pretraining.EncoderWithHeads(self.teacher_config, ("mlm",))

  def _teacher_as_run(self, teacher: EncoderConfig) -> EncoderConfig:
    """The teacher in this run's layout (scan, fused QKV, vocabulary padding) and the teacher dtype; no dropout,
    no remat and no FP8 (it has no backward pass, which is what would update FP8 statistics)."""
    c = self.config
    return dataclasses.replace(teacher, dtype=self.settings.teacher_dtype, param_dtype=c.param_dtype,
                               scan_layers=c.scan_layers, fused_qkv=c.fused_qkv, vocab_pad_multiple=c.vocab_pad_multiple,
                               attention_impl=c.attention_impl, remat_policy="none", mlm_all_positions=False, fp8=False,
                               hidden_dropout=0.0, attention_dropout=0.0)

  def _check_teacher(self, t: EncoderConfig):
    s, c = self.settings, self.config
    where = f"distillation teacher {s.teacher}"
    if type(t).family not in TEACHER_FAMILIES:
      raise ValueError(f"{where} holds a {type(t).family!r} model; the teacher must be a "
                       f"{' or '.join(TEACHER_FAMILIES)} model (a workdir, params checkpoint or HF directory)")
    if t.vocab_size != c.vocab_size:
      raise ValueError(f"{where} has vocab_size {t.vocab_size} but the student has model.vocab_size={c.vocab_size}; "
                       f"the student must use the teacher's vocabulary (--config.model.vocab_size={t.vocab_size})")
    if s.alpha_cos and t.hidden_size != c.hidden_size:
      raise ValueError(f"{where} has hidden size {t.hidden_size}, the student {c.hidden_size}: the cosine loss "
                       f"compares hidden states; use the teacher's size or --config.distill.alpha_cos=0")
    if s.init_from_teacher:
      shape = lambda x: (x.hidden_size, x.num_heads, x.intermediate_size, x.max_position_embeddings, x.hidden_act)
      if shape(t) != shape(c) or c.num_layers > t.num_layers:
        raise ValueError(f"{where} (hidden, heads, FFN, positions, act = {shape(t)}, {t.num_layers} layers) cannot "
                         f"initialise this student ({shape(c)}, {c.num_layers} layers): give the student the "
                         f"teacher's model.size with at most its layers, or --config.distill.init_from_teacher=False")

  # What the trainer loads before the first step (trainers/pretrain.py): subtree -> (path, its encoder config).
  def init_sources(self) -> dict:
    return {TEACHER: (self.settings.teacher, self.teacher_config)}

  def param_rules(self) -> tuple:
    return (param_rules.ParamRule(f"^{TEACHER}/", trainable=False),)

  def exported_models(self, params) -> dict:
    return {"": (student_params(params), self.config)}

  def init_params(self, rng):
    ids = jnp.zeros((1, self.seq_len), jnp.int32)
    positions = jnp.zeros((1, self.predictions), jnp.int32)
    student_rng, teacher_rng = jax.random.split(rng)
    student = self.model.init(student_rng, ids, ids, ids, positions)["params"]
    teacher = self.teacher_model.init(teacher_rng, ids, ids, ids, positions)["params"]
    return {**student, TEACHER: teacher}

  def finish_init(self, params):
    """After the teacher is loaded: the student from the teacher (embeddings, every other layer, MLM head).
    A student without token types (DistilBERT) gets the teacher's token-type row 0 added to its positions, so
    segment-0 inputs embed exactly as in the teacher; a student with a token-type table copies both tables as they
    are. Pure jnp: the trainer runs it under jit in the state's shardings."""
    if not self.settings.init_from_teacher:
      return params
    chosen = teacher_layers(self.teacher_config.num_layers, self.config.num_layers)
    teacher = nt.flatten(params[TEACHER])
    token_type_row = teacher["encoder/embeddings/token_type_embeddings/embedding"][0]
    fold_token_type = not type(self.config).has_token_types  # a student with its own table copies it instead

    def from_teacher(path, like):
      match = re.match(r"encoder/layer_(\d+)/(.*)", path)
      if param_rules.is_overwritten(path):  # an FP8 student's statistics: its own history starts here
        return like
      if match:
        value = teacher[f"encoder/layer_{chosen[int(match.group(1))]}/{match.group(2)}"]
      elif path.startswith("encoder/layers/"):
        value = jnp.take(teacher[path], jnp.asarray(chosen), axis=0)
      elif path == "encoder/embeddings/position_embeddings/embedding" and fold_token_type:
        value = teacher[path] + token_type_row[None]
      else:
        value = teacher[path]
      if value.shape != like.shape:
        raise ValueError(f"teacher {path} has shape {value.shape}, the student needs {like.shape}")
      return value.astype(like.dtype)

    student = nt.flatten(student_params(params))
    return {**nt.unflatten({p: from_teacher(p, v) for p, v in student.items()}), TEACHER: params[TEACHER]}

  def _outputs(self, params, batch, rng, deterministic):
    positions = batch["masked_lm_positions"] if self.settings.kl_positions == "masked" else None
    common = dict(position_ids_BxT=batch.get("position_ids"), attention_segments_BxT=batch.get("attention_segments"))
    inputs = (batch["input_ids"], batch["input_mask"], batch["segment_ids"], positions)
    teacher = self.teacher_model.apply({"params": jax.lax.stop_gradient(params[TEACHER])}, *inputs, **common,
                                       deterministic=True)
    teacher = jax.lax.stop_gradient(teacher)
    student = self.model.apply({"params": student_params(params)}, *inputs, **common,
                               deterministic=deterministic, rngs={"dropout": rng})
    return student, teacher

  def loss_sums(self, params, batch, rng, deterministic):
    student, teacher = self._outputs(params, batch, rng, deterministic)
    if self.settings.kl_positions == "masked":
      kl = kl_sums(student["mlm_logits"], teacher["mlm_logits"], batch["masked_lm_weights"], self.settings.temperature)
      at_masked = lambda logits: logits
    else:
      kl = kl_sums(student["mlm_logits"], teacher["mlm_logits"], batch["input_mask"], self.settings.temperature)
      positions = batch["masked_lm_positions"][..., None].astype(jnp.int32)
      at_masked = lambda logits: jnp.take_along_axis(logits, positions, axis=1)
    labels, weights = batch["masked_lm_ids"], batch["masked_lm_weights"]
    return {"kl": kl,
            "cos": {**cosine_sums(student["sequence_output"], teacher["sequence_output"], batch["input_mask"]),
                    "token_sum": jnp.sum(batch["input_mask"].astype(jnp.float32))},
            "mlm": mlm_sums(at_masked(student["mlm_logits"]), labels, weights),
            "teacher_mlm": mlm_sums(at_masked(teacher["mlm_logits"]), labels, weights)}

  def denominators(self, batch):
    weights = lambda key: jnp.maximum(jnp.sum(batch[key].astype(jnp.float32)), 1e-5)
    return {"kl": weights("masked_lm_weights" if self.settings.kl_positions == "masked" else "input_mask"),
            "tokens": weights("input_mask"), "mlm": weights("masked_lm_weights")}

  def _combine(self, kl_mean, mlm_mean, cos_mean):
    s = self.settings
    return s.alpha_ce * s.temperature ** 2 * kl_mean + s.alpha_mlm * mlm_mean + s.alpha_cos * cos_mean

  def loss(self, sums, denominators):
    return self._combine(sums["kl"]["kl_sum"] / denominators["kl"], sums["mlm"]["loss_sum"] / denominators["mlm"],
                         sums["cos"]["cos_sum"] / denominators["tokens"])

  def summaries(self, sums):
    m, t = sums["mlm"], sums["teacher_mlm"]
    kl_mean = ratio(sums["kl"]["kl_sum"], sums["kl"]["weight_sum"])
    out = {"mlm_loss": ratio(m["loss_sum"], m["weight_sum"]), "mlm_accuracy": ratio(m["correct_sum"], m["weight_sum"]),
           "kl_loss": self.settings.temperature ** 2 * kl_mean,
           "cosine_loss": ratio(sums["cos"]["cos_sum"], sums["cos"]["token_sum"]),
           "teacher_mlm_loss": ratio(t["loss_sum"], t["weight_sum"]),
           "teacher_mlm_accuracy": ratio(t["correct_sum"], t["weight_sum"])}
    out["loss"] = self._combine(kl_mean, out["mlm_loss"], out["cosine_loss"])
    return out

  def flops_per_sequence(self):
    """Student training (trunk + MLM head at the KL positions) + the teacher's forward pass (a third of its
    training FLOPs) over the same positions."""
    positions = self.predictions if self.settings.kl_positions == "masked" else self.seq_len
    head = lambda c: 6 * positions * (c.hidden_size * c.embedding_width + c.embedding_width * c.vocab_size)
    student = trunk_flops_per_sequence(self.config, self.seq_len) + head(self.config)
    teacher = (trunk_flops_per_sequence(self.teacher_config, self.seq_len) + head(self.teacher_config)) / 3
    return float(student + teacher)


def student_params(params) -> dict:
  """The student's subtrees (encoder, mlm) of a distillation params tree: what export and fine-tuning see."""
  return {k: v for k, v in params.items() if k != TEACHER}


def from_settings(config: EncoderConfig, seq_len: int, predictions: int, settings: dict, load_config):
  """The objective from the run config's `distill` section (a dict); load_config(path) -> the teacher's encoder
  config (the trainer reads a workdir, params checkpoint or HF directory: objectives cannot import convert)."""
  if not settings:
    raise ValueError("objective 'distill' needs the run config's `distill` section (teacher, temperature, alphas); "
                     "start from configs/distilbert_base.py or configs/distilbert_tiny.py")
  fields = {f.name for f in dataclasses.fields(DistillSettings)}
  unknown = sorted(set(settings) - fields)
  if unknown:
    raise ValueError(f"distill keys {unknown} are not DistillSettings fields ({sorted(fields)})")
  return Distillation(config, seq_len, predictions, DistillSettings(**settings), load_config)
