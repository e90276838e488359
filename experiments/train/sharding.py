"""Data parallelism with ``jax.sharding``: one mesh axis ``data`` over the devices.

The batch is split over ``data``; parameters, optimizer state and the (small) data set stay replicated.
Under ``jit`` XLA inserts the cross-device reductions (mean loss, gradients, BatchNorm statistics over the
global batch), so a step on ``k`` devices computes the same numbers as on one, up to summation order.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(num_devices: int = 0) -> Mesh:
  """A 1-D mesh over the first ``num_devices`` devices (0: all visible devices)."""
  devices = jax.devices()
  if num_devices < 0 or num_devices > len(devices):
    raise ValueError(f"train.num_devices must be between 0 and {len(devices)} (the visible devices), "
                     f"got {num_devices}.")
  chosen = devices[:num_devices] if num_devices else devices
  return Mesh(np.array(chosen), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of one member's ``(batch, ...)`` array: the leading axis over ``data``."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicate(tree: Any, mesh: Mesh) -> Any:
  return jax.device_put(tree, replicated(mesh))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
  if batch_size % mesh.size:
    raise ValueError(f"train.batch_size ({batch_size}) must be divisible by the number of devices "
                     f"({mesh.size}); set train.num_devices or the batch size.")
