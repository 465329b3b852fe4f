"""Fine-tuning defaults (python -m bert_jax.finetune --config=finetune): the offline pydocs demo task.

Other tasks: --config.task.name=glue/sst2 (TFDS, from task.data_dir), squad, conll2003, or
--config.task.name=files --config.task.kind=classification --config.task.train_file=train.jsonl ...
"""

import ml_collections

from bert_jax.core import sharding


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.init_checkpoint = ""              # pretraining workdir (or --init_checkpoint); empty: train from scratch

  c.task = t = ml_collections.ConfigDict()
  t.name = "pydocs_family"            # pydocs_family (offline demo) | a TFDS task (glue/sst2, squad, ...) | files
  t.data_dir = ""                     # TFDS data_dir for TFDS tasks
  t.train_file = ""                   # files: .jsonl or .tsv train examples
  t.eval_file = ""                    # files: .jsonl or .tsv eval examples
  t.kind = "classification"           # files: classification | regression | tagging | qa | multiple_choice
  t.text_keys = "text"                # files: text field(s), comma-separated (a,b for pairs; question,context; multiple_choice: context[,question])
  t.label_key = "label"               # files: label field (tags list for tagging, answers for qa, the right choice's index for multiple_choice)
  t.label_names = ""                  # files: comma-separated label set (empty: collected from train_file; multiple_choice: names of the choice positions, e.g. A,B,C,D)
  t.choice_keys = ""                  # files, multiple_choice: the field holding the list of choices, or one field per choice (ending0,ending1,...)
  t.metric = ""                       # files: accuracy_f1 | mcc | pearson_spearman | tagging | squad | squad_v2 (unanswerable questions) | accuracy (empty: by kind)

  c.data = d = ml_collections.ConfigDict()
  d.max_seq_length = 128              # tokens per row
  d.doc_stride = 128                  # qa: tokens between the starts of context windows (at most a window's length)
  d.max_query_length = 64             # qa: question tokens kept
  d.vocab_file = ""                   # must be the checkpoint's vocabulary (empty: found from the checkpoint)
  d.lower_case = False                # lower-case text (empty vocab_file: the checkpoint's setting)

  c.model = m = ml_collections.ConfigDict()
  m.family = "bert"                   # from scratch only: bert | albert | roberta | electra | distilbert (a checkpoint brings its own)
  m.size = "tiny"                     # from scratch only; a checkpoint brings its own sizes
  m.hidden_dropout = 0.1              # dropout in encoder and head
  m.attention_dropout = 0.1           # dropout on attention probabilities
  m.dtype = "float32"                 # compute dtype
  m.attention_impl = "auto"           # auto | xla | cudnn
  m.pooling = "cls"                   # classification input: cls (as HF; exports) | mean of the tokens (train.export_hf=False)

  c.train = r = ml_collections.ConfigDict()
  r.epochs = 3                        # passes over the train set
  r.max_steps = 0                     # >0: stop after this many steps instead
  r.batch_size = 32                   # global batch
  r.eval_batch_size = 64              # global eval batch
  r.learning_rate = 5e-5              # peak, after warmup
  r.warmup_fraction = 0.1             # of all steps, linear from 0
  r.weight_decay = 0.01               # decoupled, not on biases or LayerNorm
  r.clip_norm = 1.0                   # global-norm clipping (0: off)
  r.method = "full"                   # full | frozen (head only) | houlsby | pfeiffer | prompt | prefix | lora
  r.freeze_encoder = False            # shorthand for method=frozen (feature extraction: train the head only)
  r.param_rules = ""                  # 'REGEX:ACTION;...' over param paths, before the method's (core/param_rules.py)
  r.seed = 0                          # head init, dropout and shuffling
  r.log_every = 50                    # steps between train metric lines
  r.eval_every = 0                    # steps between evals (0: only at the end)
  r.early_stop_metric = ""            # eval field to early-stop on (eval_loss, accuracy, f1, ...; '' off)
  r.early_stop_patience = 3           # evals without improvement before stopping (needs eval_every)
  r.export_hf = True                  # write hf/ (transformers model + tokenizer) and check its logits

  c.checkpoint = k = ml_collections.ConfigDict()
  k.every_steps = 500                 # steps between checkpoints (also one at SIGTERM and at the end)
  k.keep = 2                          # most recent checkpoints kept
  k.keep_period = 0                   # also keep every Nth step's checkpoint (0: none)
  k.async_save = True                 # write checkpoints in the background

  c.peft = f = ml_collections.ConfigDict()  # settings of the parameter-efficient methods (train.method)
  f.adapter_size = 64                 # houlsby/pfeiffer: adapter bottleneck width
  f.lora_rank = 8                     # lora: rank r of the update B A
  f.lora_alpha = 16.0                 # lora: the update is scaled by lora_alpha / lora_rank
  f.lora_dropout = 0.1                # lora: dropout on the LoRA input
  f.lora_targets = "query,value"      # lora: comma-separated, of query,key,value,attention_output,intermediate,output
  f.prompt_length = 20                # prompt/prefix: virtual tokens

  c.mesh = x = ml_collections.ConfigDict()
  x.data = -1                         # data-parallel axis size (-1: the rest of the devices)
  x.fsdp = 1                          # parameter-sharding axis size
  x.tensor = 1                        # tensor-parallel axis size
  x.logical_axis_rules = sharding.DEFAULT_RULES  # logical axis -> mesh axes
  c.lock()
  return c
