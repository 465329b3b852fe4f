"""CPU demo of distillation: a 1-layer DistilBERT student of the Quick start's 2-layer `tiny` BERT (runs/tiny),
on the offline pydocs corpus tokenized with the teacher's vocabulary; it starts from the teacher, so a few hundred
steps suffice (bench/RESULTS.md: 200 steps at seq 64)."""

from configs import common, distilbert_base


def get_config():
  c = common.cpu_demo(distilbert_base.get_config())  # size tiny: 128 hidden, 1 layer (half of tiny's 2)
  c.distill.teacher = "runs/tiny"       # the Quick start's run: python -m bert_jax.train --config=tiny --workdir=runs/tiny
  c.distill.teacher_dtype = "float32"   # CPUs have no fast bf16 matmul
  c.optim.peak_learning_rate = 5e-4     # HF's distillation rate: the student starts from the teacher
  c.train.steps = 300                   # a few hundred: the student starts from the teacher
  c.train.eval_every = 100              # three evals, each with the teacher's accuracy beside the student's
  c.optim.warmup_steps = 30             # 10% of the steps
  c.checkpoint.every_steps = 100        # as often as the evals
  return c
