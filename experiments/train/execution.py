"""How a group's members are executed: one vmapped population, or one after another through one program.

A group's members share an optimizer structure, so :class:`~experiments.train.program.Program` trains them as
one vmapped population. On an accelerator that fills the chip; on a CPU it does not pay: the members' small
GEMMs share no operand, so vmapping raises no arithmetic intensity, while the vmapped chunk and init take
longer to compile (``benchmarks/sweep_throughput.py`` measured the population at 0.62-0.67x the throughput
of one compiled single-member program reused for every member, end to end). ``train.population`` chooses:

* ``vmap``: one program for all members;
* ``sequential``: one single-member program, compiled once, :meth:`Program.reset` to each member in turn;
  each member checkpoints under ``<workdir>/members/<label>-seed<seed>/`` and is the unit of resumption;
* ``auto`` (default): ``sequential`` for a group of several members on one CPU device, ``vmap`` otherwise
  (several devices shard the population over a mesh; an accelerator gains from the batch).

The two give the same metrics up to float32 round-off (``tests/test_train.py``) and write the same records.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Callable

import jax

from experiments.config import ExperimentConfig
from experiments.train import sharding as sharding_lib
from experiments.train.population import Group, Member
from experiments.train.program import Hooks, Program


def choose(config: ExperimentConfig, group: Group) -> tuple[str, str]:
  """``(mode, why)``: ``"vmap"`` or ``"sequential"`` for ``group``, and the reason, for the log line."""
  mode = config.train.population
  if mode != "auto":
    return mode, f"train.population={mode}"
  if len(group.members) == 1:
    return "vmap", "one member"
  devices = sharding_lib.devices_for(config.train.num_devices)
  if len(devices) > 1 or jax.process_count() > 1:
    return "vmap", f"population sharded over {len(devices)} devices"
  if devices[0].platform != "cpu":
    return "vmap", f"one {devices[0].device_kind} device: vmapping fills it"
  return "sequential", "one CPU device: vmapping gains nothing there and compiles longer"


class _MemberWriter:
  """A metrics writer for one member of a group run one member at a time: a resume drops only its records."""

  def __init__(self, writer, member: Member):
    self._writer, self._member = writer, member

  def truncate(self, group: str, step: int) -> None:
    self._writer.truncate(group, step, member=(self._member.label, self._member.seed))

  def write(self, records) -> None:
    self._writer.write(records)


def member_workdir(workdir: str, member: Member) -> str:
  """Where a member run on its own keeps its checkpoints."""
  safe = re.sub(r"[^A-Za-z0-9_.=+,\-\[\]]", "_", member.label)
  return os.path.join(workdir, "members", f"{safe}-seed{member.seed}")


def train_sequential(config: ExperimentConfig, group: Group, dataset, *, hooks: Hooks | None = None,
                     workdir: str | None = None, writer=None, progress: bool | None = None,
                     log: Callable[[str], None] | None = None, skip: frozenset = frozenset()) -> list[dict]:
  """Trains the members of ``group`` one after another through one compiled single-member program.

  Args:
    skip: ``(label, seed)`` of members already finished (not trained again).
    workdir, writer, progress, log: as for :meth:`Program.train`; checkpoints go to :func:`member_workdir`.

  Returns:
    :meth:`Program.train`'s result for every member trained, in order.
  """
  if jax.process_count() > 1:
    raise ValueError("train.population='sequential' runs in one process only; use 'vmap' (or 'auto') for a "
                     "multi-process run.")
  todo = [m for m in group.members if (m.label, m.seed) not in skip]
  if not todo:
    return []
  program = Program(config, dataclasses.replace(group, members=todo[:1]), dataset, hooks=hooks)
  results = []
  for i, member in enumerate(todo):
    if i:
      program.reset([member])
    results.append(program.train(
        workdir=None if workdir is None else member_workdir(workdir, member),
        writer=None if writer is None else _MemberWriter(writer, member), progress=progress, log=log))
  return results
