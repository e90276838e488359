"""An optimizer family in one file: Lion with decoupled decay (the example of docs/harness.md)."""

import dataclasses

import optax

import wd_optax
from experiments import optimizers
from experiments.optimizers import base


@optimizers.register
@dataclasses.dataclass(frozen=True)
class Lion(base.OptimizerSpec):
  """Lion (Chen et al. 2023): w ← w − η_t (sign(β₁m + (1 − β₁)g) + λw)."""
  NAME = "lion"  # TRACED: learning_rate, weight_decay, decay_start, decay_end (the base's)
  learning_rate: float = dataclasses.field(default=1e-4, metadata=base.NONNEGATIVE)
  b1: float = dataclasses.field(default=0.9, metadata=base.UNIT_OPEN)   # static: part of the program
  b2: float = dataclasses.field(default=0.99, metadata=base.UNIT_OPEN)

  def build(self, traced) -> optax.GradientTransformation:
    lr = traced["learning_rate"]   # η_t: the member's η after the schedule
    return optax.chain(optax.scale_by_lion(self.b1, self.b2), optax.scale_by_learning_rate(lr),
                       wd_optax.decoupled_decay(traced["weight_decay"], learning_rate=lr, mask=self.mask()))
