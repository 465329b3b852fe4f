"""The full-size configs against the papers and reference code: the numbers a user expects from each recipe, and
learning-rate curves that follow the reference's formula."""
import flax.linen as nn
import jax
import pytest

from bert_jax.core import configlib, optim, param_rules
from bert_jax.trainers import pretrain


def _schedule(name, overrides=None):
  c = configlib.load(name, overrides or {})
  o = c.optim
  return optim.learning_rate_schedule(o.peak_learning_rate, o.warmup_steps,
                                      optim.schedule_steps(o, c.train.steps), o.decay, o.power,
                                      o.end_learning_rate, o.decay_from), c


@pytest.mark.parametrize("name", ["electra_small", "electra_base", "electra_large"])
def test_electra_decays_from_step_zero_as_google_research_electra(name):
  # model/optimization.py: polynomial_decay(lr, step, num_train_steps) times min(1, step / warmup), so after
  # warmup the rate is lr * (1 - step / num_train_steps), already below the peak.
  sched, c = _schedule(name)
  peak, total = c.optim.peak_learning_rate, c.train.steps
  for step in (c.optim.warmup_steps, total // 3, total - 1000):
    assert float(sched(step)) == pytest.approx(peak * (1 - step / total), abs=peak * 1e-5), step


@pytest.mark.parametrize("name", ["albert_base", "albert_large", "albert_xlarge", "albert_xxlarge"])
def test_albert_masks_ngrams_of_whole_words_as_google_research_albert(name):
  # create_pretraining_data.py: do_whole_word_mask=True, ngram=3 with p(n) ~ 1/n, so an n-gram is n whole words
  from bert_jax import inputs
  opts = inputs.masking_options(configlib.load(name).data)
  assert (opts.mode, opts.max_ngram, opts.whole_word_masking, opts.word_units) == ("ngram", 3, True, True)


@pytest.mark.parametrize("name,batch,steps,warmup,peak", [
    ("roberta_base", 2048, 125000, 10000, 5e-4),   # fairseq examples/roberta/config/pretraining/base.yaml
    ("roberta_large", 8192, 500000, 30000, 4e-4),  # the paper's Table 9
])
def test_roberta_batch_steps_and_learning_rate_come_from_one_recipe(name, batch, steps, warmup, peak):
  c = configlib.load(name)
  assert (c.train.batch_size, c.train.steps, c.optim.warmup_steps, c.optim.peak_learning_rate) == (
      batch, steps, warmup, peak)
  # both: Adam (0.9, 0.98), eps 1e-6, weight decay 0.01, no clipping, linear decay from the peak to 0
  o = c.optim
  assert (o.b1, o.b2, o.eps, o.weight_decay, o.clip_norm, o.decay, o.decay_from, o.end_learning_rate) == (
      0.9, 0.98, 1e-6, 0.01, 0.0, "linear", "warmup_end", 0.0)


def test_distilbert_optimizer_is_hf_distillers():
  # examples/research_projects/distillation: distiller.py's AdamW(betas=(0.9, 0.98)), train.py's defaults
  # (lr 5e-4, eps 1e-6, weight decay 0, max_grad_norm 5, warmup_prop 0.05), README's alphas 5/2/1, temperature 2
  c = configlib.load("distilbert_base")
  o, s = c.optim, c.distill
  assert (o.name, o.b1, o.b2, o.eps, o.weight_decay, o.clip_norm, o.peak_learning_rate) == (
      "adamw", 0.9, 0.98, 1e-6, 0.0, 5.0, 5e-4)
  assert o.warmup_steps == 0.05 * c.train.steps and (o.decay, o.decay_from) == ("linear", "warmup_end")
  assert (s.temperature, s.alpha_ce, s.alpha_mlm, s.alpha_cos, s.kl_positions) == (2.0, 5.0, 2.0, 1.0, "all")
  assert (c.data.masked_lm_prob, c.data.replacement, c.data.dynamic_masking) == (
      0.15, "mask:0.8,random:0.1,keep:0.1", True)
  # scripts/binarized_data.py: sequences of up to max_model_input_size (512 for bert) tokens
  assert (c.data.max_seq_length, c.data.max_predictions_per_seq) == (512, 80)


@pytest.mark.parametrize("size", ["base", "large"])
def test_bert_phases_follow_the_papers_one_learning_rate_line(size):
  # Devlin et al. A.2: 1M steps, 10k warmup to 1e-4, linear decay to 0; 90% of the steps at 128, the rest at 512.
  # Phase 1 is the line's first 900k steps; phase 2 starts a fresh optimizer (a short re-warmup) on its last 100k.
  paper = lambda step: 1e-4 * (1 - step / 1_000_000)
  phase1, c1 = _schedule(size)
  phase2, c2 = _schedule("large_phase2", {"model.size": size})
  assert (c1.train.steps, c2.train.steps, c1.data.max_seq_length, c2.data.max_seq_length) == (
      900000, 100000, 128, 512)
  assert (c1.data.max_predictions_per_seq, c2.data.max_predictions_per_seq, c1.train.batch_size) == (20, 80, 256)
  for step in (10000, 450000, 899999):
    assert float(phase1(step)) == pytest.approx(paper(step), abs=1e-9), step
  for step in (1000, 50000, 99999):
    assert float(phase2(step)) == pytest.approx(paper(900000 + step), abs=1e-9), step
  assert float(phase2(500)) < paper(900500)  # the re-warmup never overshoots the line
  # google-research/bert's uncased models: lower-cased text for the uncased 30522-piece vocabulary
  assert c1.data.lower_case and c2.data.lower_case and c1.model.vocab_size == 30522


def test_large_lamb_is_nvidias_phase_1():
  # NVIDIA DeepLearningExamples BERT run_pretraining.sh: batch 65536, lr 6e-3, warmup 0.2843 of 7038 steps,
  # PolyWarmUpScheduler (degree 0.5 over all steps from 0, to 0)
  sched, c = _schedule("large_lamb")
  assert (c.optim.name, c.train.batch_size, c.train.steps, c.optim.warmup_steps) == ("lamb", 65536, 7038, 2000)
  for step in (2000, 5000, 7000):
    assert float(sched(step)) == pytest.approx(6e-3 * (1 - step / 7038) ** 0.5, rel=1e-4), step


def test_large_lamb_phase2_is_nvidias_phase_2():
  # run_pretraining.sh: batch 32768 (4096 x 8 GPUs), lr 4e-3, warmup 0.128 of 1563 steps, seq 512, max_pred 80,
  # PolyWarmUpScheduler as phase 1
  sched, c = _schedule("large_lamb_phase2")
  assert (c.optim.name, c.train.batch_size, c.train.steps, c.optim.warmup_steps) == ("lamb", 32768, 1563, 200)
  assert (c.data.max_seq_length, c.data.max_predictions_per_seq, c.data.pack_instances) == (512, 80, 0)
  for step in (200, 800, 1500):
    assert float(sched(step)) == pytest.approx(4e-3 * (1 - step / 1563) ** 0.5, rel=1e-4), step


# (layers, hidden, heads, FFN, embedding width, vocab, positions, LayerNorm eps, dropout, activation) per paper:
# BERT Table/README, ALBERT Table 1 + albert_config.json (v2: no dropout), RoBERTa Table 9 + HF config, ELECTRA
# Table 6, DistilBERT (6 of BERT-base's layers), SpanBERT (BERT-base cased), HIT's and NEZHA's bert-base-chinese
# vocabulary, ERNIE 1.0's released config (18000 pieces, 513 positions).
SIZES = {
    "base": (12, 768, 12, 3072, 768, 30522, 512, 1e-12, 0.1, "gelu"),
    "large": (24, 1024, 16, 4096, 1024, 30522, 512, 1e-12, 0.1, "gelu"),
    "albert_base": (12, 768, 12, 3072, 128, 30000, 512, 1e-12, 0.0, "gelu_new"),
    "albert_large": (24, 1024, 16, 4096, 128, 30000, 512, 1e-12, 0.0, "gelu_new"),
    "albert_xlarge": (24, 2048, 16, 8192, 128, 30000, 512, 1e-12, 0.0, "gelu_new"),
    "albert_xxlarge": (12, 4096, 64, 16384, 128, 30000, 512, 1e-12, 0.0, "gelu_new"),
    "roberta_base": (12, 768, 12, 3072, 768, 50265, 514, 1e-5, 0.1, "gelu"),
    "roberta_large": (24, 1024, 16, 4096, 1024, 50265, 514, 1e-5, 0.1, "gelu"),
    "electra_small": (12, 256, 4, 1024, 128, 30522, 512, 1e-12, 0.1, "gelu"),
    "electra_base": (12, 768, 12, 3072, 768, 30522, 512, 1e-12, 0.1, "gelu"),
    "electra_large": (24, 1024, 16, 4096, 1024, 30522, 512, 1e-12, 0.1, "gelu"),
    "distilbert_base": (6, 768, 12, 3072, 768, 30522, 512, 1e-12, 0.1, "gelu"),
    "spanbert_base": (12, 768, 12, 3072, 768, 28996, 512, 1e-12, 0.1, "gelu"),
    "bert_wwm_chinese_base": (12, 768, 12, 3072, 768, 21128, 512, 1e-12, 0.1, "gelu"),
    "roberta_wwm_ext_base": (12, 768, 12, 3072, 768, 21128, 512, 1e-12, 0.1, "gelu"),
    "ernie_base": (12, 768, 12, 3072, 768, 18000, 513, 1e-5, 0.1, "relu"),  # the released ERNIE 1.0's
    "nezha_base": (12, 768, 12, 3072, 768, 21128, 512, 1e-12, 0.1, "gelu"),
}


@pytest.mark.parametrize("name", sorted(SIZES))
def test_full_configs_build_the_papers_model(name):
  from bert_jax.models import registry
  c = configlib.load(name)
  m = registry.encoder_config(c.model.to_dict())
  assert (m.num_layers, m.hidden_size, m.num_heads, m.intermediate_size, m.embedding_width, m.vocab_size,
          m.max_position_embeddings, m.layer_norm_eps, m.hidden_dropout, m.hidden_act) == SIZES[name]
  assert m.attention_dropout == m.hidden_dropout and c.data.vocab_size in (30522, m.vocab_size)
  assert c.data.masked_lm_prob == (0.25 if name == "electra_large" else 0.15)


@pytest.mark.parametrize("name", ["albert_base", "albert_large", "albert_xlarge", "albert_xxlarge"])
def test_albert_optimizer_is_google_research_albert(name):
  # run_pretraining.py flags (lr 0.00176, 125k steps, 3125 warmup, batch 4096, poly_power 1) and optimization.py
  # (LAMB b1 0.9, b2 0.999, eps 1e-6, weight decay 0.01, clip 1.0, polynomial decay from step 0 to 0)
  sched, c = _schedule(name)
  o = c.optim
  assert (o.name, o.b1, o.b2, o.eps, o.weight_decay, o.clip_norm) == ("lamb", 0.9, 0.999, 1e-6, 0.01, 1.0)
  assert (c.train.batch_size, c.train.steps, o.warmup_steps, c.data.max_seq_length,
          c.data.max_predictions_per_seq, c.data.mode) == (4096, 125000, 3125, 512, 20, "sop")
  assert c.data.dupe_factor == 40  # create_pretraining_data.py's default
  for step in (3125, 60000, 124000):
    assert float(sched(step)) == pytest.approx(0.00176 * (1 - step / 125000), abs=1e-9), step


def _decayed(name):
  """{path: decays} over the run's real parameter tree (shapes only), under the run's own rules."""
  config = configlib.load(name)
  _, objective = pretrain.build(config)
  params = nn.unbox(jax.eval_shape(objective.init_params, jax.random.key(0)))
  mask = param_rules.decay_mask(params, pretrain.param_rules_of(config, objective))
  return {param_rules.path_of(p): v for p, v in jax.tree_util.tree_leaves_with_path(mask)}


@pytest.mark.parametrize("name", ["roberta_base", "roberta_large", "spanbert_base"])
def test_fairseq_recipes_decay_every_parameter(name):
  # fairseq's trainer hands all of model.parameters() to Adam with one weight_decay: no bias/LayerNorm exclusion
  decayed = _decayed(name)
  assert any(p.endswith("/bias") for p in decayed) and any("layer_norm" in p for p in decayed)
  assert all(decayed.values()), [p for p, v in decayed.items() if not v][:5]


def test_bert_recipe_keeps_biases_and_layer_norm_out_of_weight_decay():
  decayed = _decayed("base")
  assert not any(v for p, v in decayed.items() if p.endswith("/bias") or "layer_norm" in p)
  assert decayed["encoder/embeddings/word_embeddings/embedding"]
