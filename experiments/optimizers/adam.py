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
      decays only where the step and the weight agree in sign; ``decay="decoupled"`` only.
  """
  NAME = "adam"
  KIND = "adam"
  TRACED = base.OptimizerSpec.TRACED + base.MIXED_TRACED
  GATED = ("weight_decay",) + base.MIXED_TRACED
  learning_rate: float = dataclasses.field(default=1e-3, metadata=base.NONNEGATIVE)
  b1: float = dataclasses.field(default=0.9, metadata=base.UNIT_OPEN)
  b2: float = dataclasses.field(default=0.999, metadata=base.UNIT_OPEN)
  eps: float = dataclasses.field(default=1e-8, metadata=base.POSITIVE)
  decay: str = dataclasses.field(default="l2", metadata=base.choices(*wd_optax.optimizers.ADAM_DECAYS,
                                                                      base.L2_AND_DECOUPLED))
  coupling: str = dataclasses.field(default="lr", metadata=base.choices(*base.COUPLINGS))
  decoupled_weight_decay: float = dataclasses.field(default=0.0, metadata=base.NONNEGATIVE)
  cautious: bool = False

  def check(self, where) -> None:
    base.check_decoupled_part(self, where)
    base.check_cautious(self, where)

  def build(self, traced) -> optax.GradientTransformation:
    mixed = self.decay == base.L2_AND_DECOUPLED
    peak = traced["peak_learning_rate"] if self.coupling in ("schedule", "corrected") and not mixed else None
    tx = wd_optax.adam(traced["learning_rate"], b1=self.b1, b2=self.b2, eps=self.eps,
                       weight_decay=traced["weight_decay"], decay="l2" if mixed else self.decay,
                       coupling=self.coupling, peak_learning_rate=peak, mask=self.mask(),
                       cautious=self.cautious)
    return base.with_decoupled_part(self, tx, traced, self.coupling) if mixed else tx
