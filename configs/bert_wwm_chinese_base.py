"""Chinese BERT-wwm (Cui et al. 2019, HIT/iFLYTEK, github.com/ymcui/Chinese-BERT-wwm): BERT-base with Chinese
whole-word masking. Text is tokenized per character with BERT's Chinese WordPiece vocabulary (21,128 pieces),
while a segmenter decides the words: a word's characters are masked together (HIT segmented with LTP; jieba is
the default here, data.segmenter). The architecture, vocabulary and NSP task are Google's BERT-base Chinese, so
the model exports as BertForPreTraining / BertForMaskedLM. Phase 1 as published: 100K steps at length 128, batch
2,560, LAMB at 1e-4 with 10% warm-up (the paper); phase 2 is 100K more at length 512, batch 384
(--config.data.max_seq_length=512 --config.data.max_predictions_per_seq=80 --config.train.batch_size=384
--config.checkpoint.init_checkpoint=PHASE1). HIT's phase 1 starts from Google's BERT-base Chinese weights (the README's
"Init Checkpoint: ~BERT weight"): pass them as checkpoint.init_checkpoint (convert from_hf or from_tf)."""

from configs import common


def get_config():
  c = common.get_config()
  c.model.family = "bert"               # Google's BERT-base Chinese architecture, HF BertForPreTraining names
  c.model.size = "base"                 # 12 layers, 768 hidden, 12 heads
  c.model.vocab_size = 21128            # BERT-base Chinese's vocab.txt (HIT keeps it unchanged)
  c.data.vocab_type = "wordpiece"       # without data.vocab_file: a WordPiece vocab.txt, one token per Chinese character
  c.data.vocab_size = 21128
  c.data.lower_case = True              # as BERT-base Chinese (do_lower_case=True)
  c.data.whole_word_masking = True      # mask whole words ...
  c.data.segmenter = "jieba"            # ... as the segmenter cuts them (pip install 'bert-jax[chinese]'); HIT used LTP
  c.data.masking = "token"              # BERT's masking over those word units (15%, 80/10/10)
  c.data.mode = "nsp"                   # BERT-wwm keeps next-sentence prediction
  c.data.max_seq_length = 128           # phase 1
  c.data.max_predictions_per_seq = 20
  c.train.objective = "mlm_nsp"
  c.train.steps = 100000                # phase 1: 100K steps at 128 (then 100K at 512)
  c.train.batch_size = 2560
  c.optim.name = "lamb"                 # HIT pre-trained BERT-wwm with LAMB
  c.optim.peak_learning_rate = 1e-4
  c.optim.warmup_steps = 10000          # 10% of the steps
  c.lock()
  return c
