"""Every config field with its default; named configs in this folder change what they need."""

import ml_collections

from bert_jax.core import sharding


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()

  c.model = m = ml_collections.ConfigDict()
  m.family = "bert"                   # bert | albert | roberta | electra | distilbert | ernie | nezha (models/<family>/): trunk, HF names
  m.size = "base"                     # tiny | mini | small | medium | base | large | xlarge | xxlarge (layers/hidden/heads)
  m.intermediate_size = 0             # FFN width (0: 4 x hidden; ALBERT-xxlarge: 16384)
  m.embedding_size = 0                # factorized embedding width E (0: hidden size; ALBERT: 128)
  m.layer_sharing = "none"            # none | all | attention | ffn: cross-layer parameter sharing (ALBERT: all)
  m.hidden_act = "gelu"               # gelu (erf, BERT/RoBERTa) | gelu_new (tanh, ALBERT) | relu (ERNIE 1.0) | silu
  m.layer_norm_eps = ml_collections.config_dict.placeholder(float)  # LayerNorm epsilon; unset: the family's (BERT 1e-12, RoBERTa 1e-5)
  m.task_type_vocab_size = 0          # ERNIE's task-type embeddings (HF use_task_id), task id 0 fed; 0: none (other families)
  m.vocab_size = 30522                # must match the data's vocabulary
  m.vocab_pad_multiple = 128          # pad the embedding rows for faster matmuls (cut on HF export)
  m.max_position_embeddings = 512     # longest sequence the position table covers
  m.position_encoding = ml_collections.config_dict.placeholder(str)  # absolute | relative_sinusoidal (NEZHA); unset: the family's
  m.max_relative_position = 64        # relative_sinusoidal: distances clipped to [-this, this] (NEZHA: 64)
  m.hidden_dropout = 0.1              # dropout after embeddings, attention output and FFN
  m.attention_dropout = 0.1           # dropout on attention probabilities (0 enables fused kernels)
  m.dtype = "bfloat16"                # compute dtype
  m.param_dtype = "float32"           # master weights
  m.remat_policy = "auto"             # auto (remat only if activations would not fit: core/platform_defaults.py) | none | full | dots | dots_no_batch
  m.scan_layers = ml_collections.config_dict.placeholder(bool)  # nn.scan over layers; unset: unrolled on GPU (1.8x faster there), scanned elsewhere
  m.attention_impl = "auto"           # auto | xla | cudnn | splash (TPU Pallas kernel) | pallas (dropout inside)
  m.mlm_all_positions = False         # MLM logits at every position, then gather (slower; benchmark baseline)
  m.fused_qkv = False                 # one fused query/key/value projection (HF export splits it again)
  m.fp8 = False                       # layers' projections in FP8, delayed scaling (Hopper GPUs; emulated, slower, elsewhere)
  m.fp8_amax_history = 1024           # fp8: steps of amax history each scale is taken from

  c.data = d = ml_collections.ConfigDict()
  d.train_files = ""                  # TFRecord glob(s), comma-separated; empty: prepare data.corpus
  d.eval_files = ""                   # TFRecord glob(s) for eval; empty with train_files: no eval
  d.corpus = ""                       # 'pydocs', 'tfds:NAME[:SPLIT]', 'hf:NAME[:CONFIG][:SPLIT]' (or hf:DIR), *.parquet / *.jsonl or text globs, prepared into WORKDIR/data
  d.text_column = "text"              # text column of hf:, Parquet, JSONL and TFDS corpora
  d.tfds_data_dir = ""                # TFDS data_dir for tfds: corpora
  d.vocab_file = ""                   # SentencePiece .model, BPE tokenizer.json or WordPiece vocab.txt; empty: train
  d.vocab_type = "sentencepiece"      # sentencepiece | bpe (byte-level, RoBERTa): what to train if vocab_file is empty
  d.vocab_size = 30522                # size when training a vocabulary
  d.lower_case = False                # lower-case text before tokenizing
  d.max_seq_length = 128              # tokens per sequence
  d.max_predictions_per_seq = 20      # masked positions per sequence
  d.masked_lm_prob = 0.15             # fraction of tokens masked
  d.short_seq_prob = 0.1              # probability of a shorter instance when preparing
  d.dupe_factor = 5                   # masked copies of the corpus when preparing
  d.whole_word_masking = False        # units are whole words (token/ngram masking), when preparing and in dynamic masking
  d.max_ngram = 1                     # mask n-grams of up to this many words/tokens, p(k) ~ 1/k (ALBERT: 3)
  d.masking = "token"                 # token (BERT) | ngram (ALBERT; token with max_ngram > 1 means ngram) | span (SpanBERT) | knowledge (ERNIE): data/masking.py
  d.replacement = "mask:0.8,random:0.1,keep:0.1"  # what masked positions show: [MASK] | a random token | themselves (BERT 80/10/10)
  d.span_geometric_p = 0.2            # span masking: span lengths in words ~ Geometric(p) (SpanBERT: 0.2)
  d.max_span_length = 10              # span masking: spans clipped at this many words (SpanBERT: 10)
  d.segmenter = ""                    # word boundaries for whole-word/span/knowledge masking: '' (vocabulary's) | jieba (Chinese) | pkg.module:function
  d.entity_file = ""                  # knowledge masking: entity list (UTF-8, one per line, '#' comments)
  d.knowledge_mix = "token:0.4,phrase:0.3,entity:0.3"  # knowledge masking: share of instances masked per level
  d.phrase_chunker = ""               # knowledge masking: '' (segmenter if set, else rake) | rake | segmenter | pkg.module:function
  d.mode = "nsp"                      # nsp | sop (ALBERT sentence order) | full_sentences (RoBERTa packing, no NSP)
  d.dynamic_masking = False           # re-mask in tf.data every epoch (RoBERTa)
  d.eval_fraction = 0.02              # documents held out for eval when preparing
  d.prepare_seed = 12345              # seed for preparing instances
  d.prepare_workers = 0               # processes for preparing (0: all cores)
  d.shuffle_buffer = 10000            # examples in the tf.data shuffle buffer
  d.pack_instances = 0                # >0: pack up to this many instances per train row (0: no packing)
  d.shuffle = True                    # shuffle files and examples (False: file order, for exactness checks)
  d.backend = "tfdata"                # tfdata (TFRecords, needs TensorFlow) | grain (ArrayRecord, no TensorFlow)
  d.grain_workers = 0                 # grain: processes that parse and mask (0: in the training process)

  c.train = t = ml_collections.ConfigDict()
  t.steps = 100000                    # optimizer steps
  t.batch_size = 256                  # global batch, sequences
  t.microbatches = 1                  # gradient accumulation: microbatches per step (lax.scan)
  t.objective = "mlm_nsp"             # mlm | mlm_nsp | mlm_sop | mlm_sbo (SpanBERT) | electra | distill (objectives/): heads, loss, metrics, FLOPs
  t.seed = 0                          # init, dropout and shuffling seed
  t.log_every = 100                   # steps between train metric lines
  t.eval_every = 2000                 # steps between evals (and one at the end)
  t.eval_batches = 20                 # batches per eval
  t.eval_batch_size = 0               # global eval batch (0: train.batch_size)
  t.peak_flops = 0.0                  # peak FLOP/s per device for MFU (0: look up the device kind)
  t.profile_start_step = -1           # first step of a profiler trace (-1: none)
  t.profile_steps = 5                 # steps in the profiler trace
  t.deterministic = False             # turn dropout off (exactness tests)
  t.prng_impl = "auto"                # dropout PRNG: auto (rbg on TPU, threefry2x32 elsewhere) | threefry2x32 | rbg | unsafe_rbg

  c.optim = o = ml_collections.ConfigDict()
  o.name = "adamw"                    # adamw | lamb
  o.peak_learning_rate = 1e-4         # after warmup
  o.warmup_steps = 10000              # linear warmup from 0
  o.decay = "linear"                  # linear | polynomial, to end_learning_rate at the schedule's end
  o.schedule_steps = 0                # steps warmup + decay span (0: train.steps); more: the run stops early in a longer recipe
  o.power = 1.0                       # polynomial decay power
  o.decay_from = "warmup_end"         # warmup_end: decay from peak after warmup (HF, NVIDIA) | start: one curve from step 0 (google-research/bert, albert)
  o.end_learning_rate = 0.0           # learning rate at the last step
  o.b1 = 0.9                          # Adam beta1
  o.b2 = 0.999                        # Adam beta2
  o.eps = 1e-6                        # Adam epsilon
  o.weight_decay = 0.01               # decoupled weight decay (not on biases or LayerNorm unless param_rules say)
  o.param_rules = ""                  # 'REGEX:ACTION;...' over param paths (train|freeze|decay|no_decay), after the objective's own (core/param_rules.py)
  o.clip_norm = 1.0                   # clip gradients by global norm (0: off)
  o.state_dtype = ""                  # AdamW first-moment dtype, e.g. 'bfloat16' (empty: param dtype)

  c.mesh = x = ml_collections.ConfigDict()
  x.data = -1                         # data-parallel axis size (-1: the rest of the devices)
  x.fsdp = 1                          # parameter-sharding axis size
  x.tensor = 1                        # tensor-parallel axis size
  x.dcn_data = 1                      # slices joined over DCN (multi-slice data parallelism)
  x.logical_axis_rules = sharding.DEFAULT_RULES  # logical axis -> mesh axes

  c.checkpoint = k = ml_collections.ConfigDict()
  k.every_steps = 1000                # steps between checkpoints
  k.keep = 3                          # most recent checkpoints kept
  k.keep_period = 0                   # also keep every N-th step forever (0: off)
  k.async_save = True                 # save in the background
  k.init_checkpoint = ""              # params-only checkpoint to start from (fresh optimizer)
  return c


def cpu_demo(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The <family>_tiny settings: a 2-layer model on the offline pydocs corpus, a few minutes on 2 CPU cores."""
  c.model.size = "tiny"                 # 2 layers, 128 hidden, 2 heads
  c.model.vocab_size = 8000             # the vocabulary trained on pydocs
  c.model.dtype = "float32"             # CPUs have no fast bf16 matmul
  c.model.scan_layers = False           # 2 layers compile fast unrolled
  c.model.attention_impl = "xla"
  c.data.corpus = "pydocs"              # offline: Python's own documentation
  c.data.vocab_size = 8000
  c.data.max_seq_length = 128
  c.data.max_predictions_per_seq = 20
  c.data.eval_fraction = 0.05
  c.train.steps = 1500
  c.train.batch_size = 32
  c.train.log_every = 100
  c.train.eval_every = 500
  c.train.eval_batches = 10
  c.optim.peak_learning_rate = 1e-3
  c.optim.warmup_steps = 200
  c.optim.decay_from = "warmup_end"     # the demos' own short schedule, whatever the recipe they shrink
  c.checkpoint.every_steps = 500
  return c
