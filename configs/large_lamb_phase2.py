"""BERT-large LAMB phase 2 (You et al. 2019; NVIDIA DeepLearningExamples' run_pretraining.sh): seq 512 at batch
32768 for 1563 steps, lr 4e-3 with 12.8% warmup then the same degree-0.5 polynomial decay, from large_lamb's params.

  python -m bert_jax.train --config=large_lamb_phase2 --workdir=runs/lamb_p2 \\
      --config.checkpoint.init_checkpoint=runs/lamb_p1 --config.data.corpus=...

What differs from NVIDIA's: init_checkpoint brings phase 1's params only, so LAMB's moments start fresh here
(NVIDIA carries them over); the 200-step warmup starts them from zero updates.
"""

from configs import large_lamb


def get_config():
  c = large_lamb.get_config()
  c.unlock()
  c.data.max_seq_length = 512
  c.data.max_predictions_per_seq = 80   # NVIDIA's phase-2 data: max_pred 80 at seq 512
  c.data.pack_instances = 0             # one instance per row as NVIDIA's; packing (large_phase2) would put 1.78x the recipe's tokens in a step
  c.train.batch_size = 32768            # global; use train.microbatches where memory is short
  c.train.steps = 1563
  c.optim.peak_learning_rate = 4e-3     # LAMB phase 2 at batch 32768
  c.optim.warmup_steps = 200            # 12.8% of 1563 steps (NVIDIA's warmup_proportion_phase2)
  c.lock()
  return c
