"""``adam``: Adam with coupled L2, L2 kept out of the first moment, or decoupled decay (``wd_optax.adam``)."""

from __future__ import annotations

import dataclasses

import optax

import wd_optax
from experiments.optimizers import base


@dataclasses.dataclass(frozen=True)
class Adam(base.OptimizerSpec):
  """``wd_optax.adam``; ``decay`` says where λ enters.

  Attributes (besides :class:`~experiments.optimizers.base.OptimizerSpec`'s):
    b1, b2, eps: Adam's moments and denominator offset.
    decay: ``l2`` (λw added to the gradient, in both moments), ``l2_outside_momentum`` (λw preconditioned but
      kept out of the first moment) or ``decoupled`` (AdamW).
      ``l2+decoupled``: coupled L2 with λ and decoupled decay with ``decoupled_weight_decay`` after the step.
    coupling: decoupled-decay coupling (``lr`` | ``schedule`` | ``independent`` | ``corrected``).
    decoupled_weight_decay: λ' of ``decay="l2+decoupled"`` (traced, gated by the decay window like λ).
    cautious: cautious weight decay (Chen et al. 2025, ``wd_optax.decoupled_decay(cautious=True)``): a coordinate
      decays only where the step and the weight agree in sign. With ``decay="decoupled"`` the decay is cautious;
      with ``decay="l2+decoupled"`` the program gets a third, cautious decoupled decay at rate
      ``cautious_weight_decay`` after the decoupled part, so that Adam + L2, AdamW and cautious AdamW (each with
      the other two rates 0) share one program (its sign test reads the step with the other decays in it, which
      is the step alone when their rates are 0).
    cautious_weight_decay: λ'' of ``decay="l2+decoupled"`` with ``cautious=True`` (traced, gated like λ).
  """
  NAME = "adam"
  KIND = "adam"
  TRACED = base.OptimizerSpec.TRACED + base.MIXED_TRACED + ("cautious_weight_decay",)
  GATED = ("weight_decay",) + base.MIXED_TRACED + ("cautious_weight_decay",)
  learning_rate: float = dataclasses.field(default=1e-3, metadata=base.NONNEGATIVE)
  b1: float = dataclasses.field(default=0.9, metadata=base.UNIT_OPEN)
  b2: float = dataclasses.field(default=0.999, metadata=base.UNIT_OPEN)
  eps: float = dataclasses.field(default=1e-8, metadata=base.POSITIVE)
  decay: str = dataclasses.field(default="l2", metadata=base.choices(*wd_optax.optimizers.ADAM_DECAYS,
                                                                      base.L2_AND_DECOUPLED))
  coupling: str = dataclasses.field(default="lr", metadata=base.choices(*base.COUPLINGS))
  decoupled_weight_decay: float = dataclasses.field(default=0.0, metadata=base.NONNEGATIVE)
  cautious: bool = False
  cautious_weight_decay: float = dataclasses.field(default=0.0, metadata=base.NONNEGATIVE)

  def check(self, where) -> None:
    base.check_decoupled_part(self, where)
    base.check_cautious(self, where, ("decoupled", base.L2_AND_DECOUPLED))
    if self.cautious_weight_decay and not (self.decay == base.L2_AND_DECOUPLED and self.cautious):
      raise ValueError(f"{where('cautious_weight_decay')} ({self.cautious_weight_decay}) is read only with "
                       f"decay={base.L2_AND_DECOUPLED!r} and cautious=true; {where('decay')} is {self.decay!r}, "
                       f"{where('cautious')} is {str(self.cautious).lower()} (for cautious AdamW alone use "
                       "decay='decoupled', cautious=true).")

  def build(self, traced) -> optax.GradientTransformation:
    mixed = self.decay == base.L2_AND_DECOUPLED
    peak = traced["peak_learning_rate"] if self.coupling in ("schedule", "corrected") and not mixed else None
    tx = wd_optax.adam(traced["learning_rate"], b1=self.b1, b2=self.b2, eps=self.eps,
                       weight_decay=traced["weight_decay"], decay="l2" if mixed else self.decay,
                       coupling=self.coupling, peak_learning_rate=peak, mask=self.mask(),
                       cautious=self.cautious and not mixed)
    if not mixed:
      return tx
    tx = base.with_decoupled_part(self, tx, traced, self.coupling)
    if not self.cautious:
      return tx
    peak = traced["peak_learning_rate"] if self.coupling in ("schedule", "corrected") else None
    return optax.chain(tx, wd_optax.decoupled_decay(traced["cautious_weight_decay"], coupling=self.coupling,
                                                    learning_rate=traced["learning_rate"], peak_learning_rate=peak,
                                                    mask=self.mask(), cautious=True))
