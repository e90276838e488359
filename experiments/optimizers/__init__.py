"""Optimizer families of the harness: one spec per family, one file per family, registered by name.

Each family (``sgd``, ``adam``, ``adam_buffers``, ``fixnorm``, ``adamp``, ``adams``, ``rotational_adamw``, ...) is a frozen dataclass deriving from
:class:`~experiments.optimizers.base.OptimizerSpec` that holds only its own fields, says which of them are
*traced* (vmapped over a population's members: ``TRACED``) and which are *static* (the rest: they fix the
compiled program), and builds the optax transform of one step with :meth:`~base.OptimizerSpec.build`.

A study's ``optim`` is a spec; an arm overrides fields of its spec (or switches family with ``name``, keeping
the shared fields of the base spec), and an unknown field is an error that lists the family's fields::

  optim = optimizers.SGD(learning_rate=0.1, lr_schedule="cosine", weight_decay=5e-3)
  Arm("adamw", {"name": "adam", "decay": "decoupled", "learning_rate": 1e-3}, sweep={"weight_decay": [0.1, 1]})

To add a family, write ``experiments/optimizers/<name>.py`` with its spec and add it to :data:`FAMILIES`
(docs/harness.md shows one).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from experiments.optimizers.adam import Adam
from experiments.optimizers.adam_buffers import AdamBuffers
from experiments.optimizers.base import (DECAY_MASK_PRESETS, LR_SCHEDULES, GradResult, OptimizerSpec, Rates,
                                         decay_mask, decay_mask_spec)
from experiments.optimizers.fixnorm import FixNorm
from experiments.optimizers.kfac import KFAC
from experiments.optimizers.projected import SGDP, AdamP
from experiments.optimizers.rotational import AdamH, RotationalAdamW, RotationalSGD
from experiments.optimizers.sgd import SGD
from experiments.optimizers.stable import SGDS, AdamS

FAMILIES: dict[str, type[OptimizerSpec]] = {
    cls.NAME: cls for cls in (SGD, Adam, AdamBuffers, FixNorm, KFAC, AdamP, SGDP, AdamS, SGDS, RotationalAdamW,
                              RotationalSGD, AdamH)}


def build(spec: OptimizerSpec, traced: Rates):
  """``spec.build(traced)``: the harness's default ``make_tx`` hook."""
  return spec.build(traced)


def register(cls: type[OptimizerSpec]) -> type[OptimizerSpec]:
  """Adds a family (e.g. a study's own) to :data:`FAMILIES`; usable as a class decorator."""
  if not cls.NAME:
    raise ValueError(f"{cls.__name__}: an optimizer family needs a NAME.")
  if FAMILIES.get(cls.NAME, cls) is not cls:
    raise ValueError(f"optimizer family {cls.NAME!r} is already registered ({FAMILIES[cls.NAME].__name__}).")
  FAMILIES[cls.NAME] = cls
  return cls


def family(name: str, where: str = "optim.name") -> type[OptimizerSpec]:
  """The spec class registered as ``name``."""
  if name not in FAMILIES:
    raise ValueError(f"{where} must be one of {tuple(FAMILIES)}, got {name!r}.")
  return FAMILIES[name]


def names() -> list[str]:
  return list(FAMILIES)


def unknown_field_error(cls: type[OptimizerSpec], key: str, where: str) -> KeyError:
  return KeyError(f"{where}: optimizer {cls.NAME!r} has no field {key!r}; its fields: "
                  f"{sorted(['name'] + cls.field_names())}.")


def with_overrides(spec: OptimizerSpec, overrides: Mapping[str, Any], where: str) -> OptimizerSpec:
  """``spec`` with ``overrides`` applied; ``name`` switches the family, keeping the values of the fields both
  families have (η, its schedule, λ, the decay window and mask, and e.g. ``momentum`` from ``sgd`` to ``fixnorm``).

  A field the (new) family lacks raises ``KeyError`` naming ``where`` and the family's fields.
  """
  overrides = dict(overrides)
  cls = family(overrides.pop("name"), f"{where}.name") if "name" in overrides else type(spec)
  for key in overrides:
    if key not in cls.field_names():
      raise unknown_field_error(cls, key, where)
  if cls is type(spec):
    return dataclasses.replace(spec, **overrides)
  shared = set(cls.field_names()) & set(type(spec).field_names())
  return cls(**{**{k: getattr(spec, k) for k in shared}, **overrides})


def from_dict(data: Mapping[str, Any], where: str = "optim") -> OptimizerSpec:
  """The spec of ``{"name": family, field: value, ...}`` (as in ``config.json``)."""
  data = dict(data)
  cls = family(data.pop("name", "sgd"), f"{where}.name")
  for key in data:
    if key not in cls.field_names():
      raise unknown_field_error(cls, key, where)
  return cls(**data)


__all__ = ["Adam", "AdamBuffers", "AdamH", "AdamP", "AdamS", "RotationalAdamW", "RotationalSGD", "SGDP", "SGDS", "DECAY_MASK_PRESETS", "FAMILIES", "FixNorm", "GradResult", "KFAC", "LR_SCHEDULES",
           "OptimizerSpec",
           "Rates", "SGD", "build", "decay_mask", "decay_mask_spec", "family", "from_dict", "names", "register",
           "with_overrides"]
