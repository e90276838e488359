"""A pass-through transform that records per-leaf norms and angular updates in its state."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from wd_optax import _checks
from wd_optax.diagnostics import norms as _norms

PyTree = Any

__all__ = ["MonitorState", "monitor"]


class MonitorState(NamedTuple):
  """Latest per-leaf measurements (float32 scalars; ``None`` for leaves outside the mask).

  Attributes:
    param_norm: ‖w_{t+1}‖, the norm of the parameters after the latest step (‖w_0‖ after ``init``).
    update_norm: ‖u_t‖, the norm of the latest (final) update (0 after ``init``).
    angular_update: ∠(w_t, w_{t+1}) in radians (0 after ``init``).
  """
  param_norm: PyTree
  update_norm: PyTree
  angular_update: PyTree


class _Measured(tuple):
  """Marks one leaf's (param_norm, update_norm, angle) so tree maps stop at it."""

  def __new__(cls, *values):
    return super().__new__(cls, values)


def monitor(mask: Any = None) -> optax.GradientTransformation:
  r"""Passes updates through unchanged and records ‖w‖, ‖u‖ and the angular update per leaf.

  Chain it last, after the learning-rate scaling and any decoupled decay, so that ``updates`` is the
  step actually applied, ``w_{t+1} = w_t + u_t``. Each ``update`` stores

  .. math::
    \|w_{t+1}\|,\qquad \|u_t\|,\qquad
    \theta_t = \angle(w_t, w_{t+1}) = 2\operatorname{atan2}(\|\hat w_t - \hat w_{t+1}\|, \|\hat w_t + \hat w_{t+1}\|)

  for every leaf in ``mask`` (see :func:`wd_optax.diagnostics.angular_update`; 0 when either vector
  is zero), computed in float32 from ``params + updates``. The returned updates are the input
  objects themselves, so the optimizer's results are bitwise those of the chain without the monitor.
  Read the values with ``optax.tree_utils.tree_get(opt_state, "angular_update")`` and log them with
  :func:`wd_optax.diagnostics.flatten_by_path`. For scale-invariant leaves the angle is the quantity
  weight decay controls (Zhang et al. 2019 §4.1; at equilibrium ≈ √(2ηλ/(1+μ)), Kosson et al. 2024);
  FixNorm (Zhou et al.) predicts it tracks η_t/c² when the norm is pinned to c.

  Args:
    mask: project mask convention: which leaves to measure (e.g. ``wd_optax.masks.kernels()``).
      Leaves outside it hold ``None`` in every field of the state.

  Returns:
    An ``optax.GradientTransformation`` whose state is a :class:`MonitorState`; ``update`` requires
    ``params``.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from wd_optax.monitor import monitor
    >>> tx = optax.chain(optax.sgd(1.0), monitor())
    >>> params = {"w": jnp.array([1.0, 0.0])}
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"w": jnp.array([0.0, -1.0])}, state, params)
    >>> round(float(optax.tree_utils.tree_get(state, "angular_update")["w"]), 6)  # π/4
    0.785398
    >>> round(float(optax.tree_utils.tree_get(state, "param_norm")["w"]), 6)  # √2
    1.414214

  References:
    Zhang, Wang, Xu, Grosse. Three Mechanisms of Weight Decay Regularization. ICLR 2019.
    Kosson, Messmer, Jaggi. Rotational Equilibrium. ICML 2024.
    Zhou, Sun, Zhong. FixNorm: Dissecting Weight Decay for Training Deep Neural Networks. 2021.
  """

  def init_fn(params):
    _checks.require_params(params, "monitor")
    param_norm = _norms.masked_map(lambda w: _norms._norm(w, None), params, mask=mask)
    zeros = _norms.masked_map(lambda w: jnp.zeros((), jnp.float32), params, mask=mask)
    return MonitorState(param_norm=param_norm, update_norm=zeros, angular_update=zeros)

  def update_fn(updates, state, params=None):
    del state
    _checks.require_params(params, "monitor")

    def measure(w, u):
      w = jnp.asarray(w, jnp.float32)
      u = jnp.asarray(u, jnp.float32)
      new = w + u
      return _Measured(_norms._norm(new, None), _norms._norm(u, None), _norms.safe_angle(w, new))

    measured = _norms.masked_map(measure, params, updates, mask=mask)
    is_measured = lambda t: isinstance(t, _Measured) or t is None
    pick = lambda i: jax.tree.map(
        lambda t: None if t is None else t[i], measured, is_leaf=is_measured)
    return updates, MonitorState(param_norm=pick(0), update_norm=pick(1), angular_update=pick(2))

  return optax.GradientTransformation(init_fn, update_fn)
