"""Optimizers that move weights on spheres: the rotational-equilibrium wrapper and AdamH.

For a scale-invariant weight (one followed by normalisation) only its direction matters, and weight decay
acts on it by steering the angle it turns per step towards an equilibrium value (Kosson, Messmer & Jaggi
2024). The transforms here skip the transient: they keep the norm fixed and set the angle directly.

* :func:`rotational_equilibrium` wraps any optimizer and, per neuron (output channel), rotates the weight
  by the equilibrium angle that optimizer would reach with decay, e.g. AdamW's
  ``√(2ηλ(1−β₁)/(1+β₁))``; :func:`rotational_adamw` and :func:`rotational_sgd` are it around
  ``optax.adamw`` and :func:`wd_optax.sgd`.
* :func:`sphere_step` takes a step of relative size ``η`` in the direction it is given and returns each
  matrix to its previous Frobenius norm; :func:`adamh` is it after Adam's direction (the "hyperball"
  AdamH of Wen et al. 2025, as in levanter).

References:
  Kosson, Messmer & Jaggi, *Rotational Equilibrium: How Weight Decay Balances Learning Across Neural
  Networks*, ICML 2024, arXiv:2305.17212.
  Wen, Dang, Lyu, Ma & Liang, *Fantastic Pretraining Optimizers and Where to Find Them 2.1: Hyperball
  Optimization*, 2025.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from wd_optax import _checks
from wd_optax import _tree
from wd_optax.diagnostics.norms import equilibrium_angular_update
from wd_optax.optimizers import adam as _adam
from wd_optax.optimizers import sgd as _sgd
from wd_optax.projections import _channel_axes, _channel_axis_of, _compute_dtype

PyTree = Any

__all__ = [
    "RotationalEquilibriumState",
    "SphereStepState",
    "adamh",
    "rotational_adamw",
    "rotational_equilibrium",
    "rotational_sgd",
    "sphere_step",
]

EQUILIBRIUM_OPTIMIZERS = ("adamw", "sgd")


def _value(rate: Any, count: jax.Array) -> Any:
  return rate(count) if callable(rate) else rate


def _rotates(leaf: Any, selected: bool) -> bool:
  return selected and np.ndim(leaf) >= 2 and jnp.issubdtype(jnp.result_type(leaf), jnp.floating)


class RotationalEquilibriumState(NamedTuple):
  """State of :func:`rotational_equilibrium`.

  Attributes:
    count: updates applied so far (int32 scalar): the schedules' step and the bias correction's.
    update_norm_sq: per rotating leaf (keyed by parameter path), the exponential moving average of the
      squared norm of each neuron's orthogonal update, float32, one entry per output channel (a scalar
      with ``per_channel=False``). Not shaped like the params, so ``optax.tree.map_params`` hands it to
      ``transform_non_params`` whole.
    inner_state: the wrapped optimizer's state.
  """
  count: jax.Array
  update_norm_sq: dict[str, jax.Array]
  inner_state: Any


def rotational_equilibrium(inner: optax.GradientTransformation, *,
                           learning_rate: optax.ScalarOrSchedule,
                           weight_decay: optax.ScalarOrSchedule,
                           optimizer: str = "adamw", momentum: float = 0.9,
                           update_norm_decay: float = 0.9, eps: float = 1e-8,
                           per_channel: bool = True, output_channel: str = "last",
                           mask: _tree.MaskOrFn = None) -> optax.GradientTransformation:
  r"""Wraps an optimizer so that every neuron rotates at its equilibrium rate with a fixed norm.

  Kosson et al.'s rotational variant (RV): instead of letting weight decay bring the angular update of
  a scale-invariant neuron to equilibrium over many steps, impose the equilibrium from the first step.
  For each neuron :math:`w` (an output channel of a rotating leaf) with inner update :math:`u`
  (``inner``'s output, a step to add to the params),

  .. math::

    u_\perp = u - \frac{\langle u, w\rangle}{\lVert w\rVert^2} w, \qquad
    \nu_t = \beta\,\nu_{t-1} + (1-\beta)\lVert u_\perp\rVert^2, \qquad
    \hat\nu_t = \nu_t / (1-\beta^t),

    w' = w + \eta_r \lVert w\rVert \frac{u_\perp}{\sqrt{\hat\nu_t} + \epsilon}, \qquad
    w_{t+1} = \lVert w\rVert \frac{w'}{\lVert w'\rVert},

  with :math:`\beta` = ``update_norm_decay`` and :math:`\eta_r` the equilibrium angle
  :func:`wd_optax.diagnostics.equilibrium_angular_update` predicts (AdamW: :math:`\sqrt{2\eta_t\lambda_t(1-\beta_1)/(1+\beta_1)}`, SGD with momentum μ and L2 decay:
  :math:`\sqrt{2\eta_t\lambda_t/(1+\mu)}`). Each neuron keeps its norm and turns by
  :math:`\arctan(\eta_r\lVert u_\perp\rVert/\sqrt{\hat\nu_t})`, so its RMS angle is :math:`\approx\eta_r`
  whatever the gradient's scale: only the direction of ``inner``'s update matters, and any radial part
  (such as decoupled decay's :math:`-\eta\lambda w`) is projected out. Leaves outside ``mask``, and
  leaves with fewer than two axes (biases, gains), get ``inner``'s update unchanged.

  Unlike the authors' code (which by default also re-centres each neuron to zero mean) this does not
  change the weights' mean; the norm is the current one rather than the one stored at ``init``, equal
  up to float rounding since the wrapper keeps it fixed.

  Args:
    inner: the optimizer whose update directions are used, e.g. ``optax.adamw(η, weight_decay=λ)``.
    learning_rate: :math:`\eta` in :math:`\eta_r` (a number or schedule), normally ``inner``'s.
    weight_decay: :math:`\lambda` in :math:`\eta_r` (a number >= 0 or schedule), normally ``inner``'s.
    optimizer: which equilibrium :math:`\eta_r` is: ``"adamw"`` or ``"sgd"``.
    momentum: β₁ of AdamW or μ of SGD, in ``[0, 1)``.
    update_norm_decay: :math:`\beta`, the decay of the moving average of the squared update norm.
    eps: :math:`\epsilon` in the normalisation.
    per_channel: rotate each output channel (neuron) separately (the default, as in the paper), or
      the whole leaf.
    output_channel: where the output channel is: ``"last"`` (flax, Haiku) or ``"first"`` (Equinox).
    mask: which leaves rotate (``None``: every leaf with at least two axes).

  Returns:
    An ``optax.GradientTransformation`` whose ``update`` needs ``params``; state
    :class:`RotationalEquilibriumState`.

  Example:
    >>> import jax.numpy as jnp, optax, wd_optax
    >>> params = {"kernel": jnp.array([[3.0, 0.0], [4.0, 1.0]]), "bias": jnp.zeros(2)}
    >>> tx = wd_optax.rotational_equilibrium(optax.sgd(0.1), learning_rate=0.1, weight_decay=0.5,
    ...                                      optimizer="sgd", momentum=0.0)
    >>> grads = {"kernel": jnp.array([[1.0, 1.0], [0.0, 0.0]]), "bias": jnp.ones(2)}
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> new = optax.apply_updates(params, updates)
    >>> jnp.linalg.norm(new["kernel"], axis=0).round(4).tolist(), new["bias"].tolist()
    ([5.0, 1.0], [-0.10000000149011612, -0.10000000149011612])

  References:
    Kosson, Messmer & Jaggi, *Rotational Equilibrium: How Weight Decay Balances Learning Across Neural
    Networks*, ICML 2024, arXiv:2305.17212 (Algorithm 1; code: github.com/epfml/REQ).
  """
  if not isinstance(inner, optax.GradientTransformation):
    raise TypeError(f"inner must be an optax.GradientTransformation, got {inner!r}.")
  _checks.check_rate(learning_rate, "learning_rate")
  _checks.check_rate(weight_decay, "weight_decay")
  _checks.check_choice(optimizer, "optimizer", EQUILIBRIUM_OPTIMIZERS)
  _checks.check_number(momentum, "momentum", unit_interval=True)
  _checks.check_number(update_norm_decay, "update_norm_decay", unit_interval=True)
  _checks.check_number(eps, "eps")
  if not isinstance(per_channel, (bool, np.bool_)):
    raise TypeError(f"per_channel must be a bool, got {per_channel!r}.")
  channel_axis = _channel_axis_of(output_channel)

  def rotating(params: PyTree) -> dict[str, Any]:
    resolved = _tree.resolve_mask(mask, params)
    return {path: leaf for path, leaf in _tree.named_leaves(params) if _rotates(leaf, resolved(path))}

  def norm_shape(leaf: Any) -> tuple[int, ...]:
    return (np.shape(leaf)[channel_axis],) if per_channel else ()

  def init_fn(params: PyTree) -> RotationalEquilibriumState:
    _checks.require_params(params, "rotational_equilibrium")
    if _checks.is_params_placeholder(params):
      # optax.tree.map_params: the averages are per-neuron values keyed by path, not a params mirror.
      return RotationalEquilibriumState(jnp.zeros([], jnp.int32), _tree.NOT_PARAM_SHAPED,
                                        inner.init(params))
    averages = {path: jnp.zeros(norm_shape(leaf), jnp.float32) for path, leaf in rotating(params).items()}
    return RotationalEquilibriumState(jnp.zeros([], jnp.int32), averages, inner.init(params))

  def update_fn(updates: PyTree, state: RotationalEquilibriumState, params: PyTree = None
                ) -> tuple[PyTree, RotationalEquilibriumState]:
    _checks.require_params(params, "rotational_equilibrium")
    _checks.check_updates_match_params(updates, params, "rotational_equilibrium")
    inner_updates, inner_state = inner.update(updates, state.inner_state, params)
    leaves = rotating(params)
    if set(leaves) != set(state.update_norm_sq):
      raise ValueError(
          f"rotational_equilibrium: the rotating parameters {sorted(leaves)[:10]} differ from those "
          f"seen at init {sorted(state.update_norm_sq)[:10]}; call init with the same parameter tree.")
    count = optax.safe_increment(state.count)
    eta_r = equilibrium_angular_update(_value(learning_rate, state.count),
                                       _value(weight_decay, state.count), momentum, optimizer=optimizer)
    beta = jnp.asarray(update_norm_decay, jnp.float32)
    bias_correction = 1.0 - beta ** count.astype(jnp.float32)
    new_averages = {}

    def rotate(path: str, u: jax.Array, w: jax.Array) -> jax.Array:
      if path not in leaves:
        return u
      dtype = _compute_dtype(jnp.result_type(w, u))
      w_c, u_c = jnp.asarray(w, dtype), jnp.asarray(u, dtype)
      axes = _channel_axes(w_c, per_channel, channel_axis)
      # One pass of sums (XLA fuses them into one reduction), then one elementwise pass: the step is
      # memory-bound, and u⊥, w' and ‖w'‖ all follow from ‖w‖², ⟨u, w⟩ and ‖u‖² since u⊥ ⊥ w.
      w_sq = jnp.sum(jnp.square(w_c), axis=axes, keepdims=True)
      wu = jnp.sum(w_c * u_c, axis=axes, keepdims=True)
      u_sq = jnp.sum(jnp.square(u_c), axis=axes, keepdims=True)
      nonzero = w_sq > 0
      along = wu / jnp.where(nonzero, w_sq, 1)
      perp_sq = jnp.maximum(u_sq - wu * along, 0)
      average = beta * state.update_norm_sq[path] + (1 - beta) * jnp.reshape(perp_sq, norm_shape(w))
      new_averages[path] = average.astype(jnp.float32)
      rms = jnp.sqrt(jnp.reshape(average, perp_sq.shape) / bias_correction)
      norm = jnp.sqrt(w_sq)
      step = eta_r * norm / (rms + eps)                 # w' = w + step · u⊥
      moved_norm = jnp.sqrt(w_sq + jnp.square(step) * perp_sq)
      # A zero neuron has no direction to turn: it stays zero (and the divisions stay NaN-free).
      moves = nonzero & (moved_norm > 0)
      shrink = jnp.where(moves, norm / jnp.where(moves, moved_norm, 1), 1)
      # w_{t+1} − w = (shrink·(1 − step·along) − 1)·w + shrink·step·u, per neuron.
      coef_w = jnp.where(moves, shrink * (1 - step * along) - 1, 0)
      coef_u = jnp.where(moves, shrink * step, 0)
      return (coef_w * w_c + coef_u * u_c).astype(jnp.result_type(u))

    new_updates = _tree.map_with_path(rotate, inner_updates, params)
    return new_updates, RotationalEquilibriumState(count, new_averages, inner_state)

  return optax.GradientTransformation(init_fn, update_fn)


def rotational_adamw(learning_rate: optax.ScalarOrSchedule, weight_decay: optax.ScalarOrSchedule = 1e-2,
                     *, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                     update_norm_decay: float = 0.9, per_channel: bool = True,
                     output_channel: str = "last", mask: _tree.MaskOrFn = None
                     ) -> optax.GradientTransformation:
  r"""Rotational AdamW (Kosson et al.'s RV-AdamW): :func:`rotational_equilibrium` around ``optax.adamw``.

  Rotating leaves (``mask``, at least two axes) turn by
  :math:`\eta_r = \sqrt{2\eta_t\lambda_t(1-\beta_1)/(1+\beta_1)}` per step in the direction of Adam's
  update, at a fixed norm; every other leaf takes ``optax.adamw(learning_rate, b1, b2, eps,
  weight_decay, mask=mask)``'s step, so with the default ``mask=None`` biases and gains get the plain Adam
  step (adamw's decay on them is skipped only where ``mask`` leaves them out).

  Args:
    learning_rate: η, a number or schedule.
    weight_decay: λ, a number >= 0 or schedule; with η it sets the rotation :math:`\eta_r`.
    b1, b2, eps: Adam's (``b1`` is also the β₁ of :math:`\eta_r`).
    update_norm_decay, per_channel, output_channel: as in :func:`rotational_equilibrium`.
    mask: the rotating leaves, and the leaves ``optax.adamw`` decays.

  Returns:
    An ``optax.GradientTransformation`` (its ``update`` needs ``params``).

  References:
    Kosson, Messmer & Jaggi, *Rotational Equilibrium*, ICML 2024, arXiv:2305.17212.
  """
  _checks.check_number(b1, "b1", unit_interval=True)
  # wd_optax.adam(decay="decoupled") is optax.adamw's rule, w ← w − η(u + λw), and takes a schedule for λ with
  # every supported optax (optax.adamw accepts only a number before optax 0.2.6).
  inner = _adam(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, decay="decoupled",
                          mask=mask)
  return rotational_equilibrium(inner, learning_rate=learning_rate, weight_decay=weight_decay,
                                optimizer="adamw", momentum=b1, update_norm_decay=update_norm_decay,
                                per_channel=per_channel, output_channel=output_channel, mask=mask)


def rotational_sgd(learning_rate: optax.ScalarOrSchedule, weight_decay: optax.ScalarOrSchedule = 5e-4,
                   *, momentum: float = 0.9, update_norm_decay: float = 0.9, per_channel: bool = True,
                   output_channel: str = "last", mask: _tree.MaskOrFn = None
                   ) -> optax.GradientTransformation:
  r"""Rotational SGD with momentum (RV-SGDM): :func:`rotational_equilibrium` around :func:`wd_optax.sgd`.

  Rotating leaves turn by :math:`\eta_r = \sqrt{2\eta_t\lambda_t/(1+\mu)}` per step in the direction of
  the momentum update, at a fixed norm; every other leaf takes ``wd_optax.sgd(learning_rate,
  momentum=momentum, weight_decay=weight_decay, decay="l2", mask=mask)``'s step.

  Args:
    learning_rate: η, a number or schedule.
    weight_decay: λ, a number >= 0 or schedule.
    momentum: μ in ``[0, 1)``.
    update_norm_decay, per_channel, output_channel: as in :func:`rotational_equilibrium`.
    mask: the rotating leaves, and the leaves the inner SGD decays.

  Returns:
    An ``optax.GradientTransformation`` (its ``update`` needs ``params``).

  References:
    Kosson, Messmer & Jaggi, *Rotational Equilibrium*, ICML 2024, arXiv:2305.17212.
  """
  _checks.check_number(momentum, "momentum", unit_interval=True)
  inner = _sgd(learning_rate, momentum=momentum, weight_decay=weight_decay, decay="l2", mask=mask)
  return rotational_equilibrium(inner, learning_rate=learning_rate, weight_decay=weight_decay,
                                optimizer="sgd", momentum=momentum, update_norm_decay=update_norm_decay,
                                per_channel=per_channel, output_channel=output_channel, mask=mask)


class SphereStepState(NamedTuple):
  """State of :func:`sphere_step`."""
  count: jax.Array  # shape=(), dtype=int32: updates applied so far, the learning-rate schedule's step.


def sphere_step(learning_rate: optax.ScalarOrSchedule, *, mask: _tree.MaskOrFn = None
                ) -> optax.GradientTransformation:
  r"""A step of relative size η along the incoming direction, then back to each matrix's norm.

  Chain it after a direction (a gradient-like update, before any learning rate), e.g.
  ``optax.scale_by_adam()``. For every leaf in ``mask`` with at least two axes, with incoming
  direction :math:`d` and :math:`r = \lVert W\rVert_F`,

  .. math::

    W' = W - \eta_t\, r\, \frac{d}{\lVert d\rVert_F}, \qquad
    W_{t+1} = r\, \frac{W'}{\lVert W'\rVert_F}, \qquad u_{out} = W_{t+1} - W,

  so the matrix turns by :math:`\arctan(\eta_t)` when :math:`d \perp W` and keeps its Frobenius norm
  (to float rounding). Other leaves (biases, gains, masked-out) get :math:`u_{out} = -\eta_t d`, the
  plain step. A zero direction gives no step; a zero matrix stays zero.

  Args:
    learning_rate: :math:`\eta`, the step relative to the matrix's norm (a number or schedule).
    mask: which leaves move on their sphere (``None``: every leaf with at least two axes).

  Returns:
    An ``optax.GradientTransformation`` whose ``update`` needs ``params``; state
    :class:`SphereStepState`.

  Example:
    >>> import jax.numpy as jnp, optax, wd_optax
    >>> params = {"w": jnp.array([[3.0], [4.0]])}
    >>> tx = wd_optax.sphere_step(0.1)
    >>> updates, _ = tx.update({"w": jnp.array([[-4.0], [3.0]])}, tx.init(params), params)
    >>> float(jnp.linalg.norm(optax.apply_updates(params, updates)["w"])).__round__(5)
    5.0

  References:
    Wen, Dang, Lyu, Ma & Liang, *Fantastic Pretraining Optimizers and Where to Find Them 2.1: Hyperball
    Optimization*, 2025 (levanter's and marin's AdamH / MuonH).
  """
  _checks.check_rate(learning_rate, "learning_rate")

  def init_fn(params: PyTree) -> SphereStepState:
    del params
    return SphereStepState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates: PyTree, state: SphereStepState, params: PyTree = None
                ) -> tuple[PyTree, SphereStepState]:
    _checks.require_params(params, "sphere_step")
    _checks.check_updates_match_params(updates, params, "sphere_step")
    resolved = _tree.resolve_mask(mask, params)
    eta = _value(learning_rate, state.count)

    def step(path: str, d: jax.Array, w: jax.Array) -> jax.Array:
      if not _rotates(w, resolved(path)):
        return (-eta * d).astype(jnp.result_type(d))
      dtype = _compute_dtype(jnp.result_type(w, d))
      w_c, d_c = jnp.asarray(w, dtype), jnp.asarray(d, dtype)
      # One pass of sums, then one elementwise pass (as in rotational_equilibrium): with d̂ = d/‖d‖,
      # ‖W − η r d̂‖² = r² − 2ηr⟨W, d̂⟩ + η²r².
      r_sq, d_sq, wd = jnp.sum(jnp.square(w_c)), jnp.sum(jnp.square(d_c)), jnp.sum(w_c * d_c)
      radius, d_norm = jnp.sqrt(r_sq), jnp.sqrt(d_sq)
      # No direction (or a zero matrix): no step, exactly, rather than a renormalisation's rounding.
      safe_d = jnp.where(d_norm > 0, d_norm, 1)
      moved_sq = r_sq - 2 * eta * radius * wd / safe_d + jnp.square(eta) * r_sq
      moves = (d_norm > 0) & (moved_sq > 0)
      shrink = jnp.where(moves, radius / jnp.sqrt(jnp.where(moves, moved_sq, 1)), 1)
      coef_w = jnp.where(moves, shrink - 1, 0)
      coef_d = jnp.where(moves, -shrink * eta * radius / safe_d, 0)
      return (coef_w * w_c + coef_d * d_c).astype(jnp.result_type(d))

    new_updates = _tree.map_with_path(step, updates, params)
    return new_updates, SphereStepState(count=optax.safe_increment(state.count))

  return optax.GradientTransformation(init_fn, update_fn)


def adamh(learning_rate: optax.ScalarOrSchedule, *, b1: float = 0.9, b2: float = 0.999,
          eps: float = 1e-8, mask: _tree.MaskOrFn = None) -> optax.GradientTransformation:
  r"""AdamH: Adam's direction, a step of relative size η, and each matrix back on its sphere.

  ``optax.chain(optax.scale_by_adam(b1, b2, eps), wd_optax.sphere_step(learning_rate, mask=mask))``:
  with Adam's :math:`d_t = \hat m_t / (\sqrt{\hat v_t} + \epsilon)`, every matrix (leaf in ``mask`` with
  at least two axes) moves as

  .. math::

    W_{t+1} = \lVert W_t\rVert_F\, \frac{W_t - \eta_t \lVert W_t\rVert_F\, d_t / \lVert d_t\rVert_F}
    {\lVert W_t - \eta_t \lVert W_t\rVert_F\, d_t / \lVert d_t\rVert_F \rVert_F},

  keeping its initial Frobenius norm, so η is the (tangent of the) angle it turns per step and weight
  decay has nothing left to do; other leaves take Adam's step :math:`-\eta_t d_t`.

  Args:
    learning_rate: :math:`\eta`, a number or schedule (relative, so typically 1e-3 to 1e-2).
    b1, b2, eps: Adam's.
    mask: which leaves stay on their sphere (``None``: every leaf with at least two axes).

  Returns:
    An ``optax.GradientTransformation`` (its ``update`` needs ``params``).

  References:
    Wen, Dang, Lyu, Ma & Liang, *Fantastic Pretraining Optimizers and Where to Find Them 2.1: Hyperball
    Optimization*, 2025 (levanter / marin ``adamh``).
  """
  return optax.chain(optax.scale_by_adam(b1=b1, b2=b2, eps=eps), sphere_step(learning_rate, mask=mask))
