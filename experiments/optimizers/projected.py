"""``adamp`` / ``sgdp``: the step's radial part removed on weights that look scale-invariant (``wd_optax.adamp``,
``wd_optax.sgdp``; Heo et al. 2021)."""

from __future__ import annotations

import dataclasses
from typing import Any

import optax

import wd_optax
from experiments.optimizers import base


def _projection_mask(value: Any):
  # None: the library's default, every leaf with at least two axes (the preset "all" compiles to None too).
  return base.decay_mask(value)


@dataclasses.dataclass(frozen=True)
class AdamP(base.OptimizerSpec):
  """``wd_optax.adamp``: AdamW whose step loses its radial part where the scale-invariance test passes, with the
  decay there multiplied by ``wd_ratio``.

  Attributes (besides :class:`~experiments.optimizers.base.OptimizerSpec`'s):
    b1, b2, eps: Adam's moments and denominator offset.
    delta: the cosine threshold δ of the scale-invariance test.
    wd_ratio: the decay multiplier on the projected leaves.
    coupling: decoupled-decay coupling (``lr`` | ``schedule`` | ``independent`` | ``corrected``).
    projection_mask: the leaves that may be projected (a mask field; ``all``: every leaf with two axes or more).
  """
  NAME = "adamp"
  KIND = "adam"
  learning_rate: float = dataclasses.field(default=1e-3, metadata=base.NONNEGATIVE)
  b1: float = dataclasses.field(default=0.9, metadata=base.UNIT_OPEN)
  b2: float = dataclasses.field(default=0.999, metadata=base.UNIT_OPEN)
  eps: float = dataclasses.field(default=1e-8, metadata=base.POSITIVE)
  delta: float = dataclasses.field(default=0.1, metadata=base.POSITIVE)
  wd_ratio: float = dataclasses.field(default=0.1, metadata=base.NONNEGATIVE)
  coupling: str = dataclasses.field(default="lr", metadata=base.choices(*base.COUPLINGS))
  projection_mask: Any = dataclasses.field(default="all", metadata=base.MASK)

  def build(self, traced) -> optax.GradientTransformation:
    peak = traced["peak_learning_rate"] if self.coupling in ("schedule", "corrected") else None
    return wd_optax.adamp(traced["learning_rate"], b1=self.b1, b2=self.b2, eps=self.eps,
                          weight_decay=traced["weight_decay"], delta=self.delta, wd_ratio=self.wd_ratio,
                          coupling=self.coupling, peak_learning_rate=peak, mask=self.mask(),
                          projection_mask=_projection_mask(self.projection_mask))


@dataclasses.dataclass(frozen=True)
class SGDP(base.OptimizerSpec):
  """``wd_optax.sgdp``: SGD with momentum whose step loses its radial part where the scale-invariance test passes;
  the decay is decoupled, η_tλ/(1 − μ)·w, times ``wd_ratio`` on projected leaves.

  Attributes (besides :class:`~experiments.optimizers.base.OptimizerSpec`'s):
    momentum: heavy-ball μ (0: none).
    nesterov: Nesterov momentum.
    delta, wd_ratio, eps: the projection's (see :class:`AdamP`).
    projection_mask: the leaves that may be projected (a mask field).
  """
  NAME = "sgdp"
  momentum: float = dataclasses.field(default=0.9, metadata=base.UNIT_OPEN)
  nesterov: bool = False
  delta: float = dataclasses.field(default=0.1, metadata=base.POSITIVE)
  wd_ratio: float = dataclasses.field(default=0.1, metadata=base.NONNEGATIVE)
  eps: float = dataclasses.field(default=1e-8, metadata=base.POSITIVE)
  projection_mask: Any = dataclasses.field(default="all", metadata=base.MASK)

  def build(self, traced) -> optax.GradientTransformation:
    return wd_optax.sgdp(traced["learning_rate"], momentum=self.momentum or None, nesterov=self.nesterov,
                         weight_decay=traced["weight_decay"], delta=self.delta, wd_ratio=self.wd_ratio,
                         eps=self.eps, mask=self.mask(), projection_mask=_projection_mask(self.projection_mask))
