"""K-FAC with Zhang et al.'s two weight-decay placements, as one optax chain."""

from __future__ import annotations

from typing import Any, Sequence

import jax
import optax

from wd_optax import _checks
from wd_optax.coupled import add_l2
from wd_optax.decoupled import decoupled_decay
from wd_optax.kfac._preconditioner import scale_by_kfac

__all__ = ["kfac", "DECAYS"]

DECAYS = ("l2", "decoupled")


def kfac(
    learning_rate: optax.ScalarOrSchedule,
    *,
    damping: optax.ScalarOrSchedule,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    decay: str = "decoupled",
    momentum: float | None = 0.9,
    kl_clip: float | None = None,
    ema: float = 0.95,
    inverse_every: int = 20,
    pi_damping: bool = True,
    inverse: str = "cholesky",
    batch_space: bool = False,
    inverse_sharding: jax.sharding.NamedSharding | None = None,
    layers: Sequence[str] | None = None,
    coupling: str = "lr",
    peak_learning_rate: float | None = None,
    mask: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""K-FAC with momentum and weight decay where Zhang et al. put it.

  With :math:`P` the preconditioner of :func:`wd_optax.kfac.scale_by_kfac` (and its optional KL clip),
  ``decay="l2"`` (Zhang's K-FAC-"l2") preconditions the decay with the gradient:

  .. math::
    v_t = \mu v_{t-1} + P(g_t + \lambda_t w_t), \qquad w_{t+1} = w_t - \eta_t v_t;

  ``decay="decoupled"`` (Zhang's K-FAC-"wd") preconditions the gradient only and decays after the
  momentum step, with :math:`c_t = \eta_t` for the default ``coupling="lr"`` (see
  :func:`wd_optax.decoupled_decay` for the other couplings):

  .. math::
    v_t = \mu v_{t-1} + P(g_t), \qquad w_{t+1} = w_t - \eta_t v_t - c_t \lambda_t w_t.

  Args:
    learning_rate: :math:`\eta`, a number or a schedule.
    damping: :math:`\gamma > 0`, a number or a schedule.
    weight_decay: :math:`\lambda`, a number >= 0 or a schedule.
    decay: ``"l2"`` or ``"decoupled"``.
    momentum: :math:`\mu` in ``[0, 1)``, or ``None`` for no momentum buffer.
    kl_clip: :math:`\kappa` of the KL clip (``None``: no clipping).
    ema: factor averaging, see :func:`scale_by_kfac`.
    inverse_every: inverse period, see :func:`scale_by_kfac`.
    pi_damping: π-split damping, see :func:`scale_by_kfac`.
    inverse: ``"cholesky"``, ``"eigh"``, ``"lu"`` or ``"newton_schulz"``, see :func:`scale_by_kfac`.
    batch_space: batch-space preconditioning of wide dense layers, see :func:`scale_by_kfac`; exact only
      on the raw batch gradient, so not with ``decay="l2"``.
    inverse_sharding: split the damped-inverse work over a mesh axis, e.g.
      ``NamedSharding(mesh, PartitionSpec("data"))`` in data-parallel training: each device inverts its
      share of the factors and the inverses are all-gathered; see :func:`scale_by_kfac`.
    layers: registered layer paths, see :func:`scale_by_kfac`.
    coupling: for ``decay="decoupled"``: ``"lr"``, ``"schedule"``, ``"independent"`` or ``"corrected"``.
    peak_learning_rate: :math:`\eta_{\max}` for the ``"schedule"`` and ``"corrected"`` couplings.
    mask: which leaves to decay (see :mod:`wd_optax.masks`).

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update(grads, state, params, *, curvature)``.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from flax import nnx
    >>> from wd_optax import kfac
    >>> model = kfac.Linear(3, 2, rngs=nnx.Rngs(0))
    >>> def loss_fn(model, batch):
    ...   logits = model(batch["x"])
    ...   return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean(), logits
    >>> batch = {"x": jnp.ones((4, 3)), "y": jnp.array([0, 1, 0, 1])}
    >>> tx = kfac.kfac(1e-2, damping=1e-3, weight_decay=1e-2, decay="decoupled")
    >>> optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    >>> (loss, _), grads, curvature = kfac.value_grad_and_curvature(
    ...     loss_fn, model, batch, mode="fisher", key=jax.random.key(0))
    >>> _ = optimizer.update(model, grads, curvature=curvature)
    >>> bool(loss_fn(model, batch)[0] < loss)
    True

  References:
    Zhang, Wang, Xu, Grosse. *Three Mechanisms of Weight Decay Regularization.* ICLR 2019.
    Martens & Grosse. *Optimizing Neural Networks with Kronecker-factored Approximate Curvature.* ICML 2015.
  """
  _checks.check_choice(decay, "decay", DECAYS)
  _checks.check_rate(learning_rate, "learning_rate")
  _checks.check_rate(weight_decay, "weight_decay")
  if decay != "decoupled" and (coupling != "lr" or peak_learning_rate is not None):
    raise ValueError(
        f"coupling and peak_learning_rate only apply to decay='decoupled', got decay={decay!r} with "
        f"coupling={coupling!r}, peak_learning_rate={peak_learning_rate!r}.")
  if batch_space and decay == "l2":
    raise ValueError(
        'kfac(batch_space=True) needs the raw batch gradient, but decay="l2" adds the decay before the '
        'preconditioner: use decay="decoupled" or batch_space=False.')
  _checks.check_number(momentum, "momentum", unit_interval=True, allow_none=True,
                       what="a number in [0, 1) or None")
  precondition = scale_by_kfac(damping, ema=ema, inverse_every=inverse_every, pi_damping=pi_damping,
                               inverse=inverse, batch_space=batch_space, inverse_sharding=inverse_sharding,
                               layers=layers, kl_clip=kl_clip,
                               learning_rate=learning_rate if kl_clip is not None else None)
  momentum_step = [] if momentum is None else [optax.trace(decay=momentum)]
  if decay == "l2":
    return optax.chain(add_l2(weight_decay, mask=mask), precondition, *momentum_step,
                       optax.scale_by_learning_rate(learning_rate))
  return optax.chain(precondition, *momentum_step, optax.scale_by_learning_rate(learning_rate),
                     decoupled_decay(weight_decay, coupling=coupling, learning_rate=learning_rate,
                                     peak_learning_rate=peak_learning_rate, mask=mask))
