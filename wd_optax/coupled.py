"""Where the decay enters, part 1: coupled L2, mixed into the gradient before the optimizer sees it.

Two placements live here:

* :func:`add_l2` adds :math:`\\lambda_t w` to the gradient, so every statistic the optimizer keeps
  (momentum, Adam's moments, K-FAC's preconditioned direction) is computed from
  :math:`\\nabla L + \\lambda_t w`: the gradient of :math:`L + \\tfrac{\\lambda}{2}\\|w\\|^2`.
* :func:`scale_by_adam_l2` is Adam's direction with the L2 term routed, by separate switches, into the
  first-moment buffer, the second-moment buffer, and/or added outside the first moment but still
  preconditioned: the ablation of Bjorck et al. 2021 that locates the harm of Adam+L2 in the first moment.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from wd_optax import _checks
from wd_optax import _tree

__all__ = ["add_l2", "AddL2State", "scale_by_adam_l2"]


class AddL2State(NamedTuple):
  """State of :func:`add_l2` when the weight decay is a schedule."""
  count: jax.Array  # shape=(), dtype=int32: updates applied so far, the schedule's step.


def rate_at(rate: optax.ScalarOrSchedule, count: Any) -> Any:
  return rate(count) if callable(rate) else rate


def add_masked_l2(updates: Any, params: Any, weight_decay: Any, resolved: _tree.ResolvedMask) -> Any:
  """``updates + weight_decay * params`` on the leaves ``resolved`` selects, in the updates' dtype."""
  return _tree.map_with_path(
      lambda path, g, w: g + (weight_decay * w).astype(g.dtype) if resolved(path) else g,
      updates, params)


def add_l2(weight_decay: optax.ScalarOrSchedule, *, mask: Any = None) -> optax.GradientTransformation:
  r"""Coupled L2: adds :math:`\lambda_t w` to the gradient, before the optimizer's statistics.

  .. math::
    g_t \leftarrow g_t + \lambda_t\, w_t
    \qquad\text{(the gradient of } L + \tfrac{\lambda_t}{2}\|w\|^2\text{)}.

  Put it first in a chain, before momentum or Adam, so the L2 gradient enters their buffers. For plain
  SGD this is the same as decoupled decay with coupling ``"lr"``; for adaptive and preconditioned
  optimizers it is not (Loshchilov & Hutter 2019; Zhang et al. 2019).

  Args:
    weight_decay: :math:`\lambda`, a finite number >= 0 or an optax schedule (e.g. from
      :mod:`wd_optax.schedules`), evaluated at the number of updates applied so far.
    mask: which leaves to decay: ``None`` (all), a pytree of bools, or a callable from params to one
      (see :mod:`wd_optax.masks`).

  Returns:
    An ``optax.GradientTransformation``; its ``update`` requires ``params``.

  Example:
    >>> import jax.numpy as jnp, optax, wd_optax
    >>> tx = optax.chain(wd_optax.add_l2(1e-2), optax.sgd(0.1, momentum=0.9))
    >>> params = {"w": jnp.array([1.0, -2.0])}
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"w": jnp.zeros(2)}, state, params)
    >>> updates["w"].tolist()   # -0.1 * 0.01 * w
    [-0.0010000000474974513, 0.0020000000949949026]

  References:
    Zhang, Wang, Xu, Grosse. *Three Mechanisms of Weight Decay Regularization.* ICLR 2019.
    Loshchilov & Hutter. *Decoupled Weight Decay Regularization.* ICLR 2019.
  """
  _checks.check_rate(weight_decay, "weight_decay")
  scheduled = callable(weight_decay)

  def init_fn(params):
    if not _checks.is_params_placeholder(params):
      resolved = _tree.resolve_mask(mask, params)  # a mismatched mask fails here, naming the path
      _checks.check_decayed_leaves(params, resolved, "add_l2")
    if scheduled:
      return AddL2State(count=jnp.zeros([], jnp.int32))
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    _checks.require_params(params, "add_l2")
    _checks.check_updates_match_params(updates, params, "add_l2")
    resolved = _tree.resolve_mask(mask, params)
    _checks.check_decayed_leaves(params, resolved, "add_l2", updates)
    if scheduled:
      decay = weight_decay(state.count)
      state = AddL2State(count=optax.safe_increment(state.count))
    else:
      decay = weight_decay
    return add_masked_l2(updates, params, decay, resolved), state

  return optax.GradientTransformation(init_fn, update_fn)


def scale_by_adam_l2(
    weight_decay: optax.ScalarOrSchedule,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    l2_in_first_moment: bool = True,
    l2_in_second_moment: bool = True,
    l2_preconditioned: bool = False,
    preconditioner_floor: float = 0.0,
    mask: Any = None,
) -> optax.GradientTransformation:
  r"""Adam's direction with the L2 gradient routed into chosen buffers.

  With :math:`r_t = \lambda_t w_t` on masked leaves (0 elsewhere) and switches
  :math:`i_m, i_v, i_p \in \{0, 1\}`:

  .. math::
    m_t &= \beta_1 m_{t-1} + (1-\beta_1)(g_t + i_m r_t) \\
    v_t &= \beta_2 v_{t-1} + (1-\beta_2)(g_t + i_v r_t)^2 \\
    u_t &= \frac{\hat m_t + i_p r_t}{\max(\sqrt{\hat v_t}, \phi) + \epsilon},

  with the usual bias corrections :math:`\hat m_t = m_t / (1-\beta_1^t)`, :math:`\hat v_t = v_t/(1-\beta_2^t)`,
  and :math:`\phi` = ``preconditioner_floor`` (0 by default: the literal formula).
  Adam+L2 is :math:`(i_m, i_v, i_p) = (1, 1, 0)`; :math:`(0, 0, 0)` is exactly ``optax.scale_by_adam``
  (chain :func:`wd_optax.decoupled_decay` after it for AdamW); :math:`(0, \cdot, 1)` keeps L2 out of the
  first-moment buffer but still preconditions it. The state is ``optax.ScaleByAdamState``, and the
  schedule of :math:`\lambda` is evaluated at its ``count`` (updates applied so far).

  **Hazard of L2 outside the second moment.** With :math:`i_v = 0` and :math:`i_m = 1` or :math:`i_p = 1`,
  the L2 term is divided by a second moment that never saw it. Where the loss gradient is zero (a
  parameter at its optimum, a dead unit) :math:`\hat v_t = 0` while :math:`r_t = \lambda w_t \ne 0`, so
  with :math:`\phi = 0`

  .. math::
    u_t = \frac{i_p \lambda w_t + i_m \hat m_t}{\epsilon} \approx \frac{(i_p + i_m)\,\lambda w_t}{\epsilon},

  a step of :math:`\eta\lambda w/\epsilon` (:math:`10^8\,\eta\lambda w` at the default
  :math:`\epsilon = 10^{-8}`): the weight is thrown far past zero instead of being decayed. A
  ``preconditioner_floor`` :math:`\phi > 0` bounds that step by :math:`\eta\lambda |w|/\phi` and leaves
  every coordinate with :math:`\sqrt{\hat v_t} \ge \phi` as it was. With :math:`i_v = 1` the second
  moment contains :math:`r_t^2` and the hazard does not arise.

  Args:
    weight_decay: :math:`\lambda`, a finite number >= 0 or an optax schedule.
    b1: decay of the first-moment average.
    b2: decay of the second-moment average.
    eps: added to :math:`\sqrt{\hat v}` for numerical stability.
    l2_in_first_moment: :math:`i_m`, route :math:`\lambda w` into the first moment.
    l2_in_second_moment: :math:`i_v`, route :math:`\lambda w` into the second moment.
    l2_preconditioned: :math:`i_p`, add :math:`\lambda w / (\sqrt{\hat v}+\epsilon)` outside the first moment.
    preconditioner_floor: :math:`\phi \ge 0`, a lower bound on :math:`\sqrt{\hat v}` in the denominator
      of both terms (the gradient's and the L2 term's). 0 keeps the literal Adam formula (and, with every
      switch off, ``optax.scale_by_adam`` bitwise); a positive value guards the :math:`\lambda w/\epsilon`
      hazard above. It is on the scale of the gradient's RMS, so choose it well below the typical
      :math:`\sqrt{\hat v}` of the leaves that do get gradient.
    mask: which leaves receive the L2 term (see :mod:`wd_optax.masks`).

  Returns:
    An ``optax.GradientTransformation`` producing the (unscaled) Adam direction; chain
    ``optax.scale_by_learning_rate`` after it. ``update`` requires ``params`` unless all switches are off.

  Example:
    >>> import jax.numpy as jnp, optax, wd_optax
    >>> tx = optax.chain(
    ...     wd_optax.scale_by_adam_l2(1e-2, l2_in_first_moment=False, l2_preconditioned=True),
    ...     optax.scale_by_learning_rate(1e-3))
    >>> params = {"w": jnp.ones(3)}
    >>> updates, state = tx.update({"w": jnp.zeros(3)}, tx.init(params), params)
    >>> updates["w"].shape
    (3,)

  References:
    Bjorck, Weinberger, Gomes. *Understanding Decoupled and Early Weight Decay.* AAAI 2021.
    Loshchilov & Hutter. *Decoupled Weight Decay Regularization.* ICLR 2019.
  """
  _checks.check_rate(weight_decay, "weight_decay")
  _checks.check_number(b1, "b1", unit_interval=True)
  _checks.check_number(b2, "b2", unit_interval=True)
  _checks.check_number(eps, "eps")
  _checks.check_number(preconditioner_floor, "preconditioner_floor")
  uses_l2 = l2_in_first_moment or l2_in_second_moment or l2_preconditioned
  # The literal formula, bitwise, unless a floor is (or may be, when traced) set.
  floored = _checks.is_traced(preconditioner_floor) or float(preconditioner_floor) > 0

  def denominator(v):
    root = jnp.sqrt(v)
    return (jnp.maximum(root, preconditioner_floor) if floored else root) + eps

  def init_fn(params):
    if uses_l2 and not _checks.is_params_placeholder(params):
      resolved = _tree.resolve_mask(mask, params)
      _checks.check_decayed_leaves(params, resolved, "scale_by_adam_l2", reason="the L2 term acts")
    return optax.ScaleByAdamState(
        count=jnp.zeros([], jnp.int32),
        mu=optax.tree.zeros_like(params),
        nu=optax.tree.zeros_like(params))

  def update_fn(updates, state, params=None):
    if uses_l2:
      _checks.require_params(params, "scale_by_adam_l2")
      _checks.check_updates_match_params(updates, params, "scale_by_adam_l2")
      resolved = _tree.resolve_mask(mask, params)
      _checks.check_decayed_leaves(params, resolved, "scale_by_adam_l2", updates,
                                   reason="the L2 term acts")
      decay = rate_at(weight_decay, state.count)
      with_l2 = add_masked_l2(updates, params, decay, resolved)
    first = with_l2 if l2_in_first_moment else updates
    second = with_l2 if l2_in_second_moment else updates
    mu = optax.tree.update_moment(first, state.mu, b1, 1)
    nu = optax.tree.update_moment_per_elem_norm(second, state.nu, b2, 2)
    count_inc = optax.safe_increment(state.count)
    mu_hat = optax.tree.bias_correction(mu, b1, count_inc)
    nu_hat = optax.tree.bias_correction(nu, b2, count_inc)
    direction = jax.tree.map(lambda m, v: m / denominator(v), mu_hat, nu_hat)
    if l2_preconditioned:
      direction = _tree.map_with_path(
          lambda path, d, v, w: d + decay * w / denominator(v) if resolved(path) else d,
          direction, nu_hat, params)
    direction = jax.tree.map(lambda d, g: d.astype(g.dtype), direction, updates)
    nu = optax.tree.cast_like(nu, state.nu)
    return direction, optax.ScaleByAdamState(count=count_inc, mu=mu, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)
