"""``rotational_adamw`` / ``rotational_sgd`` / ``adamh``: the angular update imposed instead of reached through
decay (``wd_optax.rotational_adamw``, ``wd_optax.rotational_sgd``, Kosson et al. 2024; ``wd_optax.adamh``)."""

from __future__ import annotations

import dataclasses

import optax

import wd_optax
from experiments.optimizers import base


@dataclasses.dataclass(frozen=True)
class RotationalAdamW(base.OptimizerSpec):
  """``wd_optax.rotational_adamw``: every neuron of a matrix in ``decay_mask`` turns by η_r = √(2η_tλ_t(1−β₁)/(1+β₁))
  per step at a fixed norm; other leaves take AdamW's step.

  Attributes (besides :class:`~experiments.optimizers.base.OptimizerSpec`'s):
    b1, b2, eps: Adam's (β₁ also enters η_r).
    update_norm_decay: the decay of the moving average of the squared perpendicular update.
    per_channel: rotate each output channel (neuron) separately, or the whole leaf.
  """
  NAME = "rotational_adamw"
  KIND = "adam"
  learning_rate: float = dataclasses.field(default=1e-3, metadata=base.NONNEGATIVE)
  b1: float = dataclasses.field(default=0.9, metadata=base.UNIT_OPEN)
  b2: float = dataclasses.field(default=0.999, metadata=base.UNIT_OPEN)
  eps: float = dataclasses.field(default=1e-8, metadata=base.POSITIVE)
  update_norm_decay: float = dataclasses.field(default=0.9, metadata=base.UNIT_OPEN)
  per_channel: bool = True

  def build(self, traced) -> optax.GradientTransformation:
    return wd_optax.rotational_adamw(traced["learning_rate"], traced["weight_decay"], b1=self.b1, b2=self.b2,
                                     eps=self.eps, update_norm_decay=self.update_norm_decay,
                                     per_channel=self.per_channel, mask=self.mask())


@dataclasses.dataclass(frozen=True)
class RotationalSGD(base.OptimizerSpec):
  """``wd_optax.rotational_sgd``: neurons turn by η_r = √(2η_tλ_t/(1+μ)) per step at a fixed norm; other leaves
  take SGD with momentum and coupled L2.

  Attributes (besides :class:`~experiments.optimizers.base.OptimizerSpec`'s):
    momentum: heavy-ball μ (also enters η_r).
    update_norm_decay, per_channel: as for :class:`RotationalAdamW`.
  """
  NAME = "rotational_sgd"
  momentum: float = dataclasses.field(default=0.9, metadata=base.UNIT_OPEN)
  update_norm_decay: float = dataclasses.field(default=0.9, metadata=base.UNIT_OPEN)
  per_channel: bool = True

  def build(self, traced) -> optax.GradientTransformation:
    return wd_optax.rotational_sgd(traced["learning_rate"], traced["weight_decay"], momentum=self.momentum,
                                   update_norm_decay=self.update_norm_decay, per_channel=self.per_channel,
                                   mask=self.mask())


@dataclasses.dataclass(frozen=True)
class AdamH(base.OptimizerSpec):
  """``wd_optax.adamh``: Adam's direction, a step of relative size η_t, each matrix in ``decay_mask`` back on its
  initial sphere; there is no decay (λ must be 0), η is the angle per step.

  Attributes (besides :class:`~experiments.optimizers.base.OptimizerSpec`'s):
    b1, b2, eps: Adam's.
  """
  NAME = "adamh"
  KIND = "adam"
  learning_rate: float = dataclasses.field(default=1e-2, metadata=base.NONNEGATIVE)
  b1: float = dataclasses.field(default=0.9, metadata=base.UNIT_OPEN)
  b2: float = dataclasses.field(default=0.999, metadata=base.UNIT_OPEN)
  eps: float = dataclasses.field(default=1e-8, metadata=base.POSITIVE)

  def check(self, where) -> None:
    if self.weight_decay:
      raise ValueError(f"{where('weight_decay')} ({self.weight_decay}) must be 0: adamh keeps each matrix on its "
                       "sphere and has no decay; its learning rate is the angle per step.")

  def build(self, traced) -> optax.GradientTransformation:
    return wd_optax.adamh(traced["learning_rate"], b1=self.b1, b2=self.b2, eps=self.eps, mask=self.mask())
