"""``sgd``: heavy-ball SGD with coupled L2 or decoupled decay (``wd_optax.sgd``)."""

from __future__ import annotations

import dataclasses

import optax

import wd_optax
from experiments.optimizers import base


@dataclasses.dataclass(frozen=True)
class SGD(base.OptimizerSpec):
  """``wd_optax.sgd``: w ← w − η_t(μ-momentum of g + λw) (``decay="l2"``) or w ← w − η_t·m − η_tλw (decoupled).

  Attributes (besides :class:`~experiments.optimizers.base.OptimizerSpec`'s):
    momentum: heavy-ball μ (0: none).
    nesterov: Nesterov momentum.
    decay: where λ enters: ``l2`` (coupled, inside the momentum buffer), ``decoupled``, or ``l2+decoupled``:
      coupled L2 with λ and decoupled decay with ``decoupled_weight_decay`` after the step.
    coupling: decoupled-decay coupling (``lr`` | ``schedule`` | ``independent`` | ``corrected``).
    decoupled_weight_decay: λ' of ``decay="l2+decoupled"`` (traced, gated by the decay window like λ).
    cautious: cautious weight decay (Chen et al. 2025, ``wd_optax.decoupled_decay(cautious=True)``): a coordinate
      decays only where the step and the weight agree in sign; ``decay="decoupled"`` only.
  """
  NAME = "sgd"
  TRACED = base.OptimizerSpec.TRACED + base.MIXED_TRACED
  GATED = ("weight_decay",) + base.MIXED_TRACED
  momentum: float = dataclasses.field(default=0.9, metadata=base.UNIT_OPEN)
  nesterov: bool = False
  decay: str = dataclasses.field(default="l2", metadata=base.choices("l2", "decoupled", base.L2_AND_DECOUPLED))
  coupling: str = dataclasses.field(default="lr", metadata=base.choices(*base.COUPLINGS))
  decoupled_weight_decay: float = dataclasses.field(default=0.0, metadata=base.NONNEGATIVE)
  cautious: bool = False

  def check(self, where) -> None:
    base.check_decoupled_part(self, where)
    base.check_cautious(self, where)

  def build(self, traced) -> optax.GradientTransformation:
    mixed = self.decay == base.L2_AND_DECOUPLED
    peak = traced["peak_learning_rate"] if self.coupling in ("schedule", "corrected") and not mixed else None
    tx = wd_optax.sgd(traced["learning_rate"], momentum=self.momentum or None, nesterov=self.nesterov,
                      weight_decay=traced["weight_decay"], decay="l2" if mixed else self.decay,
                      coupling=self.coupling, peak_learning_rate=peak, mask=self.mask(),
                      cautious=self.cautious)
    return base.with_decoupled_part(self, tx, traced, self.coupling) if mixed else tx
