"""``adam_buffers``: where Adam's L2 term goes, switch by switch (``wd_optax.scale_by_adam_l2``)."""

from __future__ import annotations

import dataclasses

import optax

import wd_optax
from experiments.optimizers import base


@dataclasses.dataclass(frozen=True)
class AdamBuffers(base.OptimizerSpec):
  """``wd_optax.scale_by_adam_l2`` with its three switches, then η_t, then optionally decoupled decay.

  The Bjorck et al. buffer ablation: the L2 term λw in the first moment, in the second moment, preconditioned
  by the second moment or not; with all three on it is Adam on ∇L + λw.

  Attributes (besides :class:`~experiments.optimizers.base.OptimizerSpec`'s):
    b1, b2, eps: Adam's moments and denominator offset.
    l2_in_first_moment, l2_in_second_moment, l2_preconditioned: the switches of ``scale_by_adam_l2``.
    preconditioner_floor: φ of ``scale_by_adam_l2``: the update divides by max(√v̂, φ) + ε, so an L2 term kept
      out of the second moment cannot be divided by ε alone where the loss gradient vanishes (0: the literal
      formula).
    decay: ``l2`` (λ enters through the switches only) or ``decoupled`` (the same, followed by decoupled decay
      with rate ``decoupled_weight_decay``).
    decoupled_weight_decay: the decoupled λ' of ``decay="decoupled"``, w ← w − η_t λ' w after the step (traced,
      gated by the decay window like λ).
    coupling: its coupling (``lr`` | ``schedule`` | ``independent`` | ``corrected``).
  """
  NAME = "adam_buffers"
  KIND = "adam"
  TRACED = base.OptimizerSpec.TRACED + ("decoupled_weight_decay",)
  GATED = ("weight_decay", "decoupled_weight_decay")
  learning_rate: float = dataclasses.field(default=1e-3, metadata=base.NONNEGATIVE)
  b1: float = dataclasses.field(default=0.9, metadata=base.UNIT_OPEN)
  b2: float = dataclasses.field(default=0.999, metadata=base.UNIT_OPEN)
  eps: float = dataclasses.field(default=1e-8, metadata=base.POSITIVE)
  l2_in_first_moment: bool = True
  l2_in_second_moment: bool = True
  l2_preconditioned: bool = False
  preconditioner_floor: float = dataclasses.field(default=0.0, metadata=base.NONNEGATIVE)
  decay: str = dataclasses.field(default="l2", metadata=base.choices("l2", "decoupled"))
  decoupled_weight_decay: float = dataclasses.field(default=0.0, metadata=base.NONNEGATIVE)
  coupling: str = dataclasses.field(default="lr", metadata=base.choices(*base.COUPLINGS))

  def check(self, where) -> None:
    if self.decoupled_weight_decay and self.decay != "decoupled":
      raise ValueError(f"{where('decoupled_weight_decay')} ({self.decoupled_weight_decay}) is read only with "
                       f"decay='decoupled'; {where('decay')} is {self.decay!r}.")

  def build(self, traced) -> optax.GradientTransformation:
    mask, lr = self.mask(), traced["learning_rate"]
    peak = traced["peak_learning_rate"] if self.coupling in ("schedule", "corrected") else None
    parts = [
        wd_optax.scale_by_adam_l2(
            traced["weight_decay"], b1=self.b1, b2=self.b2, eps=self.eps,
            l2_in_first_moment=self.l2_in_first_moment, l2_in_second_moment=self.l2_in_second_moment,
            l2_preconditioned=self.l2_preconditioned, preconditioner_floor=self.preconditioner_floor, mask=mask),
        optax.scale_by_learning_rate(lr),
    ]
    if self.decay == "decoupled":
      parts.append(wd_optax.decoupled_decay(traced["decoupled_weight_decay"], coupling=self.coupling,
                                            learning_rate=lr, peak_learning_rate=peak, mask=mask))
    return optax.chain(*parts)
