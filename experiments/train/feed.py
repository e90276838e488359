"""Host-fed batches (``train.feed=host``): each process gathers only the examples its own devices train on.

With ``train.feed=device`` (``auto`` on one process) the training set is replicated on every device and each
step's batch is drawn inside the scanned chunk (:func:`experiments.train.step.population_chunk`). With
``host`` (``auto`` in a multi-process run) the training set stays in host memory and, per chunk, every
process

  1. computes the chunk's batch indices of the members its devices hold (:func:`~experiments.train.step.
     chunk_indices`: the members' data keys, the epoch permutations and the offsets of the device path, run
     on one of its own devices, so the examples are exactly those the device path would draw);
  2. gathers from its numpy copy of the training set only the rows of its own devices' blocks: its
     members-slice × data-slice of every step's batch, never the whole batch;
  3. puts each block on its device and assembles the global ``(steps, members, batch, ...)`` inputs and
     labels (``jax.make_array_from_single_device_arrays``, sharded as
     :func:`~experiments.train.sharding.chunk_batch_sharding`), which the chunk consumes step by step.

Augmentation, label smoothing, diagnostics and evaluation are unchanged (they act on the batch after it is
drawn, or not on training batches at all); the test set stays replicated on every device for evaluation.

Memory: a chunk's batches take ``steps × members × batch`` examples over the whole mesh (CIFAR-10, 391 steps
of 15 members × 128 images of 12 KiB: 9.2 GB). :meth:`HostFeed.piece_steps` caps what one process gathers
at once at ``max_bytes`` (default :data:`FEED_BYTES`, 1 GiB; the same bound, divided over its devices, on
their copies), and :meth:`experiments.train.program.Program.run_chunk` then runs a chunk as several
programs of at most that many steps (at most two compiled lengths); the numbers are those of one program
up to float32 round-off.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh

from experiments import config as config_lib
from experiments.train import sharding as sharding_lib
from experiments.train import step as step_lib

FEED_BYTES = 1 << 30


def resolve(feed: str) -> str:
  """``device`` or ``host`` for the config value ``feed`` (``auto``: host when several processes run)."""
  if feed not in config_lib.FEED:
    raise ValueError(f"train.feed must be one of {config_lib.FEED}, got {feed!r}.")
  if feed == "auto":
    return "host" if jax.process_count() > 1 else "device"
  return feed


def _take(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
  """``array[rows]``, the host gather (its own function, so a test can see what a process gathers)."""
  return array[rows]


def _span(index: slice, size: int) -> tuple[int, int]:
  start, stop, _ = index.indices(size)
  return start, stop


class HostFeed:
  """A mesh's host-fed chunk batches from a host copy of the training set (module docstring).

  Args:
    mesh: the program's ``members × data`` mesh.
    x_train, y_train: the training set, every process's whole copy (numpy).
    batch_size: each member's batch.
    max_bytes: most bytes of examples one process gathers for one call of :meth:`batches`.
  """

  def __init__(self, mesh: Mesh, x_train: np.ndarray, y_train: np.ndarray, batch_size: int,
               max_bytes: int = FEED_BYTES):
    self.x, self.y = np.asarray(x_train), np.asarray(y_train)
    self.batch_size, self.max_bytes = batch_size, max_bytes
    self.sharding = sharding_lib.chunk_batch_sharding(mesh)
    self._indices = jax.jit(step_lib.chunk_indices, static_argnums=(2, 3, 4))

  def _blocks(self, num_members: int, num_steps: int) -> dict:
    """``{device: (members span, batch span)}`` of this process's devices."""
    shape = (num_steps, num_members, self.batch_size)
    return {device: (_span(index[1], num_members), _span(index[2], self.batch_size))
            for device, index in self.sharding.addressable_devices_indices_map(shape).items()}

  def piece_steps(self, num_members: int) -> int:
    """The most steps of one :meth:`batches` call within ``max_bytes`` of gathered examples (at least 1)."""
    row = self.x[0].nbytes + self.y[0].nbytes
    per_step = sum((m1 - m0) * (b1 - b0) for (m0, m1), (b0, b1) in set(self._blocks(num_members, 1).values()))
    return max(1, self.max_bytes // (per_step * row))

  def batches(self, keys: np.ndarray, first_step: int, num_steps: int) -> tuple[jax.Array, jax.Array]:
    """The global ``(xs, ys)`` of ``num_steps`` steps from ``first_step``, shape ``(steps, members, batch, ...)``.

    ``keys``: every (padded) member's data key, ``(members, 2)``, the same on every process.
    """
    num_members, n = len(keys), len(self.y)
    indices, gathered, xs, ys = {}, {}, [], []
    for device, (members, rows) in self._blocks(num_members, num_steps).items():
      if members not in indices:
        # On the process's own device: the permutations are those the device path draws on its devices.
        own = jax.device_put(keys[members[0]:members[1]], device)
        first = jax.device_put(np.int32(first_step), device)
        indices[members] = np.asarray(self._indices(own, first, num_steps, n, self.batch_size))
      if (members, rows) not in gathered:  # devices that differ only on other axes share the block
        idx = indices[members][:, :, rows[0]:rows[1]]
        gathered[members, rows] = (_take(self.x, idx), _take(self.y, idx))
      x, y = gathered[members, rows]
      xs.append(jax.device_put(x, device))
      ys.append(jax.device_put(y, device))
    shape = (num_steps, num_members, self.batch_size)
    return (jax.make_array_from_single_device_arrays(shape + self.x.shape[1:], self.sharding, xs),
            jax.make_array_from_single_device_arrays(shape, self.sharding, ys))
