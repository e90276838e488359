"""The host loop of one program: chunks of steps, the NaN policy, evaluation, checkpoints, metrics, progress.

The loop touches device values once per chunk of ``train.log_every`` steps (inside a chunk the steps run in
a ``lax.scan``, :func:`experiments.train.step.population_chunk`). After each chunk it

  1. checks every member's losses are finite (``train.on_nan``: ``stop`` raises :class:`TrainingDiverged`,
     ``continue`` records the member's first bad step in ``diverged_at`` and trains the others on);
  2. evaluates every ``train.eval_every`` steps and at the end (:mod:`experiments.train.evaluate`);
  3. writes one record per member (:func:`records`) to the metrics writer (process 0 only);
  4. saves a checkpoint every ``train.checkpoint_every`` steps and at the end, so the latest checkpoint is
     always a state whose losses were checked;
  5. advances the progress bar or line (:mod:`experiments.train.progress`).
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Callable

import jax
import numpy as np

from experiments.train import progress as progress_lib
from experiments.train.checkpoint import Checkpointer
from experiments.train.metrics import MetricsWriter
from experiments.train.program import Program


class TrainingDiverged(RuntimeError):
  """The loss of some member became NaN or infinite."""


def train(program: Program, *, workdir: str | None = None, writer: MetricsWriter | None = None,
          progress: bool | None = None, stop_after: int | None = None,
          log: Callable[[str], None] | None = None) -> dict:
  """Trains ``program`` to ``train.steps``, resuming from the latest checkpoint in ``workdir`` if there is one.

  Args:
    program: the group's :class:`~experiments.train.program.Program` (its state advances in place).
    workdir: where checkpoints go (``<workdir>/checkpoints/<group>``); ``None``: no checkpoints.
    writer: metrics sink; ``None``: metrics are only returned.
    progress: ``None`` (default): a tqdm bar when stderr is a terminal, else a progress line per chunk (at
      most one every 30 s) with the group, step/total, steps per second and the time left
      (:mod:`experiments.train.progress`); ``True``: the bar; ``False``: neither.
    stop_after: stop once this many steps are done (for tests of resumption).
    log: where to report a resumption (default: nowhere) and checkpoints that cannot be read back
      (default: stderr); those are moved to ``<checkpoints>/<group>/corrupt/`` and the previous
      checkpoint is tried, or, when none is left, training starts from step 0.

  Returns:
    ``{"loss": (members, steps run here) array, "records": [metric dicts]}``.

  Raises:
    TrainingDiverged: a member's loss became non-finite; the message names the step, arm and seed, and
      the last good checkpoint stays in place.
  """
  t = program.config.train
  name = program.group.name
  ckpt = None
  if workdir is not None and t.checkpoint_every:
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints", name))
    _resume(program, ckpt, log)
  primary = jax.process_index() == 0  # metrics.jsonl is written by process 0 only
  if writer is not None and primary:
    writer.truncate(name, program.step)
  end = t.steps if stop_after is None else min(t.steps, stop_after)
  losses, out = [], []
  bar = progress_lib.start(progress, name, total=t.steps, initial=program.step)
  try:
    while program.step < end:
      start = program.step
      num = min(t.log_every - start % t.log_every, end - start)
      metrics = program.fetch(program.run_chunk(num))
      _check_finite(program, metrics, start, ckpt, log)
      losses.append(metrics["loss"])
      step = program.step
      evaluated = program.evaluate() if step % t.eval_every == 0 or step == t.steps else {}
      chunk_records = records(program, step, metrics, evaluated)
      out.extend(chunk_records)
      if writer is not None and primary:
        writer.write(chunk_records)
      if ckpt is not None and (step % t.checkpoint_every == 0 or step == t.steps):
        ckpt.save(step, program.state)
      bar.update(step, loss=f"{float(np.mean(metrics['loss'][:, -1])):.3f}",
                 acc=f"{float(np.mean(metrics['accuracy'][:, -1])):.3f}")
  finally:
    bar.close()
    if ckpt is not None:
      ckpt.close()
  loss = np.concatenate(losses, axis=1) if losses else np.zeros((len(program.group.members), 0))
  return {"loss": loss, "records": out}


def _resume(program: Program, ckpt: Checkpointer, log: Callable[[str], None] | None) -> None:
  """Restores the latest readable checkpoint into ``program`` (unreadable ones are moved aside, reported)."""
  if ckpt.latest_step() is None:
    return
  name = program.group.name
  warn = log if log is not None else functools.partial(print, file=sys.stderr)
  restored, state = ckpt.restore_latest(program.state, lambda line: warn(f"[{name}] {line}"))
  program.load(state, program.step if restored is None else int(restored))
  if restored is not None:
    if log is not None:
      log(f"[{name}] resuming from the checkpoint at step {restored}")
  else:
    warn(f"[{name}] no readable checkpoint left in {ckpt.directory}; starting from step 0")


def _check_finite(program: Program, metrics: dict, start: int, ckpt: Checkpointer | None,
                  log: Callable[[str], None] | None) -> None:
  """The NaN policy (``train.on_nan``) on one chunk's losses, which began at step ``start``."""
  bad = ~np.isfinite(metrics["loss"])
  if not bad.any():
    return
  name = program.group.name
  if program.config.train.on_nan == "continue":
    for member, offset in np.argwhere(bad):
      if int(member) not in program.diverged:
        program.diverged[int(member)] = start + int(offset)
        if log is not None:
          m = program.group.members[int(member)]
          log(f"[{name}] {m.label} seed {m.seed} diverged at step {start + int(offset)}; "
              "continuing the others (train.on_nan=continue)")
    return
  member, offset = map(int, np.argwhere(bad)[0])
  m = program.group.members[member]
  kept = ckpt.latest_step() if ckpt is not None else None
  raise TrainingDiverged(
      f"Loss became {metrics['loss'][member, offset]} at step {start + offset} (arm {m.label!r}, "
      f"seed {m.seed}, group {name!r}); training stopped. "
      + (f"The last good checkpoint (step {kept}) is kept in {ckpt.directory}."
         if kept is not None else "No checkpoint was written before it."))


def records(program: Program, step: int, metrics: dict, evaluated: dict) -> list[dict]:
  """One metrics record per member at ``step``: the chunk's mean train loss/accuracy, the last step's
  diagnostics and, at an evaluation step, the test metrics (see :mod:`experiments.train.metrics`)."""
  out = []
  for i, m in enumerate(program.group.members):
    record = {"group": program.group.name, "arm": m.arm, "label": m.label, "seed": m.seed, "step": step,
              "swept": m.swept, "diverged_at": program.diverged.get(i),
              "train_loss": float(np.mean(metrics["loss"][i])),
              "train_accuracy": float(np.mean(metrics["accuracy"][i]))}
    for key, value in metrics.items():
      if key not in ("loss", "accuracy"):
        record[key] = float(value[i])
    for key, value in evaluated.items():
      record[key] = float(value[i])
    out.append(record)
  return out
