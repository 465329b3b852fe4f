"""A Google Cloud Storage bucket for tests, served in-process by gcp-storage-emulator (offline, in memory).

Orbax (TensorStore for the arrays, etils.epath for the rest), tensorboardX and google-cloud-storage reach it
through the environment of `emulator_env`; epath goes through gcsfs in tests (EPATH_USE_TF=0), because
TensorFlow's GCS client cannot be pointed at another endpoint. The stock emulator lacks three things those
clients use, added here: objects.moveTo (gcsfs renames; without it each rename retries for ~30 s before a copy),
generation preconditions and the x-goog-generation header (TensorStore's conditional writes, the workdir lease of
core/bucket_lock.py), and empty uploads.
"""
import contextlib
import functools
import http.server
import logging
import socket
import sys
from http import HTTPStatus

from gcp_storage_emulator import server as emulator_server
from gcp_storage_emulator.exceptions import Conflict, NotFound
from gcp_storage_emulator.handlers import objects as emulator_objects

BUCKET = "bert-jax-test"


def emulator_env(url: str) -> dict:
  """The environment that points every GCS client of a training run at the emulator at `url`."""
  return {
      "STORAGE_EMULATOR_HOST": url,            # google-cloud-storage, gcsfs
      "TENSORSTORE_GCS_HTTP_URL": url,         # Orbax's array writes
      "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test",  # TensorStore: a fixed token instead of looking for credentials
      "EPATH_USE_TF": "0",                     # epath through gcsfs, which honours STORAGE_EMULATOR_HOST (conftest)
      "FSSPEC_GCS_TOKEN": "anon",              # gcsfs: no credential lookup (it would probe the metadata server)
      "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # gcsfs: no storage-control gRPC probe the emulator ignores
      "GOOGLE_CLOUD_PROJECT": "test",
  }


def _move(request, response, storage, *args, **kwargs):
  """objects.moveTo as copy + delete."""
  p = request.params
  try:
    moved = emulator_objects._copy(request.base_url, storage, p["bucket_name"], p["object_id"], p["bucket_name"],
                                   p["dest_object_id"])
    emulator_objects._delete(storage, p["bucket_name"], p["object_id"])
    response.json(moved)
  except NotFound:
    response.status = HTTPStatus.NOT_FOUND
  except Conflict as e:
    emulator_objects._handle_conflict(response, e)


def _generation(storage, bucket: str, name: str) -> str:
  try:
    return str(storage.get_file_obj(bucket, name)["generation"])
  except NotFound:
    return "0"


def _failed_precondition(request, storage, bucket: str, name: str):
  """412 (or 304 for a read) where ifGenerationMatch / ifGenerationNotMatch do not hold; None where they do."""
  query = request.query
  if "ifGenerationMatch" in query and query["ifGenerationMatch"][0] != _generation(storage, bucket, name):
    return HTTPStatus.PRECONDITION_FAILED
  if "ifGenerationNotMatch" in query and query["ifGenerationNotMatch"][0] == _generation(storage, bucket, name):
    return HTTPStatus.NOT_MODIFIED if request.method == "GET" else HTTPStatus.PRECONDITION_FAILED
  return None


def _object_name(request, upload: bool):
  """The object a request is about: in the URL, or for an upload in its query or its multipart metadata."""
  if not upload:
    return request.params.get("object_id")
  if "name" in request.query:
    return request.query["name"][0]
  if request.query.get("uploadType") == ["multipart"]:
    return request.data["meta"].get("name")
  return None


def _with_generations(handler, upload: bool = False):
  def wrapped(request, response, storage, *args, **kwargs):
    bucket = request.params["bucket_name"]
    name = _object_name(request, upload)
    if name is not None:
      status = _failed_precondition(request, storage, bucket, name)
      if status is not None:
        if upload:
          request.data  # noqa: B018  (reads the body, so the connection can answer)
        response.status = status
        return
    if upload and request.query.get("uploadType") == ["media"] and request.data is None:
      request._data = b""  # an empty object; the stock handler fails on len(None)
    handler(request, response, storage, *args, **kwargs)
    if not upload and name is not None and response.status in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
      with contextlib.suppress(NotFound):
        response["x-goog-generation"] = str(storage.get_file_obj(bucket, name)["generation"])
        response["x-goog-metageneration"] = "1"
  return wrapped


class _QuietHTTPServer(http.server.HTTPServer):
  def handle_error(self, request, client_address):
    if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):  # clients drop raced requests
      super().handle_error(request, client_address)


def _run_quietly(thread) -> None:
  """APIThread.run with a server that does not print the tracebacks of connections its clients closed."""
  thread._httpd = _QuietHTTPServer((thread._host, thread._port),
                                   functools.partial(emulator_server.RequestHandler, thread._storage))
  thread.is_running.set()
  thread._httpd.serve_forever()


def _patch_emulator() -> None:
  if getattr(emulator_server, "_bert_jax_patched", False):
    return
  wrap = {emulator_objects.download: _with_generations(emulator_objects.download),
          emulator_objects.get: _with_generations(emulator_objects.get),
          emulator_objects.insert: _with_generations(emulator_objects.insert, upload=True),
          emulator_objects.delete: _with_generations(emulator_objects.delete)}
  handlers = tuple((pattern, {method: wrap.get(h, h) for method, h in by_method.items()})
                   for pattern, by_method in emulator_server.HANDLERS)
  moves = tuple((rf"^{prefix}/b/(?P<bucket_name>[-.\w]+)/o/(?P<object_id>.*[^/]+)/moveTo/o/"
                 rf"(?P<dest_object_id>.*[^/]+)$", {emulator_server.POST: _move})
                for prefix in (emulator_server.settings.API_ENDPOINT, ""))
  emulator_server.HANDLERS = moves + handlers
  emulator_server.APIThread.run = _run_quietly
  emulator_server.APIThread.daemon = True
  emulator_server._bert_jax_patched = True


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@contextlib.contextmanager
def serve():
  """Yields the URL of an in-memory GCS emulator with bucket BUCKET, served from a thread of this process."""
  _patch_emulator()
  logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)  # a line for every 404
  port = _free_port()
  server = emulator_server.create_server("localhost", port, in_memory=True, default_bucket=BUCKET)
  server.start()
  try:
    yield f"http://localhost:{port}"
  finally:
    server.stop()
