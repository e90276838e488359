"""Per-leaf weight norms, effective learning rates and angular updates.

These are the quantities through which weight decay acts on scale-invariant weights (Zhang et al. 2019,
mechanism 1; Bjorck et al. 2021; Zhou et al., FixNorm): the norm ‖w‖ of a leaf followed by
normalisation sets the step its direction takes, η/‖w‖² under SGD, and the angle that direction turns
per step is the observable that decay holds at an equilibrium.

Conventions shared by every function here:

* Results are pytrees with the structure of ``params``. A leaf outside ``mask`` is ``None`` in the
  result (it is not measured), so ``jax.tree.leaves`` and :func:`flatten_by_path` skip it. When
  ``params`` is an ``nnx.State`` of Variables the result holds Variables of the same type whose value
  is the measurement, as ``jax.tree.map`` makes them.
* Norms are computed in float32 (lower-precision leaves are upcast first) and returned as float32.
* A zero vector has no direction: its effective learning rate is reported as ``0.0`` and any angle
  involving it as ``0.0``. No function here returns NaN or inf for finite input.
* ``per_output_channel=True`` reduces over every axis but the output channel, giving one value per
  output channel; a 0-d leaf gives a scalar. ``output_channel="last"`` (the default) is where flax
  and Haiku keep it (``(in, out)``, ``(H, W, in, out)``); Equinox keeps it first (``(out, in)``,
  ``(out, in, H, W)``), so pass ``output_channel="first"`` for an Equinox model.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from wd_optax import _checks
from wd_optax import _tree

PyTree = Any

__all__ = [
    "weight_norms",
    "effective_learning_rate",
    "angular_update",
    "equilibrium_angular_update",
    "flatten_by_path",
]

_OPTIMIZER_POWERS = {"sgd": 2, "adam": 1}


_OUTPUT_CHANNEL_AXES = {"last": -1, "first": 0}


def _channel_axis_of(output_channel: Any) -> int:
  """``"last"`` (flax, Haiku) is axis -1, ``"first"`` (Equinox) axis 0."""
  _checks.check_choice(output_channel, "output_channel", tuple(_OUTPUT_CHANNEL_AXES))
  return _OUTPUT_CHANNEL_AXES[output_channel]


def _reduce_axes(leaf: jax.Array, per_output_channel: bool, channel_axis: int = -1
                 ) -> tuple[int, ...] | None:
  ndim = jnp.ndim(leaf)
  if per_output_channel and ndim >= 1:
    keep = channel_axis % ndim
    return tuple(a for a in range(ndim) if a != keep)
  return None


def _sq_norm(x: jax.Array, axes: tuple[int, ...] | None) -> jax.Array:
  x = jnp.asarray(x, jnp.float32)
  return jnp.sum(jnp.square(x), axis=axes)


def _norm(x: jax.Array, axes: tuple[int, ...] | None) -> jax.Array:
  return jnp.sqrt(_sq_norm(x, axes))


def masked_map(fn: Callable[..., Any], params: PyTree, *rest: PyTree, mask: Any = None,
               argname: str = "mask") -> PyTree:
  """``map_with_path(fn, params, *rest)`` with ``None`` for the leaves outside ``mask``."""
  resolved = _tree.resolve_mask(mask, params, argname=argname)
  return _tree.map_with_path(
      lambda path, *leaves: fn(*leaves) if resolved(path) else None, params, *rest)


def safe_angle(a: jax.Array, b: jax.Array, axes: tuple[int, ...] | None = None) -> jax.Array:
  """Angle in radians between ``a`` and ``b`` (reduced over ``axes``; all axes when ``None``).

  Uses ``2·atan2(‖â − b̂‖, ‖â + b̂‖)`` with ``â = a/‖a‖`` (Kahan), which keeps full relative accuracy
  for tiny and near-π angles where ``arccos`` of a cosine loses it. 0 when either vector is zero.
  """
  a = jnp.asarray(a, jnp.float32)
  b = jnp.asarray(b, jnp.float32)
  norm_a = _norm(a, axes)
  norm_b = _norm(b, axes)
  both_nonzero = (norm_a > 0) & (norm_b > 0)
  expand = (lambda n: n) if axes is None else (lambda n: jnp.expand_dims(n, axes))
  unit_a = a / expand(jnp.where(norm_a > 0, norm_a, 1.0))
  unit_b = b / expand(jnp.where(norm_b > 0, norm_b, 1.0))
  angle = 2.0 * jnp.arctan2(_norm(unit_a - unit_b, axes), _norm(unit_a + unit_b, axes))
  return jnp.where(both_nonzero, angle, 0.0)


def weight_norms(params: PyTree, mask: Any = None, *, per_output_channel: bool = False,
                 output_channel: str = "last") -> PyTree:
  r"""Per-leaf L2 norms ‖w‖ of the parameters.

  .. math::
    n_\ell = \|w_\ell\|_2 = \big(\textstyle\sum_i w_{\ell,i}^2\big)^{1/2}

  or, with ``per_output_channel``, :math:`n_{\ell,c} = \|w_{\ell,\ldots,c}\|_2` for every output
  channel ``c`` (the last axis by default; the first with ``output_channel="first"``). Without
  decay the norm of a scale-invariant leaf grows every step; decay holds it at a plateau (Zhang et
  al. 2019, §4.1; Bjorck et al. 2021 for early decay).

  Args:
    params: a pytree of arrays (a dict, ``nnx.State`` or its pure form).
    mask: project mask convention (``None``, pytree of bools, or callable params -> bools); leaves
      outside it are ``None`` in the result.
    per_output_channel: one norm per output channel instead of one per leaf.
    output_channel: ``"last"`` (flax, Haiku; the default) or ``"first"`` (Equinox).

  Returns:
    A pytree like ``params`` of float32 norms (scalars, or shape ``(out,)`` per channel).

  Example:
    >>> import jax.numpy as jnp
    >>> from wd_optax.diagnostics import weight_norms
    >>> weight_norms({"w": jnp.array([3.0, 4.0]), "b": jnp.zeros(2)})
    {'b': Array(0., dtype=float32), 'w': Array(5., dtype=float32)}

  References:
    Zhang, Wang, Xu, Grosse. Three Mechanisms of Weight Decay Regularization. ICLR 2019.
    Zhou, Sun, Zhong. FixNorm: Dissecting Weight Decay for Training Deep Neural Networks. 2021.
  """
  channel_axis = _channel_axis_of(output_channel)
  return masked_map(lambda w: _norm(w, _reduce_axes(w, per_output_channel, channel_axis)), params,
                    mask=mask)


def effective_learning_rate(learning_rate: Any, params: PyTree, *, optimizer: str = "sgd",
                            mask: Any = None, step: Any = None,
                            per_output_channel: bool = False, output_channel: str = "last"
                            ) -> PyTree:
  r"""Effective learning rate of each scale-invariant leaf: η/‖w‖² (SGD) or η/‖w‖ (Adam).

  For a leaf followed by normalisation, L(cw) = L(w), so ∇L(w) ⊥ w and ∇L(cw) = ∇L(w)/c. An SGD step
  ``w ← w − η∇L(w)`` then moves the direction ``w/‖w‖`` by ``η‖∇L(ŵ)‖/‖w‖²``: the step on the sphere
  is that of SGD with learning rate

  .. math::
    \eta_\mathrm{eff} = \eta / \|w\|^2 \quad\text{(SGD-type)},\qquad
    \eta_\mathrm{eff} = \eta / \|w\| \quad\text{(Adam-type, whose step size does not scale with ‖∇L‖)}.

  Only meaningful for scale-invariant leaves: pass a mask selecting them (e.g.
  ``wd_optax.masks.scale_invariant``). A zero-norm leaf (or one whose squared norm underflows float32,
  ‖w‖ ≲ 1e-19) gets ``0.0`` (a zero vector has no direction
  to rotate; reporting 0 rather than inf keeps logs and averages finite); a result that would
  overflow float32 is clipped to the largest finite float32.

  Args:
    learning_rate: the current η (a number or scalar array, traced values allowed), or an optax
      schedule together with ``step``.
    params: a pytree of arrays.
    optimizer: ``"sgd"`` (power 2) or ``"adam"`` (power 1).
    mask: project mask convention; leaves outside it are ``None`` in the result.
    step: the step at which to evaluate ``learning_rate`` when it is a schedule.
    per_output_channel: one value per output channel (for per-filter normalisation).
    output_channel: ``"last"`` (flax, Haiku; the default) or ``"first"`` (Equinox).

  Returns:
    A pytree like ``params`` of float32 effective learning rates.

  Example:
    >>> import jax.numpy as jnp
    >>> from wd_optax.diagnostics import effective_learning_rate
    >>> effective_learning_rate(0.5, {"w": jnp.array([3.0, 4.0])})
    {'w': Array(0.02, dtype=float32)}
    >>> effective_learning_rate(0.5, {"w": jnp.array([3.0, 4.0])}, optimizer="adam")
    {'w': Array(0.1, dtype=float32)}

  References:
    Zhang, Wang, Xu, Grosse. Three Mechanisms of Weight Decay Regularization. ICLR 2019, §4.1.
    van Laarhoven. L2 Regularization versus Batch and Weight Normalization. 2017.
    Hoffer, Banner, Golan, Soudry. Norm matters. NeurIPS 2018.
  """
  _checks.check_choice(optimizer, "optimizer", tuple(_OPTIMIZER_POWERS))
  channel_axis = _channel_axis_of(output_channel)
  if callable(learning_rate):
    if step is None:
      raise ValueError(
          "effective_learning_rate: learning_rate is a schedule, so step is required "
          "(the step at which to evaluate it).")
    learning_rate = learning_rate(step)
  else:
    _checks.check_rate(learning_rate, "learning_rate")
  eta = jnp.asarray(learning_rate, jnp.float32)
  power = _OPTIMIZER_POWERS[optimizer]
  largest = jnp.finfo(jnp.float32).max

  def leaf_rate(w):
    sq = _sq_norm(w, _reduce_axes(w, per_output_channel, channel_axis))
    denominator = sq if power == 2 else jnp.sqrt(sq)
    safe = jnp.where(denominator > 0, denominator, 1.0)
    return jnp.where(denominator > 0, jnp.minimum(eta / safe, largest), 0.0)

  return masked_map(leaf_rate, params, mask=mask)


def angular_update(old_params: PyTree, new_params: PyTree, mask: Any = None, *,
                   per_output_channel: bool = False, output_channel: str = "last") -> PyTree:
  r"""Angle in radians between each leaf before and after a step.

  .. math::
    \theta_\ell = \angle(w_\ell, w'_\ell)
      = 2\,\operatorname{atan2}\big(\|\hat w_\ell - \hat w'_\ell\|,\ \|\hat w_\ell + \hat w'_\ell\|\big),
    \qquad \hat w = w/\|w\|,

  which equals ``arccos(⟨w, w'⟩/‖w‖‖w'‖)`` but stays accurate for angles near 0 (where the arccos of
  a cosine rounded to 1 is 0) and near π. The angle is 0 when either vector is zero. Under decay the
  angle of a scale-invariant leaf settles at :func:`equilibrium_angular_update`; FixNorm predicts it
  tracks η_t/c² when the norm is pinned to c (Zhou et al.).

  Args:
    old_params: parameters before the step.
    new_params: parameters after the step (same structure).
    mask: project mask convention, resolved against ``old_params``; leaves outside it are ``None``.
    per_output_channel: one angle per output channel.
    output_channel: ``"last"`` (flax, Haiku; the default) or ``"first"`` (Equinox).

  Returns:
    A pytree like ``old_params`` of float32 angles in ``[0, π]``.

  Example:
    >>> import jax.numpy as jnp
    >>> from wd_optax.diagnostics import angular_update
    >>> angle = angular_update({"w": jnp.array([1.0, 0.0])}, {"w": jnp.array([1.0, 1.0])})
    >>> round(float(angle["w"]), 6)  # π/4
    0.785398

  References:
    Zhang, Wang, Xu, Grosse. Three Mechanisms of Weight Decay Regularization. ICLR 2019, §4.1.
    Kosson, Messmer, Jaggi. Rotational Equilibrium: How Weight Decay Balances Learning Across Neural
    Networks. ICML 2024.
  """
  channel_axis = _channel_axis_of(output_channel)
  old_paths = [p for p, _ in _tree.named_leaves(old_params)]
  new_paths = [p for p, _ in _tree.named_leaves(new_params)]
  if old_paths != new_paths:
    missing = sorted(set(old_paths) - set(new_paths))
    extra = sorted(set(new_paths) - set(old_paths))
    raise ValueError(
        "angular_update: old_params and new_params must have the same leaves; "
        f"missing from new_params: {missing[:10]}, not in old_params: {extra[:10]}.")
  for (path, old), (_, new) in zip(_tree.named_leaves(old_params), _tree.named_leaves(new_params)):
    if jnp.shape(old) != jnp.shape(new):
      raise ValueError(
          f"angular_update: parameter {path!r} has shape {jnp.shape(old)} in old_params but "
          f"{jnp.shape(new)} in new_params.")
  new_leaves = jax.tree.leaves(new_params)
  new_aligned = jax.tree.unflatten(jax.tree.structure(old_params), new_leaves)
  return masked_map(
      lambda a, b: safe_angle(a, b, _reduce_axes(a, per_output_channel, channel_axis)),
      old_params, new_aligned, mask=mask)


def equilibrium_angular_update(learning_rate: Any, weight_decay: Any,
                               momentum: Any = 0.0, *, optimizer: str = "sgd") -> jax.Array:
  r"""Predicted equilibrium angular step of a scale-invariant leaf (or neuron) under decay.

  .. math::
    \theta^\ast = \sqrt{2\eta\lambda / (1 + \mu)} \;\; (\texttt{"sgd"}), \qquad
    \theta^\ast = \sqrt{2\eta\lambda\,(1 - \beta_1) / (1 + \beta_1)} \;\; (\texttt{"adamw"})

  At equilibrium the norm growth from orthogonal gradient steps balances the shrinkage by decay;
  solving the two for the per-step angle gives θ* (the RMS angle, in the random-walk model of Kosson et
  al. 2024, Table 1). ``"sgd"`` holds for SGD with heavy-ball momentum μ and L2 decay in the momentum
  buffer (:func:`wd_optax.sgd` ``decay="l2"``, PyTorch's SGD); ``"adamw"`` for AdamW with lr-coupled
  decay (``optax.adamw``), with ``momentum`` its β₁. Both in expectation, once transients have died out
  (after a few multiples of :math:`1/(\eta\lambda)` steps).

  Args:
    learning_rate: η (number or array), >= 0.
    weight_decay: λ (number or array), >= 0.
    momentum: μ of SGD, or β₁ of AdamW, in [0, 1).
    optimizer: ``"sgd"`` (the default) or ``"adamw"``.

  Returns:
    θ* in radians, float32 (broadcast over array arguments).

  Example:
    >>> from wd_optax.diagnostics import equilibrium_angular_update
    >>> round(float(equilibrium_angular_update(0.1, 5e-4, momentum=0.9)), 6)
    0.007255
    >>> round(float(equilibrium_angular_update(1e-3, 0.1, momentum=0.9, optimizer="adamw")), 6)
    0.003244

  References:
    Wan, Zhu, Zhang, Sun. Spherical Motion Dynamics: Learning Dynamics of Normalized Neural Network
    using SGD and Weight Decay. NeurIPS 2021.
    Kosson, Messmer, Jaggi. Rotational Equilibrium. ICML 2024.
  """
  _checks.check_choice(optimizer, "optimizer", ("sgd", "adamw"))
  for value, name in ((learning_rate, "learning_rate"), (weight_decay, "weight_decay")):
    if not _checks.is_traced(value) and not callable(value) and np.ndim(value) == 0:
      _checks.check_rate(value, name)
    elif callable(value):
      raise TypeError(f"{name} must be a number or an array of values, got a callable {value!r}.")
  if not _checks.is_traced(momentum) and np.ndim(momentum) == 0:
    mu = float(momentum)
    if not (math.isfinite(mu) and 0.0 <= mu < 1.0):
      raise ValueError(f"momentum must be in [0, 1), got {momentum!r}.")
  eta = jnp.asarray(learning_rate, jnp.float32)
  lam = jnp.asarray(weight_decay, jnp.float32)
  mu = jnp.asarray(momentum, jnp.float32)
  if optimizer == "adamw":
    return jnp.sqrt(2.0 * eta * lam * (1.0 - mu) / (1.0 + mu))
  return jnp.sqrt(2.0 * eta * lam / (1.0 + mu))


def flatten_by_path(tree: PyTree, *, prefix: str = "") -> dict[str, Any]:
  """A per-leaf result as a flat ``{path: value}`` dict, skipping ``None`` (unmasked) leaves.

  Paths are the project's "/"-joined parameter names (``"conv/kernel"``); ``prefix`` is prepended
  with a "/" (``prefix="param_norm"`` gives ``"param_norm/conv/kernel"``), handy for logging.

  Example:
    >>> import jax.numpy as jnp
    >>> from wd_optax.diagnostics import flatten_by_path, weight_norms
    >>> norms = weight_norms({"conv": {"kernel": jnp.ones((2, 2))}, "head": {"bias": jnp.ones(3)}})
    >>> {k: float(v) for k, v in flatten_by_path(norms, prefix="norm").items()}
    {'norm/conv/kernel': 2.0, 'norm/head/bias': 1.7320507764816284}
  """
  flat = {}
  for path, value in _tree.named_leaves(tree):
    flat[f"{prefix}/{path}" if prefix else path] = value
  return flat
