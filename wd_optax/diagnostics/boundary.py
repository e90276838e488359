"""Cross-boundary risk: how many samples sit on, or within a small logit perturbation of, a decision boundary.

FixNorm (Zhou, Sun & Zhong, arXiv:2103.15345) argues that weight decay on the final classifier, which
is not scale-invariant, controls a second quantity besides the effective learning rate: the risk that
samples cross the decision boundary. The paper does not give a formula we could reproduce exactly, so
this module defines a measurable version; it is *this toolkit's operationalisation*, not the paper's.

Definition (ours). For logits ``z_i ∈ R^K`` and label ``y_i`` the margin is

    m_i = z_{i, y_i} − max_{k ≠ y_i} z_{i, k}.

The prediction of sample ``i`` is wrong, or can be made wrong by a perturbation ``δ`` of its logits
with ``‖δ‖_p ≤ ε``, exactly when ``m_i ≤ c_p ε``, with ``c_1 = 1``, ``c_2 = √2``, ``c_∞ = 2`` (the
cheapest ``δ`` lowers the true logit and raises the runner-up; ties count as crossed). The
cross-boundary risk is the fraction of such samples:

    R_p(ε) = (1/N) Σ_i 1[m_i ≤ c_p ε].

``R(0)`` is the error rate (ties counted as errors). Because the threshold is in absolute logit units,
scaling the classifier by ``c`` scales every margin by ``c`` (for a bias-free head) and lowers the risk:
this is the knob FixNorm's classifier norm turns.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from wd_optax import _checks

__all__ = ["cross_boundary_risk"]

_NORM_CONSTANTS = {1: 1.0, 2: math.sqrt(2.0), math.inf: 2.0}


def _margins(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """``z_y − max_{k≠y} z_k`` per sample, in float32 (or wider)."""
  logits = jnp.asarray(logits, jnp.promote_types(jnp.result_type(logits), jnp.float32))
  num_classes = logits.shape[-1]
  one_hot = jax.nn.one_hot(labels, num_classes, dtype=bool)
  true_logit = jnp.sum(jnp.where(one_hot, logits, 0), axis=-1)
  best_other = jnp.max(jnp.where(one_hot, -jnp.inf, logits), axis=-1)
  return true_logit - best_other


def cross_boundary_risk(logits: jax.Array, labels: jax.Array, *, epsilon: Any = 0.0,
                        norm: float = 2, where: jax.Array | None = None) -> jax.Array:
  r"""Fraction of samples misclassified or within a logit perturbation of size ε of being so.

  This toolkit's operationalisation of FixNorm's cross-boundary risk (the paper gives no formula).
  With margin :math:`m_i = z_{i,y_i} - \max_{k \ne y_i} z_{i,k}`,

  .. math::

    R_p(\varepsilon) = \frac{1}{N} \sum_{i} \mathbf{1}\left[m_i \le c_p\,\varepsilon\right],
    \qquad c_1 = 1,\; c_2 = \sqrt{2},\; c_\infty = 2,

  which is exactly the fraction of samples whose prediction is wrong, tied, or flips under some
  perturbation :math:`\delta` of the logits with :math:`\lVert\delta\rVert_p \le \varepsilon`.
  ``ε = 0`` gives the error rate with ties counted as errors. The threshold is in absolute logit
  units, so a larger classifier norm (larger logits) means a lower risk at fixed ε. Jittable; ε may
  be traced.

  Args:
    logits: array ``(..., K)`` with ``K >= 2`` classes.
    labels: integer class indices of shape ``logits.shape[:-1]``.
    epsilon: perturbation size ``ε >= 0``: a scalar, or a 1-d array of sizes to get one risk per
      size (a risk curve) in one call.
    norm: the perturbation's norm ``p``: 1, 2 or ``math.inf``.
    where: optional boolean array of shape ``labels.shape``; only ``True`` samples count (e.g. to
      drop the padding of a last batch). If no sample counts the result is 0.

  Returns:
    A float32 scalar, or an array of ``epsilon``'s shape, in ``[0, 1]``.

  Raises:
    ValueError: mismatched shapes, fewer than 2 classes, non-integer labels, negative ε or an
      unsupported norm; concrete labels outside ``[0, K)``.

  Example:
    >>> import jax.numpy as jnp
    >>> from wd_optax.diagnostics import cross_boundary_risk
    >>> logits = jnp.array([[3.0, 0.0], [1.0, 0.5], [0.0, 2.0]])
    >>> labels = jnp.array([0, 0, 0])  # margins 3, 0.5, -2
    >>> print(cross_boundary_risk(logits, labels, epsilon=0.0))
    0.33333334
    >>> print(cross_boundary_risk(logits, labels, epsilon=0.5, norm=2))  # 0.5 <= sqrt(2) * 0.5
    0.6666667

  References:
    Zhou, Sun & Zhong, *FixNorm: Dissecting Weight Decay for Training Deep Neural Networks*,
    arXiv:2103.15345 (the concept; the formula above is ours).
  """
  constant = _NORM_CONSTANTS.get(norm if norm != float("inf") else math.inf)
  if constant is None or isinstance(norm, bool):
    raise ValueError(f"norm must be 1, 2 or math.inf, got {norm!r}.")
  logits_shape, labels_shape = jnp.shape(logits), jnp.shape(labels)
  if len(logits_shape) < 1 or logits_shape[-1] < 2:
    raise ValueError(
        f"logits must have shape (..., K) with K >= 2 classes, got shape {logits_shape}.")
  if labels_shape != logits_shape[:-1]:
    raise ValueError(
        f"labels must have shape logits.shape[:-1] = {logits_shape[:-1]} (integer class indices), "
        f"got shape {labels_shape}.")
  if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
    raise ValueError(
        f"labels must be integer class indices, got dtype {jnp.result_type(labels)}.")
  if not _checks.is_traced(labels):
    label_values = np.asarray(labels)
    if label_values.size and (label_values.min() < 0 or label_values.max() >= logits_shape[-1]):
      raise ValueError(
          f"labels must lie in [0, {logits_shape[-1]}) for {logits_shape[-1]} classes, got values "
          f"from {label_values.min()} to {label_values.max()}.")
  if np.ndim(epsilon) > 1:
    raise ValueError(f"epsilon must be a scalar or a 1-d array, got shape {np.shape(epsilon)}.")
  if not _checks.is_traced(epsilon):
    eps = np.asarray(epsilon, dtype=np.float64)
    if not np.all(np.isfinite(eps)) or np.any(eps < 0):
      raise ValueError(f"epsilon must be finite and >= 0, got {epsilon!r}.")
  if where is not None and jnp.shape(where) != labels_shape:
    raise ValueError(
        f"where must have the shape of labels {labels_shape}, got {jnp.shape(where)}.")

  margins = jnp.reshape(_margins(logits, labels), (-1,))
  weights = (jnp.ones_like(margins) if where is None
             else jnp.reshape(jnp.asarray(where, margins.dtype), (-1,)))
  thresholds = constant * jnp.asarray(epsilon, margins.dtype)
  at_risk = margins <= thresholds[..., None]
  counted = jnp.sum(weights)
  risk = jnp.sum(jnp.where(at_risk, weights, 0), axis=-1) / jnp.maximum(counted, 1)
  return risk.astype(jnp.float32)
