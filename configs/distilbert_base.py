"""DistilBERT (Sanh et al. 2019): a 6-layer student distilled from a BERT-base teacher (a workdir trained with
configs/base.py, a params checkpoint, or an HF BERT directory), with the paper's loss 5*KL(T=2) + 2*MLM + 1*cosine,
dynamic masking and no NSP; the student starts from every other teacher layer."""

import ml_collections

from configs import common


def distill_section(teacher: str) -> ml_collections.ConfigDict:
  s = ml_collections.ConfigDict()
  s.teacher = teacher                 # BERT workdir, params checkpoint (convert from_hf) or HF directory
  s.temperature = 2.0                 # softmax temperature of the soft targets (the KL term is scaled by T^2)
  s.alpha_ce = 5.0                    # weight of KL(teacher || student) on the soft targets
  s.alpha_mlm = 2.0                   # weight of the masked-LM cross-entropy on the hard labels
  s.alpha_cos = 1.0                   # weight of 1 - cos(student, teacher) on the last hidden states
  s.teacher_dtype = "bfloat16"        # the frozen teacher's compute dtype (its forward pass only)
  s.init_from_teacher = True          # student embeddings, MLM head and every other layer copied from the teacher
  s.kl_positions = "all"              # all: KL on every real token (the paper's code) | masked: masked tokens only
  return s


def get_config():
  c = common.get_config()
  c.model.family = "distilbert"         # no token-type embeddings, no pooler
  c.model.size = "base"                 # the teacher's shape: 768 hidden, 12 heads
  c.model.num_layers = 0                # 0: half the size's layers (base: 6)
  c.model.vocab_size = 30522            # the teacher's vocabulary
  c.data.mode = "full_sentences"        # no NSP: sequences of contiguous text
  c.data.dupe_factor = 1                # masks come from dynamic masking instead
  c.data.dynamic_masking = True         # re-mask every epoch, as the paper
  c.data.max_seq_length = 512           # HF's binarized_data.py cuts the corpus into sequences of up to 512 tokens
  c.data.max_predictions_per_seq = 80   # 15% of 512
  c.train.objective = "distill"
  c.train.batch_size = 2048             # the paper: up to 4k examples per batch
  c.train.steps = 100000
  c.optim.peak_learning_rate = 5e-4     # HF's distillation script
  c.optim.warmup_steps = 5000           # 5% of the steps
  c.optim.b2 = 0.98                     # HF distiller.py: AdamW(..., betas=(0.9, 0.98))
  c.optim.weight_decay = 0.0
  c.optim.clip_norm = 5.0
  c.distill = distill_section("runs/base")  # a workdir trained with --config=base
  c.lock()
  return c
