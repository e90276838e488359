"""``adams`` / ``sgds``: stable weight decay (``wd_optax.adams``, ``wd_optax.sgds``; Xie et al. 2023)."""

from __future__ import annotations

import dataclasses

import optax

import wd_optax
from experiments.optimizers import base


@dataclasses.dataclass(frozen=True)
class AdamS(base.OptimizerSpec):
  """``wd_optax.adams``: Adam with the decay η_tλ/√v̄_t·w, v̄_t the mean of v̂ over every parameter.

  Attributes (besides :class:`~experiments.optimizers.base.OptimizerSpec`'s):
    b1, b2, eps: Adam's moments and denominator offset.
  """
  NAME = "adams"
  KIND = "adam"
  learning_rate: float = dataclasses.field(default=1e-3, metadata=base.NONNEGATIVE)
  b1: float = dataclasses.field(default=0.9, metadata=base.UNIT_OPEN)
  b2: float = dataclasses.field(default=0.999, metadata=base.UNIT_OPEN)
  eps: float = dataclasses.field(default=1e-8, metadata=base.POSITIVE)

  def build(self, traced) -> optax.GradientTransformation:
    return wd_optax.adams(traced["learning_rate"], b1=self.b1, b2=self.b2, eps=self.eps,
                          weight_decay=traced["weight_decay"], mask=self.mask())


@dataclasses.dataclass(frozen=True)
class SGDS(base.OptimizerSpec):
  """``wd_optax.sgds``: SGD with momentum and the decoupled decay η_tλ/(1 − μ)·w.

  Attributes (besides :class:`~experiments.optimizers.base.OptimizerSpec`'s):
    momentum: heavy-ball μ (0: none, and no 1/(1 − μ)).
    nesterov: Nesterov momentum.
  """
  NAME = "sgds"
  momentum: float = dataclasses.field(default=0.9, metadata=base.UNIT_OPEN)
  nesterov: bool = False

  def build(self, traced) -> optax.GradientTransformation:
    return wd_optax.sgds(traced["learning_rate"], momentum=self.momentum or None, nesterov=self.nesterov,
                         weight_decay=traced["weight_decay"], mask=self.mask())
