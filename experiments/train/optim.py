"""From an :class:`~experiments.config.OptimConfig` to an optax transform, one step at a time.

The harness rebuilds the transform inside the jitted step from the *current* rates: η_t and λ_t are computed
from the step count (and, with ``lr_norm_sq``, from the weights) as traced scalars and handed to
``wd_optax.sgd`` / ``wd_optax.adam`` / ``wd_optax.scale_by_adam_l2`` as plain numbers. So every member of a
vmapped population may carry its own η, λ and decay window (:data:`experiments.config.TRACED_FIELDS`, which also
holds the values that studies' own optimizers read, such as FixNorm's classifier norm), and the optimizer state
has the same structure for all of them: the rates are not state.

A study that needs a different optimizer (K-FAC, FixNorm) passes its own ``make_tx`` with the same signature
to :class:`experiments.train.Trainer`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax

import wd_optax
from experiments.config import OptimConfig

Rates = Mapping[str, jax.Array]

DECAY_MASKS = ("all", "kernels", "conv", "classifier", "none")


def decay_mask(name: str) -> Any:
  """The ``wd_optax.masks`` mask for ``optim.decay_mask`` = ``name``.

  ``conv`` means "every parameter but the classifier" (Zhang et al.'s ablation decays all layers, the final
  FC only, or all but the final FC); classifier parameters are those whose path contains ``classifier``.
  """
  if name == "all":
    return None
  if name == "kernels":
    return wd_optax.masks.kernels()
  if name == "conv":
    return wd_optax.masks.exclude("classifier")
  if name == "classifier":
    return wd_optax.masks.include("classifier")
  if name == "none":
    return lambda params: jax.tree.map(lambda _: False, params)
  raise ValueError(f"optim.decay_mask must be one of {DECAY_MASKS}, got {name!r}.")


def decay_gate(step: jax.Array, start: jax.Array, end: jax.Array, total_steps: int) -> jax.Array:
  """1 on the steps ``start·T <= t < end·T`` (fractions of ``T = total_steps``), else 0.

  Equal to ``wd_optax.schedules.window(1, round(start·T), round(end·T))``, but with traced window edges so
  arms that only differ in when decay acts (none / always / early / late) share one vmapped program.
  """
  first = jnp.round(start * total_steps)
  stop = jnp.round(end * total_steps)
  step = jnp.asarray(step, jnp.float32)
  return ((step >= first) & (step < stop)).astype(jnp.float32)


def lr_multiplier(optim: OptimConfig, step: jax.Array, total_steps: int) -> jax.Array:
  """Shape of the learning-rate schedule at ``step`` (peak 1)."""
  step = jnp.asarray(step, jnp.float32)
  if optim.lr_schedule == "constant":
    shape = jnp.ones([], jnp.float32)
  elif optim.lr_schedule == "cosine":
    span = max(total_steps - optim.warmup_steps, 1)
    progress = jnp.clip((step - optim.warmup_steps) / span, 0.0, 1.0)
    shape = 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
  else:
    raise ValueError(f"optim.lr_schedule must be 'constant' or 'cosine', got {optim.lr_schedule!r}.")
  if optim.warmup_steps > 0:
    shape = shape * jnp.minimum(1.0, (step + 1.0) / optim.warmup_steps)
  return shape


def rates_at(optim: OptimConfig, hp: Rates, step: jax.Array, total_steps: int) -> dict[str, jax.Array]:
  """η_t, λ_t and the study-hook values of one member at ``step``.

  The decay window gates the two decay rates only; ``classifier_norm``, ``batch_norm`` and
  ``decoupled_fraction`` are passed through unchanged (they are not rates). ``lr_norm_sq``'s per-layer
  factor is applied by the step.
  """
  lr = hp["learning_rate"] * lr_multiplier(optim, step, total_steps)
  gate = decay_gate(step, hp["decay_start"], hp["decay_end"], total_steps)
  return {
      "learning_rate": lr,
      "weight_decay": hp["weight_decay"] * gate,
      "decoupled_decay": hp["decoupled_decay"] * gate,
      "peak_learning_rate": hp["learning_rate"],
      "classifier_norm": hp["classifier_norm"],
      "batch_norm": hp["batch_norm"],
      "decoupled_fraction": hp["decoupled_fraction"],
  }


def make_tx(optim: OptimConfig, rates: Rates) -> optax.GradientTransformation:
  """The transform for one step, with the rates of that step as (traced) numbers."""
  mask = decay_mask(optim.decay_mask)
  lr = rates["learning_rate"]
  wd = rates["weight_decay"]
  peak = rates["peak_learning_rate"] if optim.coupling in ("schedule", "corrected") else None
  if optim.name == "sgd":
    return wd_optax.sgd(lr, momentum=optim.momentum or None, nesterov=optim.nesterov, weight_decay=wd,
                        decay=optim.decay, coupling=optim.coupling, peak_learning_rate=peak, mask=mask)
  if optim.name == "adam":
    return wd_optax.adam(lr, b1=optim.b1, b2=optim.b2, eps=optim.eps, weight_decay=wd, decay=optim.decay,
                         coupling=optim.coupling, peak_learning_rate=peak, mask=mask)
  if optim.name == "adam_buffers":
    parts = [
        wd_optax.scale_by_adam_l2(
            wd, b1=optim.b1, b2=optim.b2, eps=optim.eps, l2_in_first_moment=optim.l2_in_first_moment,
            l2_in_second_moment=optim.l2_in_second_moment, l2_preconditioned=optim.l2_preconditioned,
            preconditioner_floor=optim.preconditioner_floor, mask=mask),
        optax.scale_by_learning_rate(lr),
    ]
    if optim.decay == "decoupled":
      parts.append(wd_optax.decoupled_decay(rates["decoupled_decay"], coupling=optim.coupling,
                                            learning_rate=lr, peak_learning_rate=peak, mask=mask))
    return optax.chain(*parts)
  raise ValueError(f"optim.name must be 'sgd', 'adam' or 'adam_buffers', got {optim.name!r}.")


MakeTx = Callable[[OptimConfig, Rates], optax.GradientTransformation]
