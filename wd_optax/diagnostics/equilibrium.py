"""Rotational equilibrium: the norms and gradient-to-weight ratios that decay settles scale-invariant weights at.

For a scale-invariant weight (followed by normalisation) the gradient is orthogonal to ``w`` and scales as
``1/‖w‖``. Decay shrinks ``‖w‖`` while orthogonal steps grow it; they balance at an equilibrium norm, where
the angle per step is :func:`wd_optax.diagnostics.equilibrium_angular_update` (Kosson et al. 2024) and the
ratio ``‖g‖/‖w‖`` settles too (Defazio 2025: as the learning rate is annealed at a fixed λ the equilibrium
ratio grows, which is why gradient norms rise at the end of training, and why AdamC ties λ to η).

All predictions hold in expectation, in the random-walk model (gradients uncorrelated across steps), once
transients have died out. Per-leaf results follow :mod:`wd_optax.diagnostics.norms`' conventions
(``mask``, ``per_output_channel``, ``output_channel``; ``None`` outside the mask; float32).

References:
  Kosson, Messmer & Jaggi, *Rotational Equilibrium: How Weight Decay Balances Learning Across Neural
  Networks*, ICML 2024, arXiv:2305.17212.
  Defazio, *Why Gradients Rapidly Increase Near the End of Training*, 2025, arXiv:2506.02285.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from wd_optax import _checks
from wd_optax import _tree
from wd_optax.diagnostics import norms as _norms

PyTree = Any

__all__ = ["equilibrium_norm", "gradient_to_weight_ratio", "equilibrium_gradient_to_weight_ratio"]


def _check_hyperparameters(learning_rate: Any, weight_decay: Any, momentum: Any) -> None:
  for value, name in ((learning_rate, "learning_rate"), (weight_decay, "weight_decay")):
    if callable(value):
      raise TypeError(f"{name} must be a number or an array of values, got a callable {value!r}.")
    if not _checks.is_traced(value) and np.ndim(value) == 0:
      _checks.check_rate(value, name, positive=True)
  if not _checks.is_traced(momentum) and np.ndim(momentum) == 0:
    mu = float(momentum)
    if not (math.isfinite(mu) and 0.0 <= mu < 1.0):
      raise ValueError(f"momentum must be in [0, 1), got {momentum!r}.")


def equilibrium_norm(learning_rate: Any, weight_decay: Any, params: PyTree, *, optimizer: str = "adamw",
                     momentum: Any = 0.9, grads: PyTree = None, mask: Any = None,
                     per_output_channel: bool = False, output_channel: str = "last") -> PyTree:
  r"""Predicted equilibrium norm of each scale-invariant leaf (or neuron).

  .. math::
    \lVert w\rVert^\ast = \sqrt{\frac{\eta C}{2\lambda}} \;\; (\texttt{"adamw"}), \qquad
    \lVert w\rVert^\ast = \Big(\frac{\eta\,\lVert\tilde g\rVert^2}{2\lambda(1-\mu)}\Big)^{1/4},\;
    \lVert\tilde g\rVert = \lVert g\rVert\,\lVert w\rVert \;\; (\texttt{"sgd"})

  with ``C`` the number of entries of the leaf (or neuron): Adam's normalised step has ``‖u‖² ≈ C`` per
  gradient, so the AdamW norm needs no gradient. SGD's step scales with the gradient, so its norm needs
  ``grads``: :math:`\tilde g`, the gradient the weight would have at unit norm, is ``‖g‖·‖w‖`` for a
  scale-invariant weight (so the prediction can be read at any point of training). ``"sgd"`` is SGD with
  heavy-ball momentum μ and L2 decay in the momentum buffer (:func:`wd_optax.sgd` ``decay="l2"``);
  ``"adamw"`` is lr-coupled AdamW.

  Args:
    learning_rate: η, a number (or scalar array).
    weight_decay: λ > 0.
    params: the parameters (their shapes give ``C``; their norms enter the SGD prediction).
    optimizer: ``"adamw"`` or ``"sgd"``.
    momentum: μ of SGD (unused for AdamW, whose β₁ does not enter the norm).
    grads: the gradients, like ``params``; required for ``"sgd"``, ignored for ``"adamw"``.
    mask, per_output_channel, output_channel: see :mod:`wd_optax.diagnostics.norms`.

  Returns:
    A pytree like ``params`` of float32 predicted norms (``None`` outside ``mask``).

  Example:
    >>> import jax.numpy as jnp
    >>> from wd_optax.diagnostics import equilibrium_norm
    >>> norms = equilibrium_norm(1e-3, 0.1, {"w": jnp.ones((64, 8))}, per_output_channel=True)
    >>> round(float(norms["w"][0]), 4)   # √(1e-3 · 64 / 0.2)
    0.5657

  References:
    Kosson, Messmer & Jaggi, *Rotational Equilibrium*, ICML 2024 (Table 1), arXiv:2305.17212.
  """
  _checks.check_choice(optimizer, "optimizer", ("adamw", "sgd"))
  _check_hyperparameters(learning_rate, weight_decay, momentum)
  channel_axis = _norms._channel_axis_of(output_channel)
  eta = jnp.asarray(learning_rate, jnp.float32)
  lam = jnp.asarray(weight_decay, jnp.float32)
  mu = jnp.asarray(momentum, jnp.float32)

  if optimizer == "adamw":
    def adamw_norm(w):
      axes = _norms._reduce_axes(w, per_output_channel, channel_axis)
      count = np.prod([np.shape(w)[a] for a in axes]) if axes is not None else np.size(w)
      shape = jnp.shape(_norms._norm(w, axes))
      return jnp.broadcast_to(jnp.sqrt(eta * float(count) / (2.0 * lam)), shape)
    return _norms.masked_map(adamw_norm, params, mask=mask)

  if grads is None:
    raise ValueError("equilibrium_norm(optimizer='sgd') needs grads: SGD's equilibrium norm depends on "
                     "the gradient norm at unit weight norm, ‖g‖·‖w‖.")

  def sgd_norm(w, g):
    axes = _norms._reduce_axes(w, per_output_channel, channel_axis)
    unit_grad_sq = _norms._sq_norm(g, axes) * _norms._sq_norm(w, axes)
    return jnp.power(eta * unit_grad_sq / (2.0 * lam * (1.0 - mu)), 0.25)
  return _norms.masked_map(sgd_norm, params, _aligned(grads, params), mask=mask)


def _aligned(tree: PyTree, params: PyTree) -> PyTree:
  """``tree`` restructured like ``params`` (same leaves in order), naming a path whose shape differs."""
  named_p, named_t = _tree.named_leaves(params), _tree.named_leaves(tree)
  if [p for p, _ in named_p] != [p for p, _ in named_t]:
    raise ValueError("grads must have the same leaves as params; got paths "
                     f"{[p for p, _ in named_t][:10]} for params {[p for p, _ in named_p][:10]}.")
  for (path, w), (_, g) in zip(named_p, named_t):
    if np.shape(w) != np.shape(g):
      raise ValueError(f"grads: parameter {path!r} has shape {np.shape(w)} but its gradient {np.shape(g)}.")
  return jax.tree.unflatten(jax.tree.structure(params), jax.tree.leaves(tree))


def gradient_to_weight_ratio(grads: PyTree, params: PyTree, mask: Any = None, *,
                             per_output_channel: bool = False, output_channel: str = "last") -> PyTree:
  r"""The ratio ‖g‖/‖w‖ of each leaf (or output channel): Defazio's diagnostic for the end of training.

  .. math::
    r_\ell = \lVert g_\ell\rVert / \lVert w_\ell\rVert

  For a scale-invariant weight at equilibrium it settles at
  :func:`equilibrium_gradient_to_weight_ratio`; it grows as η is annealed with λ fixed. A zero weight
  gives 0.

  Args:
    grads: the gradients, like ``params``.
    params: the parameters.
    mask, per_output_channel, output_channel: see :mod:`wd_optax.diagnostics.norms`.

  Returns:
    A pytree like ``params`` of float32 ratios (``None`` outside ``mask``).

  Example:
    >>> import jax.numpy as jnp
    >>> from wd_optax.diagnostics import gradient_to_weight_ratio
    >>> gradient_to_weight_ratio({"w": jnp.array([0.0, 1.0])}, {"w": jnp.array([3.0, 4.0])})
    {'w': Array(0.2, dtype=float32)}

  References:
    Defazio, *Why Gradients Rapidly Increase Near the End of Training*, 2025, arXiv:2506.02285.
  """
  channel_axis = _norms._channel_axis_of(output_channel)

  def ratio(w, g):
    axes = _norms._reduce_axes(w, per_output_channel, channel_axis)
    w_norm = _norms._norm(w, axes)
    return jnp.where(w_norm > 0, _norms._norm(g, axes) / jnp.where(w_norm > 0, w_norm, 1.0), 0.0)
  return _norms.masked_map(ratio, params, _aligned(grads, params), mask=mask)


def equilibrium_gradient_to_weight_ratio(learning_rate: Any, weight_decay: Any, momentum: Any = 0.0
                                         ) -> Any:
  r"""Predicted equilibrium ‖g‖/‖w‖ of a scale-invariant weight under SGD with momentum and L2 decay.

  .. math::
    \frac{\lVert g\rVert}{\lVert w\rVert} = \sqrt{\frac{2\lambda(1-\mu)}{\eta}}

  (``√(2λ/η)`` without momentum, Defazio 2025), from the SGD equilibrium norm of
  :func:`equilibrium_norm` and ``‖g‖ = ‖g̃‖/‖w‖``. It rises as ``1/√η`` when the learning rate is annealed
  at a fixed λ; decay coupled as ``λ_t ∝ η_t`` (``decoupled_decay(coupling="corrected")``, AdamC) holds it.

  Args:
    learning_rate: η > 0 (number or array).
    weight_decay: λ > 0 (number or array).
    momentum: μ in [0, 1).

  Returns:
    The predicted ratio, float32.

  Example:
    >>> from wd_optax.diagnostics import equilibrium_gradient_to_weight_ratio
    >>> round(float(equilibrium_gradient_to_weight_ratio(0.1, 5e-4)), 4)
    0.1

  References:
    Defazio, *Why Gradients Rapidly Increase Near the End of Training*, 2025, arXiv:2506.02285.
    Kosson, Messmer & Jaggi, *Rotational Equilibrium*, ICML 2024, arXiv:2305.17212.
  """
  _check_hyperparameters(learning_rate, weight_decay, momentum)
  eta = jnp.asarray(learning_rate, jnp.float32)
  lam = jnp.asarray(weight_decay, jnp.float32)
  mu = jnp.asarray(momentum, jnp.float32)
  return jnp.sqrt(2.0 * lam * (1.0 - mu) / eta)
