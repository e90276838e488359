"""``fixnorm``: SGD with momentum and the weight norms held fixed instead of decayed (``wd_optax.fixnorm``)."""

from __future__ import annotations

import dataclasses
from typing import Any

import optax

import wd_optax
from experiments.optimizers import base


@dataclasses.dataclass(frozen=True)
class FixNorm(base.OptimizerSpec):
  """``wd_optax.fixnorm`` (Zhou, Sun & Zhong), with optional coupled L2 in front.

  The scale-invariant leaves are held at their initial norms, the classifier kernel at ``classifier_norm``;
  with λ > 0 coupled L2 on ``decay_mask`` is added before it (FixNorm's F3 ablation: decay on top should change
  nothing); with λ = 0 ``add_l2`` adds 0 and the chain is FixNorm exactly.

  Attributes (besides :class:`~experiments.optimizers.base.OptimizerSpec`'s):
    momentum: heavy-ball μ (0: none).
    nesterov: Nesterov momentum.
    classifier_norm: the norm c > 0 at which the classifier kernel is held (traced, so arms of different c
      share one program).
    classifier: the classifier leaves, as a mask field (regexes, see ``decay_mask``).
    scale_invariant: the leaves held at their initial norms (regexes; default: every kernel but the
      classifier's, which on the harness's BatchNorm models feed a normalisation without affine parameters).
  """
  NAME = "fixnorm"
  TRACED = base.OptimizerSpec.TRACED + ("classifier_norm",)
  momentum: float = dataclasses.field(default=0.9, metadata=base.UNIT_OPEN)
  nesterov: bool = False
  classifier_norm: float = dataclasses.field(default=1.0, metadata=base.POSITIVE)
  classifier: Any = dataclasses.field(default_factory=lambda: [r"^classifier/kernel$"], metadata=base.MASK)
  scale_invariant: Any = dataclasses.field(
      default_factory=lambda: {"include": ["kernel$"], "exclude": ["classifier"]}, metadata=base.MASK)

  def build(self, traced) -> optax.GradientTransformation:
    projected = wd_optax.fixnorm(
        traced["learning_rate"], classifier_norm=traced["classifier_norm"],
        classifier_mask=base.decay_mask(self.classifier), scale_invariant_mask=base.decay_mask(self.scale_invariant),
        momentum=self.momentum or None, nesterov=self.nesterov)
    return optax.chain(wd_optax.add_l2(traced["weight_decay"], mask=self.mask()), projected)
