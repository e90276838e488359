"""Orbax checkpoints of a population's training state.

A checkpoint is written only after the chunk that produced it was checked for a finite loss, so the latest
checkpoint is always the last good state. Orbax writes into a temporary directory and renames it when the
save is complete, so a process killed mid-save leaves the previous checkpoint as the latest.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves and restores the state pytree of one program under ``directory``."""

  def __init__(self, directory: str, *, max_to_keep: int = 2):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any) -> None:
    self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
    self._manager.wait_until_finished()

  def restore(self, step: int, like: Any) -> Any:
    """Restores checkpoint ``step`` with the shapes, dtypes and shardings of ``like``."""
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), like)
    return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

  def close(self) -> None:
    self._manager.close()
