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
from experiments import config as config_lib
from experiments.config import OptimConfig

Rates = Mapping[str, jax.Array]


def decay_mask(spec: Any) -> Any:
  """The ``wd_optax.masks`` mask of ``optim.decay_mask`` (a preset name, a list of include regexes or a dict).

  The spec (:func:`experiments.config.decay_mask_spec`) is compiled by ``wd_optax.masks``: its include regexes
  by ``include``, its exclude regexes by ``exclude``, both by ``all_of``. ``None`` (every parameter) when it
  has neither, as for ``all``.
  """
  spec = config_lib.decay_mask_spec(spec)
  parts = []
  if spec["include"] is not None:
    parts.append(wd_optax.masks.include(*spec["include"]))
  if spec["exclude"]:
    parts.append(wd_optax.masks.exclude(*spec["exclude"]))
  if not parts:
    return None
  return parts[0] if len(parts) == 1 else wd_optax.masks.all_of(*parts)


def lr_schedule(optim: OptimConfig, total_steps: int) -> optax.Schedule:
  """Shape of the learning-rate schedule (peak 1), an optax schedule of the step count.

  ``constant``: 1; ``cosine``: ½(1 + cos(π·(t − W)/(T − W))) from step W = ``warmup_steps`` to T =
  ``total_steps`` (0 from T on). With W > 0 the first W steps are a linear warm-up (t + 1)/W, reaching 1 at step
  W − 1 (``optax.linear_schedule``), joined to the rest at step W (``optax.join_schedules``).

  The cosine is ``optax.cosine_decay_schedule`` with ``decay_steps=1`` evaluated at the fraction of the decay
  done, (t − W)/(T − W): it then computes π·((t − W)/(T − W)), bit for bit what the harness computed before it
  used optax, where ``decay_steps=T − W`` at t − W would compute π·(t − W)/(T − W), one float32 ulp off at a
  third of the steps, and change every published run in its last digits. The warm-up is optax's interpolation
  1/W + (1 − 1/W)·t/(W − 1): (t + 1)/W up to one float32 ulp (no published study warms up).
  """
  if optim.lr_schedule == "constant":
    main = optax.constant_schedule(1.0)
  elif optim.lr_schedule == "cosine":
    span = max(total_steps - optim.warmup_steps, 1)
    unit_cosine = optax.cosine_decay_schedule(1.0, decay_steps=1)
    main = lambda count: unit_cosine(jnp.asarray(count, jnp.float32) / span)
  else:
    raise ValueError(f"optim.lr_schedule must be 'constant' or 'cosine', got {optim.lr_schedule!r}.")
  warmup = optim.warmup_steps
  if warmup == 0:
    return main
  return optax.join_schedules([optax.linear_schedule(1.0 / warmup, 1.0, warmup - 1), main], [warmup])


def decay_window(hp: Rates, total_steps: int) -> optax.Schedule:
  """The 0/1 gate ``wd_optax.schedules.window`` of the member's decay window.

  Its edges are the steps round(``decay_start``·T) and round(``decay_end``·T), T = ``total_steps``: traced,
  so arms that only differ in when decay acts (none / always / early / late) share one vmapped program.
  """
  first = jnp.round(hp["decay_start"] * total_steps).astype(jnp.int32)
  stop = jnp.round(hp["decay_end"] * total_steps).astype(jnp.int32)
  return wd_optax.schedules.window(1.0, first, stop)


def rates_at(optim: OptimConfig, hp: Rates, step: jax.Array, total_steps: int) -> dict[str, jax.Array]:
  """η_t, λ_t and the study-hook values of one member at ``step``.

  The decay window gates the two decay rates only; ``classifier_norm``, ``batch_norm`` and
  ``decoupled_fraction`` are passed through unchanged (they are not rates). ``lr_norm_sq``'s per-layer
  factor is applied by the step.
  """
  lr = hp["learning_rate"] * lr_schedule(optim, total_steps)(step)
  gate = decay_window(hp, total_steps)(step)
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
