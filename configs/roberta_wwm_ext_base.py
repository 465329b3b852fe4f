"""Chinese RoBERTa-wwm-ext (HIT/iFLYTEK, github.com/ymcui/Chinese-BERT-wwm): despite the name, BERT-base's
architecture and BERT's Chinese vocabulary (it loads and exports as BertModel / BertForMaskedLM, not RoBERTa),
trained with RoBERTa's recipe as HIT published it: whole-word masking, no NSP, data made directly at length 512
(no 128-then-512 phases), longer training (1M steps, batch 384, AdamW; the "ext" data is 5.4B tokens of Chinese
Wikipedia plus news, Q&A and encyclopedia text). HIT states it did NOT use dynamic masking: the masks are made
once when preparing (static), so data.dynamic_masking stays off and dupe_factor gives the copies. Google's and
HIT's BERT recipes also start from BERT weights (~BERT init): set checkpoint.init_checkpoint to continue one."""

from configs import common


def get_config():
  c = common.get_config()
  c.model.family = "bert"               # BERT architecture (HF BertForMaskedLM), not the roberta family
  c.model.size = "base"                 # 12 layers, 768 hidden, 12 heads
  c.model.vocab_size = 21128            # BERT-base Chinese's vocab.txt
  c.data.vocab_type = "wordpiece"       # without data.vocab_file: a WordPiece vocab.txt, one token per Chinese character
  c.data.vocab_size = 21128
  c.data.lower_case = True              # as BERT-base Chinese
  c.data.whole_word_masking = True      # whole-word masking ...
  c.data.segmenter = "jieba"            # ... with jieba's words (pip install 'bert-jax[chinese]'); HIT used LTP
  c.data.masking = "token"              # BERT's masking over word units
  c.data.mode = "full_sentences"        # no NSP: single segments of contiguous sentences, filled to max_seq_length
  c.data.dynamic_masking = False        # HIT: "we did not use dynamic masking"
  c.data.dupe_factor = 10               # static masks: copies with different masks (google-research/bert's default)
  c.data.max_seq_length = 512           # directly at 512
  c.data.max_predictions_per_seq = 80   # 15% of 512, rounded up as google-research/bert's 512 settings
  c.train.objective = "mlm"             # no next-sentence prediction
  c.train.steps = 1000000               # 1M steps
  c.train.batch_size = 384
  c.optim.name = "adamw"                # RoBERTa-wwm-ext used AdamW (BERT-wwm used LAMB)
  c.optim.peak_learning_rate = 1e-4     # not published; BERT-base's
  c.optim.warmup_steps = 10000
  c.lock()
  return c
