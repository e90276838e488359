r"""Stable weight decay (SWD): decay that does not grow with Adam's preconditioner, AdamS and SGDS.

AdamW's decay step :math:`\eta\lambda w` is not preconditioned, while its gradient step is divided by
:math:`\sqrt{\hat v}`; as the gradients shrink late in training the decay's relative strength grows, and
with it the gradient norm (Xie et al.). Stable weight decay divides the decay by the root of the mean of
:math:`\hat v` over *all* parameters, one scalar per step, so decay and gradient steps scale together.
The mean is a global reduction over the whole parameter tree; under ``jit`` with sharded parameters XLA
reduces it across devices, so the result does not depend on the sharding.

References:
  Xie, Xu, Zhang, Sato, Sugiyama. *On the Overlooked Pitfalls of Weight Decay and How to Mitigate Them: A
  Gradient-Norm Perspective.* NeurIPS 2023. Code: github.com/zeke-xie/stable-weight-decay-regularization.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from wd_optax import _checks
from wd_optax import _tree
from wd_optax.decoupled import decoupled_decay
from wd_optax.projections import _momentum_scaled  # the 1/(1-μ) decay, shared with sgdp

__all__ = ["AdamSState", "adams", "sgds"]


class AdamSState(NamedTuple):
  """State of :func:`adams`."""
  count: jax.Array  # shape=(), dtype=int32: updates applied so far, the schedules' step.
  adam: optax.ScaleByAdamState  # Adam's moments, as optax.scale_by_adam keeps them.


def adams(
    learning_rate: optax.ScalarOrSchedule,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: Any = None,
) -> optax.GradientTransformation:
  r"""AdamS: Adam with stable weight decay, the decay divided by the root mean of :math:`\hat v` over all parameters.

  .. math::
    \hat m_t, \hat v_t \text{ as in Adam}, \qquad
    \bar v_t = \frac{1}{N} \sum_{i=1}^{N} \hat v_{t,i}, \qquad
    w_{t+1} = w_t - \eta_t \frac{\hat m_t}{\sqrt{\hat v_t} + \epsilon}
      - \frac{\eta_t \lambda_t}{\sqrt{\bar v_t}}\, w_t,

  where the sum runs over every entry of every parameter (:math:`N` in all), decayed by ``mask`` or not,
  as in the authors' code. Where :math:`\bar v_t = 0` (all gradients zero so far) no decay is applied
  rather than an infinite one. With ``weight_decay=0`` this is ``optax.adam``.

  Args:
    learning_rate: :math:`\eta`, a number or an optax schedule.
    b1, b2, eps: Adam's, as in ``optax.scale_by_adam``.
    weight_decay: :math:`\lambda`, a number >= 0 or a schedule.
    mask: which leaves to decay (see :mod:`wd_optax.masks`); the mean :math:`\bar v` is over all leaves.

  Returns:
    An ``optax.GradientTransformation`` (its ``update`` needs ``params``); its state is an
    :class:`AdamSState`.

  Example:
    >>> import jax.numpy as jnp, optax, wd_optax
    >>> tx = wd_optax.adams(1e-3, weight_decay=1e-2)
    >>> params = {"w": jnp.ones(2)}
    >>> updates, _ = tx.update({"w": jnp.array([2.0, 2.0])}, tx.init(params), params)
    >>> [round(u, 7) for u in updates["w"].tolist()]   # -1e-3 - 1e-3 x 1e-2 / sqrt(mean(4))
    [-0.001005, -0.001005]

  References:
    Xie, Xu, Zhang, Sato, Sugiyama. *On the Overlooked Pitfalls of Weight Decay and How to Mitigate Them:
    A Gradient-Norm Perspective.* NeurIPS 2023.
  """
  _checks.check_rate(learning_rate, "learning_rate")
  _checks.check_rate(weight_decay, "weight_decay")
  _checks.check_number(b1, "b1", unit_interval=True)
  _checks.check_number(b2, "b2", unit_interval=True)
  _checks.check_number(eps, "eps")
  adam = optax.scale_by_adam(b1=b1, b2=b2, eps=eps)

  def rate(value, count):
    return value(count) if callable(value) else value

  def init_fn(params):
    if not _checks.is_params_placeholder(params):
      _checks.check_decayed_leaves(params, _tree.resolve_mask(mask, params), "adams")
    return AdamSState(count=jnp.zeros([], jnp.int32), adam=adam.init(params))

  def update_fn(updates, state, params=None):
    _checks.require_params(params, "adams")
    _checks.check_updates_match_params(updates, params, "adams")
    resolved = _tree.resolve_mask(mask, params)
    _checks.check_decayed_leaves(params, resolved, "adams", updates)
    steps, adam_state = adam.update(updates, state.adam, params)
    lr = rate(learning_rate, state.count)
    wd = rate(weight_decay, state.count)
    nu = jax.tree.leaves(adam_state.nu)
    total = sum(jnp.sum(jnp.asarray(v, jnp.promote_types(v.dtype, jnp.float32))) for v in nu)
    size = sum(v.size for v in nu)
    mean_v_hat = total / size / (1 - jnp.asarray(b2, jnp.float32) ** adam_state.count)
    positive = mean_v_hat > 0
    coef = jnp.where(positive, lr * wd / jnp.sqrt(jnp.where(positive, mean_v_hat, 1.0)), 0.0)

    def step(path, s, w):
      out = -lr * s
      if resolved(path):
        out = out - coef * w
      return out.astype(s.dtype)

    updates = _tree.map_with_path(step, steps, params)
    return updates, AdamSState(count=optax.safe_increment(state.count), adam=adam_state)

  return optax.GradientTransformation(init_fn, update_fn)


def sgds(
    learning_rate: optax.ScalarOrSchedule,
    *,
    momentum: float | None = 0.9,
    nesterov: bool = False,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: Any = None,
) -> optax.GradientTransformation:
  r"""SGDS: SGD with momentum and the decay scaled by :math:`1/(1-\mu)`, the stable decay for SGD.

  .. math::
    b_t = \mu b_{t-1} + g_t, \qquad w_{t+1} = w_t - \eta_t b_t - \frac{\eta_t \lambda_t}{1-\mu}\, w_t.

  The momentum amplifies the gradient step by :math:`1/(1-\mu)` at its steady state but not a
  decoupled decay; scaling the decay by the same factor keeps their balance that of SGD with L2 (the
  authors' SGDS, without dampening). ``momentum=None`` is plain SGD with decoupled decay.

  Args:
    learning_rate: :math:`\eta`, a number or an optax schedule.
    momentum: :math:`\mu`; ``None`` for no momentum buffer.
    nesterov: use Nesterov momentum.
    weight_decay: :math:`\lambda`, a number >= 0 or a schedule.
    mask: which leaves to decay (see :mod:`wd_optax.masks`).

  Returns:
    An ``optax.GradientTransformation`` (its ``update`` needs ``params``).

  Example:
    >>> import jax.numpy as jnp, optax, wd_optax
    >>> tx = wd_optax.sgds(0.1, momentum=0.5, weight_decay=1e-2)
    >>> params = {"w": jnp.ones(2)}
    >>> updates, _ = tx.update({"w": jnp.zeros(2)}, tx.init(params), params)
    >>> [round(u, 7) for u in updates["w"].tolist()]   # -0.1 x 1e-2 / (1 - 0.5)
    [-0.002, -0.002]

  References:
    Xie, Xu, Zhang, Sato, Sugiyama. *On the Overlooked Pitfalls of Weight Decay and How to Mitigate Them:
    A Gradient-Norm Perspective.* NeurIPS 2023.
  """
  _checks.check_rate(learning_rate, "learning_rate")
  _checks.check_rate(weight_decay, "weight_decay")
  _checks.check_number(momentum, "momentum", unit_interval=True, allow_none=True,
                       what="a number in [0, 1) or None")
  _checks.check_flag(nesterov, "nesterov")
  momentum_step = [] if momentum is None else [optax.trace(decay=momentum, nesterov=nesterov)]
  return optax.chain(
      *momentum_step,
      optax.scale_by_learning_rate(learning_rate),
      decoupled_decay(_momentum_scaled(weight_decay, momentum), learning_rate=learning_rate, mask=mask))
