"""Paths that may be local or in a bucket (gs://...): the few file operations a workdir needs, through etils.epath.

A bucket holds objects, not files: nothing can be appended to, and a "directory" is a name prefix, so moving one
is a copy of every object under it and a delete. Writers that only know local files (TensorFlow's iterator
checkpoints, below) write to a local staging directory whose files are then copied up.
"""

import contextlib
import os
import shutil
import tempfile

from etils import epath


def scheme(path) -> str | None:
  """'gs' for gs://b/x, and so on; None for a local path."""
  name, sep, _ = str(path).partition("://")
  return name if sep and name.isalnum() else None


def is_remote(path) -> bool:
  """Whether `path` names a storage service (scheme://...) rather than the local filesystem."""
  return scheme(path) is not None


def absolute(path) -> str:
  """A local path made absolute; a remote one as given (os.path.abspath would make gs://b/x into $PWD/gs:/b/x)."""
  return str(path) if is_remote(path) else os.path.abspath(path)


def copy_file(source, target) -> None:
  """Copies one file between any two places (local to bucket, bucket to local, ...), streamed."""
  with epath.Path(source).open("rb") as reader, epath.Path(target).open("wb") as writer:
    shutil.copyfileobj(reader, writer, length=16 << 20)


def move_tree(source: str, target: str) -> None:
  """Moves a directory (every object under a remote prefix) to `target`, which must not exist yet."""
  if not is_remote(source) and not is_remote(target):
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.move(source, target)
    return
  source_path, target_path = epath.Path(source), epath.Path(target)
  for relative in _files_under(source_path):
    (target_path / relative).parent.mkdir(parents=True, exist_ok=True)
    (source_path / relative).copy(target_path / relative)
  source_path.rmtree()


def _files_under(directory: epath.Path, relative: str = ""):
  """Paths, relative to `directory`, of every file under it (epath's walk and ** glob do not serve buckets)."""
  for child in directory.iterdir():
    name = f"{relative}{child.name}"
    if child.is_dir():
      yield from _files_under(child, name + "/")
    else:
      yield name


def upload_tree(local_directory: str, target: str) -> None:
  """Copies every file under a local directory to the same relative paths under `target` (a bucket prefix)."""
  for root, _, names in os.walk(local_directory):
    for name in names:
      relative = os.path.relpath(os.path.join(root, name), local_directory)
      epath.Path(target, relative).parent.mkdir(parents=True, exist_ok=True)
      copy_file(os.path.join(root, name), f"{target}/{relative}")


@contextlib.contextmanager
def staged_write(prefix: str):
  """Yields a prefix to write files under (PREFIX.*); for a remote `prefix` that is a local staging directory's,
  whose files are copied up to the remote directory on leaving the block."""
  if not is_remote(prefix):
    yield prefix
    return
  directory, stem = prefix.rsplit("/", 1)
  with tempfile.TemporaryDirectory(prefix="bert_jax_stage_") as stage:
    yield os.path.join(stage, stem)
    epath.Path(directory).mkdir(parents=True, exist_ok=True)
    # the .index last: readers take it as the sign that the state is complete
    for name in sorted(os.listdir(stage), key=lambda name: (name.endswith(".index"), name)):
      copy_file(os.path.join(stage, name), f"{directory}/{name}")


@contextlib.contextmanager
def staged_read(prefix: str):
  """Yields a prefix to read PREFIX.* files from: `prefix` itself where local, else a local copy of them."""
  if not is_remote(prefix):
    yield prefix
    return
  directory, stem = prefix.rsplit("/", 1)
  with tempfile.TemporaryDirectory(prefix="bert_jax_stage_") as stage:
    for remote in epath.Path(directory).glob(stem + ".*"):  # not process_1's glob catching process_10's files
      copy_file(remote, os.path.join(stage, remote.name))
    yield os.path.join(stage, stem)
