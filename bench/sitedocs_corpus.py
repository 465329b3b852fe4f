"""An offline English corpus larger than pydocs: the prose docstrings of the installed packages.

  python bench/sitedocs_corpus.py --output=/tmp/sitedocs.txt [--packages=torch,transformers,...]

pydocs (1.5 MB) is small enough that a few thousand steps of a tiny model go over it dozens of times (see the
ELECTRA entry in RESULTS.md). This writes the same kind of text (bert_jax.data.corpora's docstring filter: prose
paragraphs only, each once, one document per source file) from the site-packages of this environment, so it
needs no download. Its content depends on what is installed and at which versions: name the packages and their
versions (printed at the end) with any figure taken on it.
"""

import argparse
import importlib.metadata
import os
import sysconfig
from pathlib import Path

from bert_jax.data import corpora

# What `EXTRAS=torch,test bash scripts/setup.sh` installs and documents at length.
DEFAULT_PACKAGES = "torch,transformers,tensorflow,jax,flax,numpy,optax,apache_beam,datasets,pandas,scipy"


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--output", required=True, help="text file to write (google-research/bert's format)")
  parser.add_argument("--packages", default=DEFAULT_PACKAGES, help="comma-separated import names to read")
  args = parser.parse_args()
  site = Path(sysconfig.get_paths()["purelib"])
  roots, versions = [], {}
  for name in [p.strip() for p in args.packages.split(",") if p.strip()]:
    root = site / name
    if not root.is_dir():
      print(f"skipping {name}: not installed in {site}")
      continue
    roots.append(root)
    dists = importlib.metadata.packages_distributions().get(name, [name])
    versions[name] = importlib.metadata.version(dists[0])
  if not roots:
    raise SystemExit(f"none of {args.packages} is installed in {site}")
  documents = corpora.docstring_documents(*(corpora.source_docstrings(root) for root in roots))
  counted = []

  def count(docs):
    for doc in docs:
      counted.append(len(doc))
      yield doc

  corpora.write_documents(count(documents), args.output)
  print(f"wrote {args.output}: {os.path.getsize(args.output) / 2**20:.1f} MiB, {len(counted)} documents, "
        f"{sum(counted)} sentences from {', '.join(f'{k} {v}' for k, v in versions.items())}")


if __name__ == "__main__":
  main()
