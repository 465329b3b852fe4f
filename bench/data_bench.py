"""Data benchmarks: prepare throughput and peak memory, tf.data pipeline throughput, and the two input
backends (tf.data over TFRecord against Grain over ArrayRecord) side by side.

  python bench/data_bench.py prepare  --multiples=1,4 --workers=2
  python bench/data_bench.py pipeline --seq_lengths=128,512 --batch_size=256
  python bench/data_bench.py backends --seq_lengths=128,512 --batch_size=256 --batches=40
  python bench/data_bench.py beam     --multiples=1,8 --workers=2
  python bench/data_bench.py entities --entity_counts=214,2000,20000 --sentences=1000

Each measurement prints one JSON line. `prepare` runs the real CLI in a subprocess on the pydocs
corpus repeated k times and samples the RSS of the whole process tree (workers included) every
50 ms; `pipeline` prepares pydocs at each sequence length once, then times batches after a warm-up.
`backends` prepares pydocs in both formats at each length and times, in one process run, tf.data and Grain
(in the training process, and with --grain_workers worker processes), static and dynamic masking; each line
also says how many host cores that rate per core needs to feed BERT-large on one H100 at the step rate
bench/RESULTS.md records (H100_SEQ_PER_SEC).
`beam` prepares pydocs repeated k times with the local path (--workers) and with the Beam pipeline on the
DirectRunner (as many worker processes; its default scratch-file shuffle, and --beam_shuffle=engine), same
vocabulary and settings, and prints for each: docs/s (wall),
CPU seconds of the process tree and corpus bytes per CPU-second (what --dry_run's worker estimate divides by;
unlike wall time it holds on a shared machine), output bytes per corpus byte, and the peak RSS of the tree.
`entities` times ERNIE's entity matching (data/knowledge.py's EntityList.find, a trie walk) against its peer, one
regular-expression alternation of the same entities with the same rules, on pydocs sentences: ernie_tiny's list,
grown to each count with word pairs and triples of pydocs (real phrases, so they are found). Both must give the
same spans.
"""

import argparse
import collections
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tree_rss(proc: psutil.Process) -> dict[int, int]:
  """pid -> RSS bytes of proc and its descendants now."""
  rss = {}
  for p in [proc] + proc.children(recursive=True):
    try:
      rss[p.pid] = p.memory_info().rss
    except psutil.Error:
      pass
  return rss


# BERT-large train step on one H100, bf16 (bench/RESULTS.md, "Train step on one H100", rows "now"):
# 106,731 tokens/s at seq 128 x 256 and 103,982 at seq 512 x 64, as sequences per second.
H100_SEQ_PER_SEC = {128: 106_731 / 128, 512: 103_982 / 512}


def _machine() -> str:
  return f"{platform.machine()} {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB"


def bench_prepare(multiples, workers, vocab_size, workdir):
  from bert_jax.data import corpora
  source = corpora.pydocs_path(os.path.join(workdir, "cache"))
  text = open(source, encoding="utf-8").read()
  vocab_file = None
  for k in multiples:
    corpus = _repeated_corpus(text, k, workdir)
    out = os.path.join(workdir, f"out_x{k}")
    cmd = [sys.executable, "-m", "bert_jax.data.prepare", f"--corpus={corpus}", f"--output_dir={out}",
           f"--workers={workers}", "--dupe_factor=5", "--max_seq_length=128"]
    cmd += [f"--vocab_file={vocab_file}"] if vocab_file else [f"--vocab_size={vocab_size}"]
    _, _, peak = _run_sampled(cmd)
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    vocab_file = vocab_file or manifest["vocab"]["file"]  # train the vocabulary once, then reuse it
    s = manifest["stats"]
    print(json.dumps({"bench": "prepare", "corpus_multiple": k, "corpus_bytes": os.path.getsize(corpus),
                      "workers": workers, "instances": s["instances"], "seconds": s["seconds"],
                      "instances_per_sec": round(s["instances_per_second"]),
                      "tokens_per_sec": round(s["tokens_per_second"]), "peak_rss_mib": peak["tree"],
                      "machine": _machine()}), flush=True)


def _repeated_corpus(text: str, k: int, workdir: str) -> str:
  """WORKDIR/pydocs_x{k}.txt: the text k times over (k times the documents, the same vocabulary)."""
  corpus = os.path.join(workdir, f"pydocs_x{k}.txt")
  with open(corpus, "w", encoding="utf-8") as f:
    for _ in range(k):
      f.write(text)
  return corpus


def _run_sampled(cmd) -> tuple[float, float, dict]:
  """Runs cmd; returns (wall seconds, CPU seconds of its process tree, peak RSS in MiB: of the tree (`tree`), of
  the command's own process (`main`) and of its largest descendant (`largest_child`)).

  CPU seconds (user + system of every waited-for descendant) do not grow when other jobs share the cores,
  so per-core throughput is measured on them; wall seconds do."""
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  start = time.time()
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
  ps, tree, by_pid = psutil.Process(proc.pid), 0, collections.Counter()
  while proc.poll() is None:
    rss = _tree_rss(ps)
    tree = max(tree, sum(rss.values()))
    by_pid |= collections.Counter(rss)  # per-process maxima
    time.sleep(0.05)
  if proc.returncode:
    raise RuntimeError(f"{cmd} failed: {proc.stdout.read()[-3000:]}")
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
  children = [v for pid, v in by_pid.items() if pid != proc.pid]
  peak = {"tree": tree >> 20, "main": by_pid[proc.pid] >> 20, "largest_child": max(children, default=0) >> 20}
  return time.time() - start, cpu, peak


def bench_beam(multiples, workers, vocab_size, dupe_factor, workdir):
  from bert_jax.data import corpora
  from bert_jax.data import tokenizer as tokenizer_lib
  source = corpora.pydocs_path(os.path.join(workdir, "cache"))
  text = open(source, encoding="utf-8").read()
  vocab_file = tokenizer_lib.train_vocab(corpora.TextFiles(source), "sentencepiece",
                                         os.path.join(workdir, "vocab", "spm"), vocab_size)
  for k in multiples:
    corpus = _repeated_corpus(text, k, workdir)
    engines = {"local": [f"--workers={workers}"],
               # the DirectRunner's default (--beam_shuffle=auto): records in scratch files, references shuffled
               "beam_direct": ["--runner=DirectRunner", f"--direct_num_workers={workers}",
                               "--direct_running_mode=multi_processing"],
               # the records themselves through its GroupByKey, as on Dataflow, Spark and Flink
               "beam_direct_engine_shuffle": ["--runner=DirectRunner", f"--direct_num_workers={workers}",
                                              "--direct_running_mode=multi_processing", "--beam_shuffle=engine"]}
    for engine, extra in engines.items():
      out = os.path.join(workdir, f"{engine}_x{k}")
      cmd = [sys.executable, "-m", "bert_jax.data.prepare", f"--corpus={corpus}", f"--output_dir={out}",
             f"--vocab_file={vocab_file}", f"--dupe_factor={dupe_factor}", "--max_seq_length=128",
             "--part_size=1M", "--num_train_shards=8"] + extra
      seconds, cpu_seconds, peak = _run_sampled(cmd)
      manifest = json.load(open(os.path.join(out, "manifest.json")))
      size = os.path.getsize(corpus)
      output = sum(os.path.getsize(os.path.join(out, split, f)) for split in ("train", "eval")
                   for f in os.listdir(os.path.join(out, split)))
      s = manifest["stats"]
      print(json.dumps({"bench": "beam", "engine": engine, "corpus_multiple": k, "corpus_bytes": size,
                        "workers": workers, "dupe_factor": dupe_factor, "documents": s["documents"],
                        "instances": s["instances"], "wall_seconds": round(seconds, 1),
                        "docs_per_sec": round(s["documents"] / seconds),
                        "cpu_seconds": round(cpu_seconds, 1), "corpus_bytes_per_cpu_second": round(size / cpu_seconds),
                        "docs_per_cpu_second": round(s["documents"] / cpu_seconds, 1),
                        "output_bytes_per_corpus_byte": round(output / size, 1), "peak_rss_mib": peak["tree"],
                        "peak_rss_main_mib": peak["main"], "peak_rss_largest_child_mib": peak["largest_child"],
                        "load_avg_1m": round(os.getloadavg()[0], 1), "machine": _machine()}), flush=True)


def bench_pipeline(seq_lengths, batch_size, batches, workdir):
  from bert_jax.data import corpora, instances, pipeline, prepare
  from bert_jax.data import tokenizer as tokenizer_lib
  from bert_jax.data.masking import DynamicMasking
  corpus = corpora.TextFiles(corpora.pydocs_path(os.path.join(workdir, "cache")))
  vocab = None
  for seq in seq_lengths:
    pred = max(20, round(seq * 0.15 + 0.5))
    out = os.path.join(workdir, f"seq{seq}")
    opts = instances.InstanceOptions(max_seq_length=seq, max_predictions_per_seq=pred, dupe_factor=5)
    m = prepare.prepare(corpus, out, opts, vocab_file=vocab, vocab_size=8000, progress=False)
    vocab = m["vocab"]["file"]
    tok = tokenizer_lib.load(vocab)
    files = pipeline.resolve_files(os.path.join(out, "train", "*.tfrecord"))
    for dynamic in (False, True):
      masking = DynamicMasking(opts.masking_options, instances.VocabIds.from_tokenizer(tok)) if dynamic else None
      cfg = pipeline.PipelineConfig(files=files, batch_size=batch_size, max_seq_length=seq,
                                    max_predictions_per_seq=pred, dynamic_masking=masking)
      it = pipeline.BatchIterator(cfg)
      for _ in range(5):
        next(it)
      t = time.perf_counter()
      for _ in range(batches):
        next(it)
      dt = time.perf_counter() - t
      print(json.dumps({"bench": "pipeline", "seq_length": seq, "masking": "dynamic" if dynamic else "static",
                        "batch_size": batch_size, "batches": batches,
                        "seq_per_sec": round(batches * batch_size / dt), "machine": _machine()}), flush=True)


def _time_batches(it, warmup: int, batches: int) -> float:
  for _ in range(warmup):
    next(it)
  t = time.perf_counter()
  for _ in range(batches):
    next(it)
  return time.perf_counter() - t


def bench_backends(seq_lengths, batch_size, batches, grain_workers, workdir):
  from absl import flags
  from bert_jax.data import corpora, grain_pipeline, instances, pipeline, prepare
  from bert_jax.data import tokenizer as tokenizer_lib
  from bert_jax.data.masking import DynamicMasking
  flags.FLAGS.mark_as_parsed()  # Grain's worker processes read absl flags
  corpus = corpora.TextFiles(corpora.pydocs_path(os.path.join(workdir, "cache")))
  cores = len(os.sched_getaffinity(0))
  vocab = None
  for seq in seq_lengths:
    pred = max(20, round(seq * 0.15 + 0.5))
    out = os.path.join(workdir, f"seq{seq}")
    opts = instances.InstanceOptions(max_seq_length=seq, max_predictions_per_seq=pred, dupe_factor=2)
    m = prepare.prepare(corpus, out, opts, vocab_file=vocab, vocab_size=8000, progress=False,
                        formats=("tfrecord", "array_record"))
    vocab = m["vocab"]["file"]
    tok = tokenizer_lib.load(vocab)
    tfrecords = pipeline.resolve_files(os.path.join(out, "train", "*.tfrecord"))
    array_records = pipeline.resolve_files(os.path.join(out, "train", "*.array_record"))
    for dynamic in (False, True):
      spec = DynamicMasking(opts.masking_options, instances.VocabIds.from_tokenizer(tok)) if dynamic else None
      runs = [("tfdata", 0, lambda cfg, w: pipeline.BatchIterator(cfg))]
      runs += [("grain", w, lambda cfg, w: grain_pipeline.GrainBatchIterator(cfg, worker_count=w))
               for w in sorted({0, grain_workers})]
      for backend, workers, make in runs:
        files = tfrecords if backend == "tfdata" else array_records
        cfg = pipeline.PipelineConfig(files=files, batch_size=batch_size, max_seq_length=seq,
                                      max_predictions_per_seq=pred, dynamic_masking=spec)
        it = make(cfg, workers)
        dt = _time_batches(it, 5 + 3 * workers, batches)
        seq_s = batches * batch_size / dt
        need = H100_SEQ_PER_SEC[seq] if seq in H100_SEQ_PER_SEC else None
        print(json.dumps({"bench": "backends", "backend": backend, "grain_workers": workers, "seq_length": seq,
                          "masking": "dynamic" if dynamic else "static", "batch_size": batch_size,
                          "batches": batches, "batches_per_sec": round(batches / dt, 2), "seq_per_sec": round(seq_s),
                          "cores": cores, "h100_seq_per_sec": round(need) if need else None,
                          "cores_for_h100": round(need / (seq_s / cores), 2) if need else None,
                          "load_avg_1m": round(os.getloadavg()[0], 1), "machine": _machine()}), flush=True)
        del it


def entity_regex(entities, lower_case):
  """The peer: one alternation of the entities, longest first, word characters at an entity's edge bounded by
  \\w lookarounds (what EntityList.find did before it walked a trie)."""
  import re
  alternatives = []
  for entity in sorted(entities, key=len, reverse=True):
    pattern = re.escape(entity)
    if re.match(r"\w", entity, re.ASCII):
      pattern = r"(?<!\w)" + pattern
    if re.search(r"\w$", entity, re.ASCII):
      pattern += r"(?!\w)"
    alternatives.append(pattern)
  return re.compile("|".join(alternatives), re.IGNORECASE if lower_case else 0)


def bench_entities(counts, num_sentences, workdir):
  import random
  import re
  from bert_jax.data import corpora, knowledge
  docs = corpora.from_spec("pydocs", cache_dir=os.path.join(workdir, "cache"))
  sentences = [s for doc in docs.iter_documents(collections.Counter()) for s in doc]
  words = [re.findall(r"[A-Za-z]+", s) for s in sentences]
  phrases = sorted({" ".join(w[i:i + n]) for w in words for n in (2, 3) for i in range(len(w) - n + 1)})
  random.Random(0).shuffle(phrases)
  base = knowledge.EntityList(os.path.join(ROOT, "configs", "ernie_pydocs_entities.txt")).entities
  sample = sentences[:num_sentences]
  for count in counts:
    path = os.path.join(workdir, f"entities-{count}.txt")
    with open(path, "w", encoding="utf-8") as f:
      f.write("\n".join(base + phrases[:max(0, count - len(base))]) + "\n")
    entities = knowledge.EntityList(path)
    start = time.perf_counter()
    found = [entities.find(s) for s in sample]
    trie_s = time.perf_counter() - start
    start = time.perf_counter()
    regex = entity_regex(entities.entities, False)
    expected = [[m.span() for m in regex.finditer(s)] for s in sample]
    regex_s = time.perf_counter() - start
    assert found == expected, f"{count} entities: the trie and the regex disagree"
    print(json.dumps({"bench": "entities", "entities": len(entities.entities), "sentences": len(sample),
                      "mentions": sum(map(len, found)), "trie_s": round(trie_s, 3),
                      "regex_s": round(regex_s, 3), "regex_over_trie": round(regex_s / trie_s, 1),
                      "load_avg_1m": round(os.getloadavg()[0], 1), "machine": _machine()}), flush=True)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("what", choices=["prepare", "pipeline", "backends", "beam", "entities"])
  p.add_argument("--multiples", default="1,4", help="corpus repeats for the prepare benchmark")
  p.add_argument("--workers", type=int, default=os.cpu_count())
  p.add_argument("--vocab_size", type=int, default=8000)
  p.add_argument("--seq_lengths", default="128,512")
  p.add_argument("--dupe_factor", type=int, default=5, help="beam: prepare's dupe factor")
  p.add_argument("--batch_size", type=int, default=256)
  p.add_argument("--batches", type=int, default=100)
  p.add_argument("--grain_workers", type=int, default=2, help="backends: Grain worker processes (also runs 0)")
  p.add_argument("--entity_counts", default="214,2000,20000", help="entities: sizes of the entity list")
  p.add_argument("--sentences", type=int, default=1000, help="entities: pydocs sentences matched")
  a = p.parse_args()
  with tempfile.TemporaryDirectory() as workdir:
    if a.what == "prepare":
      bench_prepare([int(x) for x in a.multiples.split(",")], a.workers, a.vocab_size, workdir)
    elif a.what == "beam":
      bench_beam([int(x) for x in a.multiples.split(",")], a.workers, a.vocab_size, a.dupe_factor, workdir)
    elif a.what == "entities":
      bench_entities([int(x) for x in a.entity_counts.split(",")], a.sentences, workdir)
    elif a.what == "pipeline":
      bench_pipeline([int(x) for x in a.seq_lengths.split(",")], a.batch_size, a.batches, workdir)
    else:
      bench_backends([int(x) for x in a.seq_lengths.split(",")], a.batch_size, a.batches, a.grain_workers, workdir)


if __name__ == "__main__":
  main()
