"""Input-Jacobian norm and Gauss–Newton norm of a network (Zhang et al. 2019, mechanism 2).

Under a Gauss–Newton-preconditioned update (K-FAC-G) decoupled decay is gradient descent on
L + λ/2·wᵀGw, and for a bias-free ReLU network of depth D, wᵀGw = (D+1)²·E_x[xᵀJ_xᵀJ_x x]: decay then
penalises the input–output Jacobian. The two functions here measure both sides of that identity.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from wd_optax import _checks
from wd_optax import _tree

PyTree = Any

__all__ = ["JacobianNormEstimate", "jacobian_norm", "gauss_newton_norm"]


class JacobianNormEstimate(NamedTuple):
  """A Monte-Carlo estimate and its standard error (probe noise only)."""
  value: jax.Array
  stderr: jax.Array


def _check_batch(x: Any, fn_name: str) -> None:
  for path, leaf in _tree.named_leaves(x):
    if jnp.ndim(leaf) < 1:
      raise ValueError(
          f"{fn_name}: x must be a batch with a leading example axis; the input "
          f"{path or '<x>'!r} is a scalar.")
  sizes = {jnp.shape(leaf)[0] for leaf in jax.tree.leaves(x)}
  if len(sizes) != 1:
    raise ValueError(f"{fn_name}: every leaf of x must have the same batch size, got {sorted(sizes)}.")


def jacobian_norm(apply_fn: Callable[[PyTree, Any], Any], params: PyTree, x: Any, key: jax.Array,
                  *, num_probes: int = 8, probe: str = "gaussian") -> JacobianNormEstimate:
  r"""Unbiased random-probe estimate of the mean squared Frobenius norm of the input Jacobian.

  For per-example outputs :math:`f(x_i) \in \mathbb{R}^k` and :math:`J_i = \partial f(x_i)/\partial x_i`,

  .. math::
    \frac1n\sum_{i=1}^n \|J_i\|_F^2
      = \frac1n\sum_i \mathbb{E}_r\,\|J_i^\top r\|^2,\qquad \mathbb{E}[rr^\top] = I,

  estimated with ``num_probes`` independent probes ``r`` per example, each costing one vector–Jacobian
  product. ``apply_fn`` is evaluated on each example alone (``vmap`` over a batch of one), so the
  Jacobian is per example even if the model mixes examples (call it in inference mode: batch
  statistics from a batch of one are meaningless).

  The standard error is that of the mean over probes of the per-probe batch means: it measures probe
  noise for the given batch, not the sampling of ``x`` from the data distribution.

  Args:
    apply_fn: ``apply_fn(params, x) -> outputs`` with a leading batch axis on ``x`` (a pytree) and on
      the outputs (an array or pytree, e.g. logits).
    params: the model parameters, passed through to ``apply_fn``.
    x: a batch of inputs (array or pytree of arrays with a shared leading axis).
    key: PRNG key for the probes.
    num_probes: probes per example, >= 2 (for a standard error).
    probe: ``"gaussian"`` (r ~ N(0, I)) or ``"rademacher"`` (±1 entries, lower variance).

  Returns:
    ``JacobianNormEstimate(value, stderr)``, float32 scalars.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from wd_optax.diagnostics import jacobian_norm
    >>> linear = lambda w, x: x @ w                  # J = wᵀ for every example, ‖J‖²_F = 14
    >>> w = jnp.array([[1.0, 0.0], [2.0, 3.0]])
    >>> est = jacobian_norm(linear, w, jnp.ones((4, 2)), jax.random.key(0), num_probes=4000)
    >>> bool(abs(est.value - 14.0) < 4 * est.stderr)
    True

  References:
    Zhang, Wang, Xu, Grosse. Three Mechanisms of Weight Decay Regularization. ICLR 2019, §4.2.
    Hutchinson. A stochastic estimator of the trace of the influence matrix. 1989.
    Novak et al. Sensitivity and Generalization in Neural Networks. ICLR 2018.
  """
  _checks.check_choice(probe, "probe", ("gaussian", "rademacher"))
  if not isinstance(num_probes, int) or num_probes < 2:
    raise ValueError(f"num_probes must be an int >= 2 (two probes give a standard error), got {num_probes!r}.")
  _check_batch(x, "jacobian_norm")

  def one_example(xi):
    return apply_fn(params, jax.tree.map(lambda a: a[None], xi))

  def per_example(xi):
    return jax.tree.map(lambda a: a[0], one_example(xi))

  outputs, vjp_fn = jax.vjp(jax.vmap(per_example), x)
  out_leaves, out_def = jax.tree.flatten(outputs)
  keys = jax.random.split(key, len(out_leaves))

  def draw(k, leaf):
    shape = (num_probes,) + jnp.shape(leaf)
    if probe == "gaussian":
      return jax.random.normal(k, shape, leaf.dtype)
    return jax.random.rademacher(k, shape, leaf.dtype)

  probes = jax.tree.unflatten(out_def, [draw(k, leaf) for k, leaf in zip(keys, out_leaves)])
  (cotangents,) = jax.vmap(vjp_fn)(probes)
  # ‖J_iᵀ r_ik‖² for every probe k and example i.
  sq = sum(
      jnp.sum(jnp.square(jnp.asarray(c, jnp.float32)).reshape(num_probes, jnp.shape(c)[1], -1), axis=-1)
      for c in jax.tree.leaves(cotangents))
  per_probe = jnp.mean(sq, axis=1)
  value = jnp.mean(per_probe)
  stderr = jnp.std(per_probe, ddof=1) / jnp.sqrt(float(num_probes))
  return JacobianNormEstimate(value, stderr)


def gauss_newton_norm(apply_fn: Callable[[PyTree, Any], Any], params: PyTree, x: Any, *,
                      mask: Any = None) -> jax.Array:
  r"""The Gauss–Newton norm wᵀGw of the parameters, with an identity output Hessian.

  .. math::
    w^\top G w,\qquad G = \frac1n \sum_{i=1}^n J_{w,i}^\top J_{w,i},\quad
    J_{w,i} = \frac{\partial f(x; w)_i}{\partial w},

  computed without forming G as :math:`\frac1n\sum_i \|J_{w,i}\, w\|^2`, one Jacobian–vector product of
  the outputs along the direction w (restricted to the leaves in ``mask``; the other leaves get a
  zero tangent, so the result is :math:`w_M^\top G w_M`). This is K-FAC-G's metric as Zhang et al. ran
  it (a Gaussian predictive on the logits); for a bias-free ReLU network with D hidden layers
  :math:`J_w w = (D+1) f(x)` (Euler's theorem for a homogeneous function), so wᵀGw = (D+1)²·mean‖f‖².

  Args:
    apply_fn: ``apply_fn(params, x) -> outputs`` (logits), leading batch axis on ``x`` and outputs.
    params: a pytree of float arrays.
    x: a batch of inputs.
    mask: project mask convention selecting the leaves that form the direction.

  Returns:
    wᵀGw as a float32 scalar.

  Example:
    >>> import jax.numpy as jnp
    >>> from wd_optax.diagnostics import gauss_newton_norm
    >>> linear = lambda w, x: x @ w                  # f linear in w: J_w w = f(x)
    >>> x, w = jnp.array([[1.0, 2.0]]), jnp.array([[1.0], [1.0]])
    >>> gauss_newton_norm(linear, w, x)
    Array(9., dtype=float32)

  References:
    Zhang, Wang, Xu, Grosse. Three Mechanisms of Weight Decay Regularization. ICLR 2019, §4.2.
    Martens. New insights and perspectives on the natural gradient method. JMLR 2020.
  """
  _check_batch(x, "gauss_newton_norm")
  resolved = _tree.resolve_mask(mask, params)
  direction = _tree.map_with_path(
      lambda path, w: w if resolved(path) else jnp.zeros_like(w), params)
  _, tangent = jax.jvp(lambda p: apply_fn(p, x), (params,), (direction,))
  leaves = jax.tree.leaves(tangent)
  batch = jnp.shape(leaves[0])[0]
  total = sum(jnp.sum(jnp.square(jnp.asarray(t, jnp.float32))) for t in leaves)
  return total / batch
