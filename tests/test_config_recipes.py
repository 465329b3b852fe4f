"""The full-size configs against the papers and reference code: the numbers a user expects from each recipe, and
learning-rate curves that follow the reference's formula."""
import pytest

from bert_jax.core import configlib, optim


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
