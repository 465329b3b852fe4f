"""Mesh, logical-axis rules and shardings. The only module (besides configs) that names mesh axes.

Logical axes used by the model: vocab, embed, mlp, heads, kv, layers, and activation_* names.
Rules map each to a mesh axis, a tuple of mesh axes, or None (replicated).
"""

import contextlib
import contextvars
import functools

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# logical name          mesh axes
DEFAULT_RULES = (
    ("activation_batch",  ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed",  None),
    ("activation_mlp",    "tensor"),
    ("vocab",             "tensor"),
    ("embed",             "fsdp"),
    ("mlp",               "tensor"),
    ("heads",             "tensor"),
    ("kv",                None),
    ("layers",            None),
)
BATCH_AXES = ("data", "fsdp")
_KERNEL_MESH = contextvars.ContextVar("bert_jax_kernel_mesh", default=None)


def rules_from_config(rules) -> tuple:
  """Config rules (lists from ConfigDict) -> tuple of (name, axes) with tuples, not lists."""
  out = []
  for name, axes in rules:
    out.append((name, tuple(axes) if isinstance(axes, (list, tuple)) else axes))
  return tuple(out)


def mesh_shape(sizes: dict, num_devices: int) -> tuple[int, ...]:
  """Sizes for (data, fsdp, tensor); one -1 takes whatever the others leave."""
  shape = [int(sizes[a]) for a in MESH_AXES]
  if shape.count(-1) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got {dict(zip(MESH_AXES, shape))}")
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if num_devices % known:
      raise ValueError(f"{num_devices} devices do not divide by the fixed mesh axes {dict(zip(MESH_AXES, shape))}")
    shape[shape.index(-1)] = num_devices // known
  if int(np.prod(shape)) != num_devices:
    raise ValueError(f"mesh {dict(zip(MESH_AXES, shape))} needs {int(np.prod(shape))} devices, have {num_devices}")
  return tuple(shape)


def create_mesh(sizes: dict, dcn_data: int = 1, devices=None) -> Mesh:
  """A (data, fsdp, tensor) mesh; with dcn_data > 1 (multi-slice), data spans slices over DCN."""
  devices = devices if devices is not None else jax.devices()
  if dcn_data > 1:
    per_slice = len(devices) // dcn_data
    ici = mesh_shape(sizes, per_slice)
    array = mesh_utils.create_hybrid_device_mesh(ici, (dcn_data, 1, 1), devices)
  else:
    # Splitting physical axes lets any factorisation of a TPU slice map onto the mesh.
    array = mesh_utils.create_device_mesh(mesh_shape(sizes, len(devices)), devices, allow_split_physical_axes=True)
  return Mesh(array, MESH_AXES)


def logical_to_sharding(logical_specs, mesh: Mesh, rules):
  """Tree of logical PartitionSpecs -> tree of NamedShardings."""
  return nn.logical_to_mesh_sharding(logical_specs, mesh, rules)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dim over data x fsdp; other dims replicated."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def check_batch_size(field: str, size: int, mesh: Mesh, microbatches: int = 1) -> None:
  """A global batch (the config field `field`) must split evenly over the batch-parallel devices (times the
  microbatches) and over the processes, and each process's devices must hold a share of their own, or global_batch
  cannot place it: fails naming the field. A size below 1 would otherwise pass (0 divides by anything) and fail
  later inside tf.data or a division."""
  if size < 1:
    raise ValueError(f"{field}={size} must be at least 1 (a global batch, in sequences)")
  batch_devices = mesh.shape["data"] * mesh.shape["fsdp"]
  if size % (batch_devices * microbatches):
    times = f" times train.microbatches={microbatches}" if microbatches > 1 else ""
    raise ValueError(f"{field}={size} must divide by the batch-parallel devices (data x fsdp = {batch_devices})"
                     + times)
  if size % jax.process_count():
    raise ValueError(f"{field}={size} must divide by the process count {jax.process_count()}")
  # Each process feeds size / process_count rows of its own data. Where the batch axes do not split the batch
  # between processes (an axis that replicates it spans processes), JAX would take one process's rows as the whole
  # batch and keep different rows in what should be copies, and training would go on, silently wrong.
  rows = {index[0].indices(size) for index in batch_sharding(mesh).addressable_devices_indices_map((size,)).values()}
  held = sum(len(range(*r)) for r in rows)
  if held != size // jax.process_count():
    raise ValueError(f"mesh {dict(mesh.shape)} gives the devices of process {jax.process_index()} {held} of the "
                     f"{size} rows of {field}, but each of the {jax.process_count()} processes reads its own "
                     f"{size // jax.process_count()}: other processes hold the same rows. Keep the axes that "
                     f"replicate the batch (tensor) within a process's {jax.local_device_count()} devices, e.g. "
                     f"mesh.tensor dividing {jax.local_device_count()}")


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
  """Host-local numpy batch -> global jax.Arrays sharded over the batch axes (multi-host safe)."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}


def shardings_by_path(tree, param_shardings: dict, default):
  """Shardings for a tree whose leaves mirror params somewhere below (e.g. optimizer mu/nu).

  A leaf whose key path ends with a param's path gets that param's sharding; others (step counts,
  scalars) get `default`.
  """
  def key_of(path):
    return tuple(getattr(k, "key", getattr(k, "name", getattr(k, "idx", None))) for k in path)
  by_suffix = {key_of(p): s for p, s in param_shardings}
  lengths = sorted({len(k) for k in by_suffix}, reverse=True)

  def pick(path, leaf):
    keys = key_of(path)
    for n in lengths:
      if len(keys) >= n and keys[-n:] in by_suffix and getattr(leaf, "ndim", 0) > 0:
        return by_suffix[keys[-n:]]
    return default
  return jax.tree_util.tree_map_with_path(pick, tree)


@contextlib.contextmanager
def kernel_mesh(mesh: Mesh):
  """Within it, Pallas attention kernels (which XLA cannot partition) run per batch shard of `mesh` under
  shard_map instead of on arrays gathered to every device. Unlike jax.set_mesh it leaves flax's logical
  constraints inactive, as the trainers run them: shardings propagate from the parameters' and the batch's."""
  token = _KERNEL_MESH.set(mesh)
  try:
    yield
  finally:
    _KERNEL_MESH.reset(token)


def with_kernel_mesh(mesh: Mesh, fn):
  """fn traced under kernel_mesh(mesh): wrap a step before jax.jit so that every trace of it sees the mesh."""
  @functools.wraps(fn)
  def traced(*args, **kwargs):
    with kernel_mesh(mesh):
      return fn(*args, **kwargs)
  return traced


def mesh_for_kernels():
  """The mesh a Pallas kernel shards over: JAX's mesh context if one is set, else kernel_mesh's when it has
  more than one device; None: call the kernel on whole arrays."""
  abstract = jax.sharding.get_abstract_mesh()
  if not abstract.empty:
    return abstract
  mesh = _KERNEL_MESH.get()
  return mesh if mesh is not None and mesh.size > 1 else None


def kernel_axes() -> tuple:
  """(batch mesh axes, heads mesh axes or None) that a per-shard attention kernel splits [B, T, N, D] over: the
  active logical rules' 'activation_batch' and 'heads' (the trainers' rules), else the batch axes alone."""
  if not nn.get_logical_axis_rules():
    return BATCH_AXES, None
  batch, heads = nn.logical_to_mesh_axes(("activation_batch", "heads"))
  return batch, heads
