"""python -m bert_jax.convert {to_hf|from_hf|from_tf}: checkpoints <-> HF/PyTorch directories.

  python -m bert_jax.convert to_hf   --workdir=runs/tiny --output=hf/tiny [--step=N] [--dtype=bfloat16]
  python -m bert_jax.convert from_hf --hf_dir=hf/bert-base --output=ckpt/bert-base
  python -m bert_jax.convert from_tf --tf_checkpoint=uncased_L-12_H-768_A-12/bert_model.ckpt \\
                                     --tf_config=uncased_L-12_H-768_A-12/bert_config.json --output=ckpt/base
to_hf writes the family's HF class for the heads the run trained (BertForPreTraining, RobertaForMaskedLM,
AlbertForPreTraining, ...) with tokenizer files, then reloads it in transformers and checks the logits. An
objective that trains two models (ELECTRA) gets one directory each: OUT/discriminator (ElectraForPreTraining)
and OUT/generator (ElectraForMaskedLM); from_hf takes that OUT back as one checkpoint.
"""

import json

from absl import app, flags, logging

from bert_jax.convert import hf_dir, hf_params, tf1, workdir
from bert_jax.core import configlib
from bert_jax.models import bert


# The flags each command reads; absl cannot require a flag of one command only.
NEEDS = {"to_hf": ("workdir",), "from_hf": ("hf_dir",), "from_tf": ("tf_checkpoint", "tf_config")}


def main(argv):
  f = flags.FLAGS
  if not f["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax is chatty at INFO
  command = argv[1] if len(argv) > 1 else None
  missing = [f"--{name}" for name in NEEDS.get(command, ()) if not f[name].value]
  if missing:
    raise app.UsageError(f"{command} needs {' and '.join(missing)}")
  if command == "to_hf":
    try:
      workdir.export_to_hf(f.workdir, f.output, step=f.step, dtype=f.dtype, vocab_file=f.vocab_file,
                           lower_case=f.lower_case, tolerance=f.tolerance)
    except ModuleNotFoundError as e:  # the export extra missing: its message names the fix
      raise SystemExit(f"error: {e}") from None
  elif command in ("from_hf", "from_tf"):
    if command == "from_hf":
      params, model_config = workdir.join_models(hf_dir.read_hf_models(f.hf_dir))
    else:
      with open(f.tf_config) as fh:
        model_config = bert.config_from_hf(json.load(fh))
      params = hf_params.hf_to_params(tf1.tf1_to_hf_state(f.tf_checkpoint, model_config.num_layers), model_config)
    workdir.write_params_checkpoint(f.output, params, model_config)
    print(f"wrote {type(model_config).family} params checkpoint {f.output} ({', '.join(hf_params.param_sections(params))}); "
          f"train from it with --config.checkpoint.init_checkpoint={f.output}")
  else:
    raise SystemExit("usage: python -m bert_jax.convert {to_hf|from_hf|from_tf} [flags]; see --help")


def cli():
  flags.DEFINE_string("workdir", None, "to_hf: training workdir to read")
  flags.DEFINE_integer("step", None, "to_hf: checkpoint step (default: latest)")
  flags.DEFINE_string("output", None, "output directory", required=True)
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "to_hf: safetensors dtype")
  flags.DEFINE_string("vocab_file", None, "to_hf: vocabulary for the tokenizer files (default: the run's)")
  flags.DEFINE_bool("lower_case", False, "to_hf: with --vocab_file, whether it lower-cases")
  flags.DEFINE_float("tolerance", 1e-4, "to_hf: max logit difference accepted by the check")
  flags.DEFINE_string("hf_dir", None, "from_hf: directory with config.json and weights (or ELECTRA's pair: "
                      "discriminator/ and generator/ subdirectories)")
  flags.DEFINE_string("tf_checkpoint", None, "from_tf: checkpoint prefix, e.g. .../bert_model.ckpt")
  flags.DEFINE_string("tf_config", None, "from_tf: bert_config.json")
  configlib.describe_cli(__doc__)
  app.run(main)
