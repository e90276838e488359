"""Population and data parallelism with ``jax.sharding``: a 2-D mesh ``members`` × ``data``.

Every array of a population's state has the members on its leading axis; that axis is split over the mesh
axis ``members``, so a device holds ``members / m`` whole members and trains them without talking to the
others (no collective in the step when the ``data`` axis has size 1). Each member's batch is split over
``data``; under ``jit`` XLA inserts the reductions over ``data`` only (mean loss, gradients, BatchNorm
statistics of the member's global batch), so a step computes the same numbers as on one device, up to
summation order.

Where the batches come from is ``train.feed`` (:mod:`experiments.train.feed`): ``device`` (the default on
one process) replicates the (small) training set on every device and draws each step's batch there;
``host`` (the default with several processes) keeps it in host memory, and per chunk each process gathers
only the examples of its own devices' blocks (members-slice × data-slice of each batch) and assembles
global ``(steps, members, batch, ...)`` arrays laid out as :func:`chunk_batch_sharding`. Both draw the same
examples. The test set is replicated on every device either way.

Mesh shape (``train.num_devices`` devices, ``train.mesh_members`` = m):

* ``m > 0``: ``m × (devices / m)``; ``m`` must divide the device count and ``devices / m`` the batch size.
* ``m = 0`` (automatic): on CPU ``1 × devices`` (all members on each device, the batch split: CPU devices are
  cores of one machine and the simulated ones share them); on accelerators members first: the largest
  divisor ``m`` of the device count with ``m <= members`` and ``batch_size`` divisible by ``devices / m``.

A population whose size is not a multiple of ``m`` is padded with copies of its first member (same seed,
same hyperparameters, so they compute exactly what member 0 computes); the copies are dropped from every
output (metrics, losses, ``Program.params``) and only live in the device state and its checkpoints.

With ``jax.distributed`` initialised (several processes, :mod:`experiments.distributed`), the mesh spans
the devices of every process; it must then use all of them (``train.num_devices=0``).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MEMBERS_AXIS = "members"
DATA_AXIS = "data"


def mesh_shape(num_devices: int, mesh_members: int, num_members: int, batch_size: int,
               platform: str | None = None) -> tuple[int, int]:
  """``(members, data)`` axis sizes for a population of ``num_members`` on ``num_devices`` devices.

  Raises:
    ValueError: ``mesh_members`` does not divide ``num_devices``, or the data axis does not divide the batch.
  """
  if mesh_members:
    if num_devices % mesh_members:
      raise ValueError(f"train.mesh_members ({mesh_members}) must divide the number of devices ({num_devices}); "
                       "set train.mesh_members or train.num_devices.")
    m = mesh_members
  elif (platform or jax.default_backend()) == "cpu":
    m = 1
  else:
    fits = [k for k in range(1, num_devices + 1) if num_devices % k == 0 and batch_size % (num_devices // k) == 0]
    m = max([k for k in fits if k <= max(num_members, 1)] or [min(fits)])  # fits holds num_devices (data 1)
  data = num_devices // m
  if batch_size % data:
    raise ValueError(f"train.batch_size ({batch_size}) must be divisible by the data axis of the mesh "
                     f"({num_devices} devices / train.mesh_members {m} = {data}); set train.batch_size, "
                     "train.mesh_members or train.num_devices.")
  return m, data


def devices_for(num_devices: int = 0) -> list:
  """The first ``num_devices`` devices (0: all devices of every process)."""
  devices = jax.devices()
  if num_devices < 0 or num_devices > len(devices):
    raise ValueError(f"train.num_devices must be between 0 and {len(devices)} (the visible devices), "
                     f"got {num_devices}.")
  if jax.process_count() > 1 and num_devices not in (0, len(devices)):
    raise ValueError(f"train.num_devices={num_devices} uses {num_devices} of the {len(devices)} devices of a "
                     f"{jax.process_count()}-process run; every process must hold part of the mesh: set "
                     "train.num_devices=0 (all devices).")
  return devices[:num_devices] if num_devices else devices


def make_mesh(num_devices: int = 0, members: int = 1) -> Mesh:
  """A ``members × (devices / members)`` mesh over the first ``num_devices`` devices (0: all devices)."""
  chosen = devices_for(num_devices)
  if len(chosen) % members:
    raise ValueError(f"train.mesh_members ({members}) must divide the number of devices ({len(chosen)}).")
  return Mesh(np.array(chosen).reshape(members, len(chosen) // members), (MEMBERS_AXIS, DATA_AXIS))


def members_size(mesh: Mesh) -> int:
  return mesh.shape.get(MEMBERS_AXIS, 1)


def data_size(mesh: Mesh) -> int:
  return mesh.shape.get(DATA_AXIS, 1)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def member_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of a population array ``(members, ...)``: the leading axis over ``members``."""
  return NamedSharding(mesh, P(MEMBERS_AXIS if MEMBERS_AXIS in mesh.axis_names else None))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of one member's ``(batch, ...)`` array: the leading axis over ``data``."""
  return NamedSharding(mesh, P(DATA_AXIS))


def chunk_batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of a chunk's host-fed batches ``(steps, members, batch, ...)``: members and batch split."""
  return NamedSharding(mesh, P(None, MEMBERS_AXIS, DATA_AXIS))


def global_array(value: Any, sharding: NamedSharding) -> jax.Array:
  """A global array of the host value ``value`` (the same on every process) laid out as ``sharding``.

  Every process passes the whole value and contributes the part its own devices hold
  (``jax.make_array_from_process_local_data``); on one process this is ``jax.device_put``.
  """
  value = np.asarray(value)
  if jax.process_count() == 1:
    return jax.device_put(value, sharding)
  return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def global_tree(tree: Any, sharding: NamedSharding) -> Any:
  return jax.tree.map(lambda x: global_array(x, sharding), tree)


def replicate(tree: Any, mesh: Mesh) -> Any:
  return global_tree(tree, replicated(mesh))


def fetch(tree: Any) -> Any:
  """Host numpy copies of (possibly multi-process) global arrays; every process must call it."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils
  return multihost_utils.process_allgather(tree, tiled=True)


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
  if batch_size % data_size(mesh):
    raise ValueError(f"train.batch_size ({batch_size}) must be divisible by the data axis of the mesh "
                     f"({data_size(mesh)} of {mesh.size} devices); set train.num_devices, train.mesh_members "
                     "or the batch size.")
