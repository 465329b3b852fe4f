"""--dry_run: how many workers a corpus needs, and the Dataflow and Spark command lines that run it (no Beam
import: planning needs no engine).

The estimate is throughput arithmetic, printed with its reasoning:
  core-seconds = corpus bytes / (bytes per core-second measured at dupe_factor 5) x dupe_factor / 5,
  times BEAM_OVERHEAD for the engine's shuffle, serialization between stages and worker start-up;
  workers = core-seconds / (cores per worker x target hours x 3600), rounded up.
Making instances is most of the work and grows with dupe_factor (tokenizing, done once, does not), so scaling
linearly from dupe_factor 5 overestimates a little at lower dupe factors.
"""

import math
import re
import shlex

# `python bench/data_bench.py beam --multiples=1,8 --workers=2` (bench/RESULTS.md): pydocs x8 (12 MB), dupe_factor 5,
# max_seq_length 128, SentencePiece 8k vocabulary, x86_64 2-core VM. Measured in CPU seconds of the process tree
# (the VM was shared with other jobs, which stretches wall time but not CPU time); start-up included.
MEASURED_BYTES_PER_CORE_SECOND = 371e3  # local path: 12.2 MB in 33.0 CPU-s
MEASURED_DUPE_FACTOR = 5
OUTPUT_BYTES_PER_CORPUS_BYTE = 10.1     # serialized instances per corpus byte at dupe_factor 5, seq 128 (same bench)
BEAM_OVERHEAD = 1.3                     # Beam DirectRunner over the local path in CPU-s (43.0 / 33.0, same bench)
SHARD_BYTES = 256 << 20                 # a shard is sorted in one worker's memory: keep it about this size
DATAFLOW_MACHINE, DATAFLOW_CORES = "n2-standard-8", 8
SPARK_EXECUTOR_CORES = 8
PLANNING_FLAGS = ("dry_run", "corpus_bytes", "target_hours", "runner")  # not passed on to the real run
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_size(text: str) -> int:
  """'100G', '1.5T', '800M' or a byte count -> bytes (binary units)."""
  m = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?)i?B?\s*", text.upper())
  if not m:
    raise ValueError(f"corpus size {text!r}: write a number of bytes with an optional unit, e.g. 100G, 1.5T, 800M")
  return int(float(m.group(1)) * _UNITS[m.group(2)])


def corpus_size(corpus, spec: str, corpus_bytes: str) -> int:
  if corpus_bytes:
    return parse_size(corpus_bytes)
  if getattr(corpus, "progress_unit", "") == "B":
    return int(corpus.progress_total())
  raise ValueError(f"corpus {spec!r} is not files whose size gives the corpus size; pass --corpus_bytes (e.g. 100G)")


def estimate(num_bytes: int, dupe_factor: int, hours: float, cores_per_worker: int) -> tuple[int, str]:
  """(workers, the reasoning as text) to prepare num_bytes of text in about `hours`."""
  core_seconds = num_bytes / MEASURED_BYTES_PER_CORE_SECOND * dupe_factor / MEASURED_DUPE_FACTOR * BEAM_OVERHEAD
  workers = max(1, math.ceil(core_seconds / (cores_per_worker * hours * 3600)))
  output = num_bytes * OUTPUT_BYTES_PER_CORPUS_BYTE * dupe_factor / MEASURED_DUPE_FACTOR
  shards = max(1, math.ceil(output / SHARD_BYTES))
  why = (f"{num_bytes / 2**30:,.1f} GiB of text / {MEASURED_BYTES_PER_CORE_SECOND / 1e6:.2f} MB per core-second "
         f"(measured, dupe_factor {MEASURED_DUPE_FACTOR}) x dupe_factor {dupe_factor}/{MEASURED_DUPE_FACTOR} x "
         f"{BEAM_OVERHEAD} engine overhead = {core_seconds / 3600:,.0f} core-hours; / ({cores_per_worker} cores x "
         f"{hours:g} h) = {workers} workers. Output and shuffle: about {output / 2**30:,.0f} GiB of serialized "
         f"instances ({OUTPUT_BYTES_PER_CORPUS_BYTE} bytes per corpus byte at seq 128, dupe_factor "
         f"{MEASURED_DUPE_FACTOR}); --num_train_shards >= {shards} keeps a shard (sorted in one worker's memory) "
         f"under {SHARD_BYTES >> 20} MiB. A bench CPU-second is taken as one worker vCPU-second.")
  return workers, why


def _run_args(argv: list[str]) -> list[str]:
  """The user's flags minus the planning ones (the real run gets its own --runner)."""
  keep = []
  for arg in argv:
    name = arg.lstrip("-").split("=", 1)[0]
    if name in PLANNING_FLAGS or name.removeprefix("no") in PLANNING_FLAGS:
      continue
    keep.append(arg)
  return keep


def _with_defaults(args: list[str], defaults: dict[str, str]) -> list[str]:
  """args plus each default option the user did not give (theirs win, e.g. --project=my-project)."""
  given = {a.lstrip("-").split("=", 1)[0] for a in args}
  return args + [f"--{k}={v}" if v != "" else f"--{k}" for k, v in defaults.items() if k not in given]


def command_lines(argv: list[str], dataflow_workers: int, spark_executors: int) -> dict[str, str]:
  args = _run_args(argv)
  base = ["python", "-m", "bert_jax.data.prepare"]
  dataflow = _with_defaults(args, {
      "runner": "DataflowRunner", "project": "PROJECT", "region": "REGION", "temp_location": "gs://BUCKET/tmp",
      "num_workers": str(dataflow_workers), "max_num_workers": str(dataflow_workers),
      "autoscaling_algorithm": "NONE", "machine_type": DATAFLOW_MACHINE,
      "sdk_container_image": "REGION-docker.pkg.dev/PROJECT/REPO/bert-jax-beam:latest"})
  spark = _with_defaults(args, {
      "runner": "SparkRunner", "spark_master_url": "spark://MASTER:7077", "environment_type": "DOCKER",
      "environment_config": "REGISTRY/bert-jax-beam:latest"})
  return {"dataflow": shlex.join(base + dataflow),
          "spark": shlex.join(base + spark) + f"   # with {spark_executors} executors of {SPARK_EXECUTOR_CORES} cores"}


def dry_run(corpus, spec: str, argv: list[str], *, corpus_bytes: str, dupe_factor: int, hours: float) -> str:
  num_bytes = corpus_size(corpus, spec, corpus_bytes)
  dataflow_workers, why = estimate(num_bytes, dupe_factor, hours, DATAFLOW_CORES)
  spark_executors, _ = estimate(num_bytes, dupe_factor, hours, SPARK_EXECUTOR_CORES)
  lines = command_lines(argv, dataflow_workers, spark_executors)
  return "\n".join([
      f"corpus {spec}: {num_bytes:,} bytes{' (given)' if corpus_bytes else ' (its files)'}",
      f"workers: {dataflow_workers} x {DATAFLOW_MACHINE} on Dataflow, or {spark_executors} Spark executors of "
      f"{SPARK_EXECUTOR_CORES} cores, for about {hours:g} h",
      f"  why: {why}",
      "  (the container image holds bert_jax and its dependencies: see launch/README.md, 'Beam')",
      "Dataflow:", "  " + lines["dataflow"], "Spark:", "  " + lines["spark"]])
