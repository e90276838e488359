"""Float32 tolerances for comparing the results of two different programs.

Two programs that compute the same float32 quantity (jit vs eager, traced vs static, vmapped vs not, 8 devices
vs 1, our compiled code vs a numpy float64 reference built from the same float32 inputs) round differently:
XLA fuses, reorders and vectorises reductions differently on each CPU (Intel vs AMD). The difference is
float32 round-off *of the whole computation*, so it scales with the size of the array's largest entries, not
with each element: an entry that is small because of cancellation carries the absolute error of its large
neighbours. A relative tolerance per element (``rtol`` alone, or with a tiny ``atol``) therefore fails at
random on such entries, e.g. -0.0172 in a matrix whose largest entry is 0.42 was seen to differ by 2.6e-8
(1.5e-6 relative, 0.5 eps of the matrix's scale).

:func:`assert_close_scaled` compares with ``atol = c * eps32 * max|desired|`` over the whole array (per pytree
leaf). ``c`` is the allowed error in units of float32 round-off of the array's scale; pick it from the
computation (a few for one rounding, tens for long reductions or a few steps of training, hundreds for a
conditioned solve) and say why where it is large. Any ``c`` far below ``1 / eps32 ~ 8e6`` still catches a wrong
sign, a factor of 2 or a missing term of the array's size. Bit-identical programs (checkpoint resume, the same
jitted function twice) are compared exactly with ``np.testing.assert_array_equal`` instead.
"""

from __future__ import annotations

import jax
import numpy as np

EPS32 = float(np.finfo(np.float32).eps)   # 1.19e-7


def assert_close_scaled(actual, desired, *, c: float, scale: float | str | None = None, err_msg: str = "") -> None:
  """Assert ``|actual - desired| <= c * eps32 * max|desired|`` elementwise, the max over each whole array.

  Args:
    actual: an array, scalar or pytree of them.
    desired: the reference, same structure as ``actual`` (a list or scalar stands for one array where
      ``actual`` is one array).
    c: allowed error in float32 round-off units of the array's scale (``max|desired|``).
    scale: the scale to use instead of ``max|desired|``, where the compared values are a small difference of
      larger terms (e.g. an update ``w_new - w_old`` computed from ``w``); the same for every leaf. ``"tree"``:
      ``max|desired|`` over all leaves, for a tree whose leaves share one computation and some are round-off
      of the others (the gradient of a bias just before a batch norm is 0 up to the kernel gradients' noise).
    err_msg: prefixed to the failure message (with the leaf's path for trees).
  """
  if jax.tree_util.treedef_is_leaf(jax.tree.structure(actual)):
    pairs = [("", actual, desired)]
  else:
    a_leaves, a_def = jax.tree_util.tree_flatten_with_path(actual)
    d_leaves, d_def = jax.tree_util.tree_flatten(desired)
    assert a_def == d_def, f"{err_msg}: tree structures differ: {a_def} vs {d_def}"
    pairs = [(jax.tree_util.keystr(path), a, d) for (path, a), d in zip(a_leaves, d_leaves)]
  pairs = [(path, np.asarray(a, np.float64), np.asarray(d, np.float64)) for path, a, d in pairs]
  largest = lambda d: float(np.max(np.abs(d), initial=0.0, where=~np.isnan(d)))
  if isinstance(scale, str):
    assert scale == "tree", f"scale must be a number, None or 'tree', got {scale!r}"
    scale = max((largest(d) for _, _, d in pairs), default=0.0)
  for path, a, d in pairs:
    s = scale if scale is not None else largest(d)
    atol = c * EPS32 * s
    msg = " ".join(m for m in (err_msg, path, f"(atol = {c:g} eps32 x {s:.3g} = {atol:.3g})") if m)
    np.testing.assert_allclose(a, d, rtol=0, atol=atol, err_msg=msg)
