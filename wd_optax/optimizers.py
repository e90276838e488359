"""Complete optimizers with the decay built in: every placement of :mod:`wd_optax` behind one argument.

Each is an ``optax.chain`` of the library's transforms, so what an optimizer does is readable from the
chain it returns; use the transforms directly for anything these do not cover.
"""

from __future__ import annotations

from typing import Any

import optax

from wd_optax import _checks
from wd_optax.coupled import add_l2, scale_by_adam_l2
from wd_optax.decoupled import decoupled_decay

__all__ = ["sgd", "adam", "SGD_DECAYS", "ADAM_DECAYS"]

SGD_DECAYS = ("l2", "decoupled")
ADAM_DECAYS = ("l2", "decoupled", "l2_outside_momentum")


def _check_coupling_use(decay: str, coupling: str, peak_learning_rate: Any, cautious: bool = False) -> None:
  _checks.check_flag(cautious, "cautious")
  if decay != "decoupled" and cautious:
    raise ValueError(
        f"cautious=True only applies to decay='decoupled' (it masks the decay step, which an L2 term "
        f"inside the gradient does not have), got decay={decay!r}.")
  if decay != "decoupled" and (coupling != "lr" or peak_learning_rate is not None):
    raise ValueError(
        f"coupling and peak_learning_rate only apply to decay='decoupled', got decay={decay!r} with "
        f"coupling={coupling!r}, peak_learning_rate={peak_learning_rate!r}.")


def sgd(
    learning_rate: optax.ScalarOrSchedule,
    *,
    momentum: float | None = 0.9,
    nesterov: bool = False,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    decay: str = "l2",
    coupling: str = "lr",
    peak_learning_rate: float | None = None,
    mask: Any = None,
    cautious: bool = False,
) -> optax.GradientTransformation:
  r"""SGD with (Nesterov) momentum and weight decay placed as ``decay`` says.

  ``decay="l2"`` puts :math:`\lambda w` inside the momentum buffer (Zhang et al.'s SGD):

  .. math::
    b_t = \mu b_{t-1} + g_t + \lambda_t w_t, \qquad w_{t+1} = w_t - \eta_t b_t;

  ``decay="decoupled"`` decays after the momentum step, with :math:`c_t` from ``coupling`` (see
  :func:`wd_optax.decoupled_decay`):

  .. math::
    b_t = \mu b_{t-1} + g_t, \qquad w_{t+1} = w_t - \eta_t b_t - c_t \lambda_t w_t.

  Args:
    learning_rate: :math:`\eta`, a number or an optax schedule.
    momentum: :math:`\mu`; ``None`` for plain SGD without a momentum buffer.
    nesterov: use Nesterov momentum.
    weight_decay: :math:`\lambda`, a number >= 0 or a schedule (e.g. :mod:`wd_optax.schedules`).
    decay: ``"l2"`` or ``"decoupled"``.
    coupling: for ``decay="decoupled"``: ``"lr"``, ``"schedule"``, ``"independent"`` or ``"corrected"``.
    peak_learning_rate: :math:`\eta_{\max}` for the ``"schedule"`` and ``"corrected"`` couplings.
    mask: which leaves to decay (see :mod:`wd_optax.masks`).
    cautious: for ``decay="decoupled"``: cautious weight decay, only where the step and the weight agree
      in sign (see :func:`wd_optax.decoupled_decay`); with another ``decay`` it is an error.

  Returns:
    An ``optax.GradientTransformation``.

  Example:
    >>> import jax.numpy as jnp, optax, wd_optax
    >>> tx = wd_optax.sgd(0.1, weight_decay=5e-4, mask=wd_optax.masks.kernels())
    >>> params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}
    >>> grads = {"kernel": jnp.zeros((2, 2)), "bias": jnp.zeros(2)}
    >>> updates, state = tx.update(grads, tx.init(params), params)
    >>> updates["bias"].tolist(), round(float(updates["kernel"][0, 0]), 8)
    ([-0.0, -0.0], -5e-05)

  References:
    Zhang, Wang, Xu, Grosse. *Three Mechanisms of Weight Decay Regularization.* ICLR 2019.
  """
  _checks.check_choice(decay, "decay", SGD_DECAYS)
  _checks.check_rate(learning_rate, "learning_rate")
  _check_coupling_use(decay, coupling, peak_learning_rate, cautious)
  _checks.check_number(momentum, "momentum", unit_interval=True, allow_none=True,
                       what="a number in [0, 1) or None")
  momentum_step = [] if momentum is None else [optax.trace(decay=momentum, nesterov=nesterov)]
  if decay == "l2":
    return optax.chain(
        add_l2(weight_decay, mask=mask),
        *momentum_step,
        optax.scale_by_learning_rate(learning_rate))
  return optax.chain(
      *momentum_step,
      optax.scale_by_learning_rate(learning_rate),
      decoupled_decay(weight_decay, coupling=coupling, learning_rate=learning_rate,
                      peak_learning_rate=peak_learning_rate, mask=mask, cautious=cautious))


def adam(
    learning_rate: optax.ScalarOrSchedule,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    decay: str = "decoupled",
    coupling: str = "lr",
    peak_learning_rate: float | None = None,
    mask: Any = None,
    cautious: bool = False,
) -> optax.GradientTransformation:
  r"""Adam with weight decay placed as ``decay`` says.

  * ``"decoupled"``: :math:`w_{t+1} = w_t - \eta_t \hat m_t/(\sqrt{\hat v_t}+\epsilon) - c_t\lambda_t w_t`;
    with ``coupling="lr"`` this is ``optax.adamw``.
  * ``"l2"``: Adam on :math:`g_t + \lambda_t w_t` (both moments see the L2 gradient).
  * ``"l2_outside_momentum"``: L2 kept out of the first moment but preconditioned,
    :math:`u_t = \hat m_t/(\sqrt{\hat v_t}+\epsilon) + \lambda_t w_t/(\sqrt{\hat v_t}+\epsilon)` with
    :math:`v` fed by :math:`g_t + \lambda_t w_t`: :func:`wd_optax.scale_by_adam_l2` with
    (first, second, preconditioned) = (False, True, True).

  Args:
    learning_rate: :math:`\eta`, a number or an optax schedule.
    b1: decay of the first-moment average.
    b2: decay of the second-moment average.
    eps: added to :math:`\sqrt{\hat v}`.
    weight_decay: :math:`\lambda`, a number >= 0 or a schedule.
    decay: ``"decoupled"``, ``"l2"`` or ``"l2_outside_momentum"``.
    coupling: for ``decay="decoupled"``: ``"lr"``, ``"schedule"``, ``"independent"`` or ``"corrected"``.
    peak_learning_rate: :math:`\eta_{\max}` for the ``"schedule"`` and ``"corrected"`` couplings.
    mask: which leaves to decay (see :mod:`wd_optax.masks`).
    cautious: for ``decay="decoupled"``: cautious weight decay, only where the step and the weight agree
      in sign (see :func:`wd_optax.decoupled_decay`); with another ``decay`` it is an error.

  Returns:
    An ``optax.GradientTransformation``.

  Example:
    >>> import jax.numpy as jnp, optax, wd_optax
    >>> tx = wd_optax.adam(1e-3, weight_decay=1e-2)     # the same steps as optax.adamw(1e-3, weight_decay=1e-2)
    >>> params = {"w": jnp.ones(3)}
    >>> updates, state = tx.update({"w": jnp.ones(3)}, tx.init(params), params)
    >>> [round(u, 7) for u in updates["w"].tolist()]
    [-0.00101, -0.00101, -0.00101]

  References:
    Loshchilov & Hutter. *Decoupled Weight Decay Regularization.* ICLR 2019.
    Bjorck, Weinberger, Gomes. *Understanding Decoupled and Early Weight Decay.* AAAI 2021.
    Zhang, Wang, Xu, Grosse. *Three Mechanisms of Weight Decay Regularization.* ICLR 2019.
  """
  _checks.check_choice(decay, "decay", ADAM_DECAYS)
  _checks.check_rate(learning_rate, "learning_rate")
  _checks.check_number(b1, "b1", unit_interval=True)
  _checks.check_number(b2, "b2", unit_interval=True)
  _checks.check_number(eps, "eps")
  _check_coupling_use(decay, coupling, peak_learning_rate, cautious)
  if decay == "decoupled":
    return optax.chain(
        optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
        optax.scale_by_learning_rate(learning_rate),
        decoupled_decay(weight_decay, coupling=coupling, learning_rate=learning_rate,
                        peak_learning_rate=peak_learning_rate, mask=mask, cautious=cautious))
  in_first = decay == "l2"
  return optax.chain(
      scale_by_adam_l2(weight_decay, b1=b1, b2=b2, eps=eps, l2_in_first_moment=in_first,
                       l2_in_second_moment=True, l2_preconditioned=not in_first, mask=mask),
      optax.scale_by_learning_rate(learning_rate))
