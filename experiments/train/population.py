"""Members and groups of a population: which runs a config asks for, and which train as one program.

A *member* is one (arm, seed, swept value) training run. Arms with the same model whose optimizers share a
structure (the same family and static fields; they differ only in the family's traced fields,
``OptimizerSpec.TRACED``) form one *group*: their members are stacked on a leading
population axis and trained by one jitted, vmapped program (:class:`experiments.train.program.Program`),
not one after another.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Sequence

from experiments import config as config_lib
from experiments import optimizers
from experiments.config import Arm, ExperimentConfig


@dataclasses.dataclass(frozen=True)
class Member:
  """One training run of a population."""
  arm: str
  seed: int
  hp: dict  # values of the group's traced fields (OptimizerSpec.TRACED)
  label: str  # arm name, plus the swept values: "adamw[weight_decay=0.001]"
  swept: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Group:
  """Arms that share a model and an optimizer structure, trained as one vmapped program."""
  name: str
  optim: optimizers.OptimizerSpec
  members: list
  model: config_lib.ModelConfig = dataclasses.field(default_factory=config_lib.ModelConfig)


def _sweep_points(arm: Arm) -> list[dict]:
  points = [{}]
  for key, values in arm.sweep.items():
    points = [dict(p, **{key: float(v)}) for p in points for v in values]
  return points


def make_groups(config: ExperimentConfig, seeds: Sequence[int] | None = None) -> list[Group]:
  """Members of every arm, grouped by model and optimizer structure (order of first appearance).

  ``config`` is taken as valid: the command line validates it once, up front
  (:func:`experiments.checks.study_config`); a config built by hand is checked with
  :func:`experiments.config.validate`.
  """
  seeds = list(range(config.seeds)) if seeds is None else list(seeds)
  groups: dict[tuple, Group] = {}
  for arm in config.arms:
    optim, model = config.arm_optim(arm), config.arm_model(arm)
    key = (json.dumps(config_lib.to_dict(model), sort_keys=True),) + optim.static_key()
    if key not in groups:
      groups[key] = Group(name="", optim=optim, members=[], model=model)
    for point in _sweep_points(arm):
      hp = {k: float(point.get(k, getattr(optim, k))) for k in optim.TRACED}
      label = arm.name if not point else arm.name + "[" + ",".join(f"{k}={v:g}" for k, v in point.items()) + "]"
      for seed in seeds:
        groups[key].members.append(Member(arm=arm.name, seed=seed, hp=hp, label=label, swept=point))
  out = list(groups.values())
  for i, group in enumerate(out):
    arms = list(dict.fromkeys(m.arm for m in group.members))
    joined = "+".join(arms)
    group.name = joined if len(joined) <= 48 else f"group{i}_{arms[0]}"
  return out
