"""Orbax checkpoints of a population's training state.

A checkpoint is written only after the chunk that produced it was checked for a finite loss, so the latest
checkpoint is always the last good state. Orbax writes a step into ``<step>.orbax-checkpoint-tmp`` and
renames it to ``<step>`` when the save is complete; the manager lists only finished steps, so a process
killed mid-save leaves the previous checkpoint as the latest (the next save of that step removes the
leftover temporary directory).

A checkpoint that was finished but cannot be read back (a truncated or overwritten file, a disk error) is
moved aside into ``<directory>/corrupt/`` (never deleted; orbax lists only numbered directories as steps,
so neither ``latest_step`` nor the ``max_to_keep`` garbage collection sees it again) and the previous
checkpoint is tried; see :meth:`Checkpointer.restore_latest`.

Several processes (``jax.distributed``): the state's arrays span every process's devices, and every process
calls :meth:`save`, :meth:`restore_latest` and :meth:`close` at the same points (orbax synchronises them);
each writes the shards its devices hold, process 0 (orbax's ``primary_host``) creates the directories,
writes the metadata and finalises the step. The directory must be on a file system every process sees.
Moving a bad checkpoint aside is done by process 0 between two barriers.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp

from experiments import distributed

CORRUPT = "corrupt"  # sub-directory of moved-aside checkpoints; not a step name, so orbax ignores it
_REASON_CHARS = 200


class Checkpointer:
  """Saves and restores the state pytree of one program under ``directory``."""

  def __init__(self, directory: str, *, max_to_keep: int = 2):
    self.directory = os.path.abspath(directory)
    self.max_to_keep = max_to_keep
    self._manager = self._open()

  def _open(self) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=self.max_to_keep, create=True,
            multiprocessing_options=ocp.options.MultiprocessingOptions(primary_host=0)))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def step_directory(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def save(self, step: int, state: Any) -> None:
    self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
    self._manager.wait_until_finished()

  def restore(self, step: int, like: Any) -> Any:
    """Restores checkpoint ``step`` with the shapes, dtypes and shardings of ``like``."""
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), like)
    return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

  def restore_latest(self, like: Any, warn: Callable[[str], None]) -> tuple[int | None, Any]:
    """Restores the newest checkpoint that can be read back.

    A checkpoint whose restore raises is moved to ``<directory>/corrupt/<step>`` and reported with one
    ``warn`` line naming its directory and the reason (the last line of the innermost error, shortened);
    then the next older checkpoint is tried.

    Args:
      like: a state pytree with the shapes, dtypes and shardings to restore into.
      warn: receives one line per checkpoint moved aside.

    Returns:
      ``(step, state)`` of the restored checkpoint, or ``(None, like)`` when no readable checkpoint is left.
    """
    while (step := self.latest_step()) is not None:
      try:
        return step, self.restore(step, like)
      except Exception as e:  # noqa: BLE001 (any failure to read a checkpoint back means: do not use it)
        reason = _reason(e, self.step_directory(step))
      moved = self.move_aside(step)
      warn(f"warning: cannot restore the checkpoint {self.step_directory(step)} ({reason}); "
           f"moved it to {moved}")
    return None, like

  def move_aside(self, step: int) -> str:
    """Moves checkpoint ``step`` into ``<directory>/corrupt/`` and re-reads the remaining steps."""
    source = self.step_directory(step)
    target_dir = os.path.join(self.directory, CORRUPT)
    if distributed.is_primary():
      os.makedirs(target_dir, exist_ok=True)
    target, n = os.path.join(target_dir, str(step)), 1
    while os.path.exists(target):  # the same step went bad before
      n += 1
      target = os.path.join(target_dir, f"{step}.{n}")
    self._manager.close()
    distributed.barrier(f"wd_optax:move-aside-{step}")  # every process has failed on it and closed
    if distributed.is_primary():
      os.rename(source, target)
    distributed.barrier(f"wd_optax:moved-aside-{step}")
    self._manager = self._open()  # the old manager still lists the moved step
    return target

  def close(self) -> None:
    self._manager.close()


def _reason(error: BaseException, step_dir: str) -> str:
  """The last line of the innermost error of ``error``'s chain, without the step path, on one short line."""
  seen = []
  while error is not None and error not in seen:
    seen.append(error)
    error = error.__cause__ or error.__context__
  root = seen[-1]
  lines = [line.strip() for line in str(root).splitlines() if line.strip()]
  text = lines[-1] if lines else ""
  text = text.replace(os.path.join(step_dir, ""), "").replace(step_dir, "")
  text = f"{type(root).__name__}: {text}" if text else type(root).__name__
  return text if len(text) <= _REASON_CHARS else text[:_REASON_CHARS - 3] + "..."

