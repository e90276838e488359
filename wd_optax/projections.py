"""Weight-norm projections: FixNorm replaces weight decay by fixing weight norms directly.

For a layer followed by normalisation the loss is scale-invariant, ``L(c·w) = L(w)``, and weight decay
acts on it only through the effective learning rate ``η/‖w‖²``. FixNorm (Zhou, Sun & Zhong) drops the
decay and pins ``‖w‖`` instead, so the effective learning rate is set by the schedule alone; it pins the
norm of the (not scale-invariant) classifier too, which sets the logit scale.

References:
  Zhou, Sun & Zhong, *FixNorm: Dissecting Weight Decay for Training Deep Neural Networks*,
  arXiv:2103.15345.
  Zhang, Wang, Xu & Grosse, *Three Mechanisms of Weight Decay Regularization*, ICLR 2019,
  arXiv:1810.12281.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from wd_optax import _checks
from wd_optax import _tree

PyTree = Any
Target = Union[str, float, PyTree]

__all__ = ["FixNormState", "RadialProjectionState", "adamp", "fix_norm", "fixnorm", "radial_projection", "sgdp"]


class FixNormState(NamedTuple):
  """State of :func:`fix_norm`.

  Attributes:
    init_norms: with ``target="init"``, the norm each masked leaf had at ``init`` (a scalar, or one
      entry per output channel with ``per_channel=True``), keyed by parameter path; empty otherwise,
      because a float or pytree target is read from the transform's arguments at every update (so
      ``optax.inject_hyperparams`` can change it). The norms do not mirror the params, so
      ``optax.tree.map_params`` hands this entry to ``transform_non_params`` whole.
  """
  init_norms: dict[str, jax.Array]


def _channel_axes(leaf: Any, per_channel: bool, channel_axis: int = -1) -> tuple[int, ...]:
  """Axes summed over by the norm: all of them, or all but ``channel_axis`` (the output channel).

  The output channel is the last axis in flax and Haiku (``(in, out)``, ``(H, W, in, out)``) and the
  first in Equinox (``(out, in)``, ``(out, in, H, W)``).
  """
  ndim = np.ndim(leaf)
  if not per_channel:
    return tuple(range(ndim))
  keep = channel_axis % ndim
  return tuple(a for a in range(ndim) if a != keep)


def _compute_dtype(dtype: Any) -> Any:
  # Renormalising in at least float32 is what keeps the norm within ~1e-7 of its target; a
  # bfloat16 norm would be off by ~1e-3 before the result is even cast back.
  return jnp.promote_types(dtype, jnp.float32)


def _norms(leaf: jax.Array, per_channel: bool, channel_axis: int = -1) -> jax.Array:
  x = jnp.asarray(leaf, _compute_dtype(jnp.result_type(leaf)))
  return jnp.sqrt(jnp.sum(jnp.square(x), axis=_channel_axes(x, per_channel, channel_axis)))


_OUTPUT_CHANNEL_AXES = {"last": -1, "first": 0}


def _channel_axis_of(output_channel: Any) -> int:
  """The axis ``output_channel`` names: ``"last"`` (flax, Haiku) is -1, ``"first"`` (Equinox) is 0.

  A string rather than an int so that ``optax.inject_hyperparams`` leaves it alone: it would turn an
  int into a (traced, under ``jit``) array, and an axis must be static.
  """
  _checks.check_choice(output_channel, "output_channel", tuple(_OUTPUT_CHANNEL_AXES))
  return _OUTPUT_CHANNEL_AXES[output_channel]


def _check_leaf(path: str, leaf: Any, per_channel: bool, transform: str, channel_axis: int = -1
                ) -> None:
  if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
    raise TypeError(
        f"{transform}: parameter {path!r} has dtype {jnp.result_type(leaf)}; only floating-point "
        "leaves can have their norm fixed. Leave it out of the mask.")
  if per_channel and np.ndim(leaf) < 2:
    raise ValueError(
        f"{transform}: parameter {path!r} has shape {np.shape(leaf)}; per_channel=True fixes the "
        f"norm of each output channel (the {'last' if channel_axis == -1 else 'first'} axis) of a "
        "kernel with at least 2 axes, and a "
        f"{np.ndim(leaf)}-d leaf has no input axes to take the norm over. Leave it out of the mask "
        "(biases usually are).")


def _check_target_value(value: Any, path: str, leaf: Any, per_channel: bool, argname: str,
                        channel_axis: int = -1) -> None:
  """A target entry is a positive finite scalar, or with per_channel one entry per output channel."""
  if isinstance(value, (bool, np.bool_)) or isinstance(value, (str, bytes)):
    raise TypeError(
        f"{argname}: the target for parameter {path!r} is {value!r}; expected a positive float.")
  shape = np.shape(value)
  channels = np.shape(leaf)[channel_axis] if per_channel else None
  if shape != () and not (per_channel and shape == (channels,)):
    expected = "a scalar" + (f" or an array of shape ({channels},), one per output channel"
                             if per_channel else "")
    raise ValueError(
        f"{argname}: the target for parameter {path!r} has shape {shape}; expected {expected}.")
  if _checks.is_traced(value):
    return
  array = np.asarray(value, dtype=np.float64)
  if not np.all(np.isfinite(array)) or np.any(array <= 0):
    raise ValueError(
        f"{argname}: the target for parameter {path!r} must be positive and finite, got {value!r}.")


def _targets_by_path(target: PyTree, params: PyTree, masked: dict[str, Any], argname: str
                     ) -> dict[str, Any]:
  """Matches a pytree of targets to the masked parameters by path (exact or prefix)."""
  entries = dict(_tree.named_leaves(target))
  param_paths = [p for p, _ in _tree.named_leaves(params)]
  resolved = {}
  for path in masked:
    covering = [e for e in entries if e == "" or path == e or path.startswith(e + "/")]
    if not covering:
      raise ValueError(
          f"{argname} does not match the params: masked parameter {path!r} has no target. "
          f"Target entries: {sorted(entries)[:10]}{' ...' if len(entries) > 10 else ''}.")
    resolved[path] = entries[max(covering, key=len)]
  for entry in entries:
    if not any(entry == "" or p == entry or p.startswith(entry + "/") for p in param_paths):
      raise ValueError(
          f"{argname} does not match the params: target entry {entry!r} names no parameter. "
          f"Parameters: {param_paths[:10]}{' ...' if len(param_paths) > 10 else ''}.")
  return resolved


def _is_scalar_target(target: Any) -> bool:
  if isinstance(target, (bool, np.bool_, str, bytes)):
    return False
  if isinstance(target, (int, float, np.number)):
    return True
  return isinstance(target, (np.ndarray, jax.Array)) and np.shape(target) == ()


def _fix_norm(target: Target, per_channel: bool, mask: _tree.MaskOrFn, *, name: str,
              target_argname: str, mask_argname: str, output_channel: str = "last"
              ) -> optax.GradientTransformation:
  """:func:`fix_norm` with the argument names its errors use, so :func:`fixnorm` can name its own."""
  if isinstance(target, str):
    _checks.check_choice(target, target_argname, ("init",))
  elif isinstance(target, (bool, np.bool_)) or target is None or _tree.is_function(target):
    raise TypeError(
        f"{target_argname} must be 'init', a positive float or a pytree of positive floats, got "
        f"{target!r}.")
  elif _is_scalar_target(target) and not _checks.is_traced(target):
    number = float(np.asarray(target))
    if not math.isfinite(number) or number <= 0:
      raise ValueError(f"{target_argname} must be positive and finite, got {number}.")
  if not isinstance(per_channel, (bool, np.bool_)):
    raise TypeError(f"per_channel must be a bool, got {per_channel!r}.")
  channel_axis = _channel_axis_of(output_channel)

  def masked_leaves(params: PyTree) -> dict[str, Any]:
    resolved = _tree.resolve_mask(mask, params, argname=mask_argname)
    leaves = {p: leaf for p, leaf in _tree.named_leaves(params) if resolved(p)}
    for path, leaf in leaves.items():
      _check_leaf(path, leaf, per_channel, name, channel_axis)
    return leaves

  def targets_for(params: PyTree, masked: dict[str, Any]) -> dict[str, Any]:
    if isinstance(target, str):
      return {}
    if _is_scalar_target(target):
      return {path: target for path in masked}
    by_path = _targets_by_path(target, params, masked, target_argname)
    for path, value in by_path.items():
      _check_target_value(value, path, masked[path], per_channel, target_argname, channel_axis)
    return by_path

  def init_fn(params: PyTree) -> FixNormState:
    _checks.require_params(params, name)
    if _checks.is_params_placeholder(params):
      # optax.tree.map_params: the init norms are per-leaf scalars keyed by masked path, not a tree
      # mirroring the params, so the whole entry is one non-parameter value.
      return FixNormState(init_norms=_tree.NOT_PARAM_SHAPED if isinstance(target, str) else {})
    masked = masked_leaves(params)
    targets_for(params, masked)
    norms = {path: _norms(leaf, per_channel, channel_axis) for path, leaf in masked.items()}
    for path, norm in norms.items():
      if _checks.is_traced(norm):
        continue  # A traced init cannot raise; a zero leaf then stays zero (see fix_norm).
      zero = np.flatnonzero(np.asarray(norm) == 0)
      if zero.size:
        where = f" (output channels {zero[:10].tolist()})" if per_channel else ""
        raise ValueError(
            f"{name}: parameter {path!r} has zero norm{where} at init, so it has no direction to "
            "keep; FixNorm needs a non-zero initialisation of every masked leaf (a zero-initialised "
            "head or bias must be left out of the mask, or initialised randomly).")
    if isinstance(target, str):
      return FixNormState(init_norms=norms)
    return FixNormState(init_norms={})

  def update_fn(updates: PyTree, state: FixNormState, params: PyTree = None
                ) -> tuple[PyTree, FixNormState]:
    _checks.require_params(params, name)
    _checks.check_updates_match_params(updates, params, name)
    masked = masked_leaves(params)
    if isinstance(target, str):
      if set(state.init_norms) != set(masked):
        raise ValueError(
            f"{name}: the masked parameters {sorted(masked)[:10]} differ from those seen at init "
            f"{sorted(state.init_norms)[:10]}; call init with the same parameter tree.")
      targets = state.init_norms
    else:
      targets = targets_for(params, masked)

    def project(path: str, update: jax.Array, param: jax.Array) -> jax.Array:
      if path not in masked:
        return update
      dtype = _compute_dtype(jnp.result_type(param, update))
      param_c = jnp.asarray(param, dtype)
      moved = param_c + jnp.asarray(update, dtype)
      axes = _channel_axes(moved, per_channel, channel_axis)
      norm = jnp.sqrt(jnp.sum(jnp.square(moved), axis=axes, keepdims=True))
      radius = jnp.asarray(targets[path], dtype)
      if per_channel:
        radius = jnp.reshape(jnp.broadcast_to(radius, (norm.shape[channel_axis],)), norm.shape)
      # w + u = 0 has no direction: the leaf (or channel) keeps w, which already has the target
      # norm; the `where` on the divisor keeps the untaken branch, and its gradient, NaN-free.
      nonzero = norm > 0
      direction = moved / jnp.where(nonzero, norm, 1)
      new_param = jnp.where(nonzero, direction * radius, param_c)
      return (new_param - param_c).astype(jnp.result_type(update))

    new_updates = _tree.map_with_path(project, updates, params)
    return new_updates, state

  return optax.GradientTransformation(init_fn, update_fn)


def fix_norm(*, target: Target = "init", per_channel: bool = False,
             mask: _tree.MaskOrFn = None, output_channel: str = "last"
             ) -> optax.GradientTransformation:
  r"""Changes the update so that each masked parameter lands on a sphere of fixed norm.

  Put it last in a chain, after the learning rate is applied. With the incoming update ``u`` and
  target norm ``r``,

  .. math::

    w_{new} = r\,\frac{w + u}{\lVert w + u \rVert}, \qquad u_{out} = w_{new} - w,

  so ``optax.apply_updates`` produces ``w_new`` (to float rounding: the norm is within ~1e-7
  relative of ``r`` for float32 parameters). Leaves outside ``mask`` get their incoming update back
  unchanged (the same array). This is the projection FixNorm uses in place of weight decay: for a
  scale-invariant leaf it fixes the effective learning rate at ``η_t / r²``.

  Norms: with ``per_channel=False`` the Frobenius norm of the whole leaf; with ``per_channel=True``
  the norm of each output channel, i.e. over all axes but the output-channel one (by default the
  last).
  In flax's (and Haiku's) layouts the last axis is the output feature of a Dense kernel ``(in, out)``
  — so a classifier kernel ``(features, classes)`` gets one norm per class column ``kernel[:, k]`` —
  and the output channel of a Conv kernel ``(H, W, in, out)``. Equinox stores the output channel
  first (``Linear.weight`` is ``(out, in)``, ``Conv2d.weight`` ``(out, in, H, W)``): pass
  ``output_channel="first"`` for it; with the default ``"last"`` an Equinox weight would get one norm
  per *input* feature (or per kernel column) instead. Leaves with fewer than two axes cannot be fixed per channel
  (error).

  Degenerate cases: a masked leaf (or channel) with zero norm at ``init`` is a ``ValueError`` naming
  its path, since it has no direction (checked when ``init`` runs on concrete values; a traced
  ``init`` cannot raise). If ``w + u = 0`` exactly during training, that leaf (or channel) keeps
  ``w`` — the output update is 0 there — and no NaN is produced, under ``jit`` too. NaN or inf in
  ``w + u`` propagate, so a diverging run stays visible.

  Args:
    target: ``"init"`` — each leaf keeps the norm it had at ``init`` (kept in the state); a positive
      float for every masked leaf; or a pytree of positive floats matched to the parameters by path
      (an entry may name a parameter or a prefix of its path, as masks do; entries for unmasked
      parameters are ignored; with ``per_channel`` an entry may also be an array with one norm per
      output channel). A float or pytree target is read at each update, so it can be injected.
    per_channel: fix the norm of each output channel (see ``output_channel``) instead of the whole
      leaf.
    mask: which parameters to project: ``None`` (all), a pytree of bools, or a callable from params
      to one (e.g. ``wd_optax.masks.kernels()``).
    output_channel: with ``per_channel``, where the output channel of every masked leaf is:
      ``"last"`` (flax, Haiku; the default) or ``"first"`` (Equinox). Ignored without
      ``per_channel``; a string so that ``optax.inject_hyperparams`` keeps it static.

  Returns:
    An ``optax.GradientTransformation`` whose ``update`` needs ``params``; its state is a
    :class:`FixNormState`.

  Raises:
    ValueError: zero-norm masked leaf at ``init``; a target pytree or mask that does not match the
      params (the message names the path); a non-positive target; ``per_channel`` on a leaf with
      fewer than two axes; ``output_channel`` not ``"last"`` or ``"first"``.

  Example:
    >>> import jax.numpy as jnp, optax, wd_optax
    >>> params = {"w": jnp.array([3.0, 4.0]), "b": jnp.array([1.0])}
    >>> tx = optax.chain(optax.sgd(0.1),
    ...                  wd_optax.fix_norm(mask={"w": True, "b": False}))
    >>> state = tx.init(params)
    >>> grads = {"w": jnp.array([1.0, -2.0]), "b": jnp.array([1.0])}
    >>> updates, state = tx.update(grads, state, params)
    >>> new = optax.apply_updates(params, updates)
    >>> print(round(float(jnp.linalg.norm(new["w"])), 5), new["b"])
    5.0 [0.9]

  References:
    Zhou, Sun & Zhong, *FixNorm: Dissecting Weight Decay for Training Deep Neural Networks*,
    arXiv:2103.15345.
  """
  return _fix_norm(target, per_channel, mask, name="fix_norm", target_argname="target",
                   mask_argname="mask", output_channel=output_channel)


def fixnorm(learning_rate: optax.ScalarOrSchedule, *, classifier_norm: Any,
            classifier_mask: _tree.MaskOrFn, scale_invariant_mask: _tree.MaskOrFn,
            momentum: float | None = 0.9, nesterov: bool = False, per_channel: bool = False,
            classifier_per_class: bool = False, output_channel: str = "last"
            ) -> optax.GradientTransformation:
  r"""FixNorm: SGD with momentum and no weight decay, with the weight norms held fixed instead.

  .. math::

    m_t = \mu m_{t-1} + g_t, \qquad v_t = w_t - \eta_t\,m_t \;\;(\text{or } g_t + \mu m_t
    \text{ with Nesterov}),

    w_{t+1} = \begin{cases} \lVert w_0 \rVert\, v_t / \lVert v_t \rVert & \text{scale-invariant leaves} \\
    c\, v_t / \lVert v_t \rVert & \text{classifier leaves} \\ v_t & \text{all others} \end{cases}

  The chain is ``optax.trace(momentum, nesterov)``, ``optax.scale_by_learning_rate``, then
  :func:`fix_norm` with ``target="init"`` on ``scale_invariant_mask`` and :func:`fix_norm` with
  ``target=classifier_norm`` on ``classifier_mask``. Nothing in it decays weights: unmasked leaves
  follow ``optax.sgd(learning_rate, momentum, nesterov)`` exactly. For a scale-invariant leaf of
  fixed norm ``r`` the angular update per step is about ``η_t‖g̃‖/r²`` (``g̃`` the gradient at unit
  norm), so the schedule alone sets the effective learning rate; the classifier norm ``c`` sets the
  logit scale and with it the cross-boundary risk
  (:func:`wd_optax.diagnostics.cross_boundary_risk`).

  Args:
    learning_rate: a float or an optax schedule.
    classifier_norm: the classifier's norm ``c``: a positive float, or a pytree of them matched by
      path (see :func:`fix_norm`'s ``target``).
    classifier_mask: the classifier kernel(s); usually not the bias, which FixNorm leaves free.
    scale_invariant_mask: the leaves followed by normalisation (e.g. from
      ``wd_optax.masks.scale_invariant``), fixed at their norm at ``init``. Must not overlap
      ``classifier_mask``.
    momentum: heavy-ball coefficient ``μ`` in ``[0, 1)``; ``None`` for no momentum buffer (as in
      :func:`wd_optax.sgd`).
    nesterov: use Nesterov momentum.
    per_channel: fix each output channel of the scale-invariant leaves (last axis) rather than the
      whole leaf.
    classifier_per_class: fix each class row of the classifier — for a flax Dense kernel
      ``(features, classes)`` the column ``kernel[:, k]`` — to norm ``c`` instead of the whole matrix.
    output_channel: where the output channel (class) is for ``per_channel`` and
      ``classifier_per_class``: ``"last"`` for flax and Haiku kernels (the default), ``"first"`` for
      Equinox weights ``(out, in)`` — with it an Equinox classifier ``(classes, features)`` gets one
      norm per row ``weight[k]``.

  Returns:
    An ``optax.GradientTransformation`` (its ``update`` needs ``params``).

  Raises:
    ValueError: overlapping masks (naming the path), a bad rate or norm, and every error of
      :func:`fix_norm`.

  Example:
    >>> import jax, jax.numpy as jnp, optax, wd_optax
    >>> params = {"hidden": jnp.ones((3, 4)), "head": jnp.ones((4, 2))}
    >>> tx = wd_optax.fixnorm(0.1, classifier_norm=2.0,
    ...                       classifier_mask={"hidden": False, "head": True},
    ...                       scale_invariant_mask={"hidden": True, "head": False})
    >>> state = tx.init(params)
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> updates, state = tx.update(grads, state, params)
    >>> new = optax.apply_updates(params, updates)
    >>> print(round(float(jnp.linalg.norm(new["hidden"])), 4), round(float(jnp.linalg.norm(new["head"])), 4))
    3.4641 2.0

  References:
    Zhou, Sun & Zhong, *FixNorm: Dissecting Weight Decay for Training Deep Neural Networks*,
    arXiv:2103.15345.
  """
  _checks.check_rate(learning_rate, "learning_rate")
  # Scalar arrays arrive here from optax.inject_hyperparams.
  _checks.check_number(momentum, "momentum", unit_interval=True, allow_none=True,
                       what="a float in [0, 1) or None")
  if not isinstance(nesterov, (bool, np.bool_)):
    raise TypeError(f"nesterov must be a bool, got {nesterov!r}.")
  if not isinstance(classifier_per_class, (bool, np.bool_)):
    raise TypeError(f"classifier_per_class must be a bool, got {classifier_per_class!r}.")

  scale_invariant = _fix_norm("init", per_channel, scale_invariant_mask, name="fixnorm",
                              target_argname="target", mask_argname="scale_invariant_mask",
                              output_channel=output_channel)
  classifier = _fix_norm(classifier_norm, classifier_per_class, classifier_mask, name="fixnorm",
                         target_argname="classifier_norm", mask_argname="classifier_mask",
                         output_channel=output_channel)
  # Same ops as optax.sgd, so leaves outside both masks follow it bitwise.
  inner = optax.chain(
      optax.trace(decay=momentum, nesterov=nesterov) if momentum is not None else optax.identity(),
      optax.scale_by_learning_rate(learning_rate),
      scale_invariant,
      classifier,
  )

  def init_fn(params: PyTree) -> Any:
    _checks.require_params(params, "fixnorm")
    if _checks.is_params_placeholder(params):  # optax.tree.map_params: nothing to check against
      return inner.init(params)
    invariant = _tree.resolve_mask(scale_invariant_mask, params, argname="scale_invariant_mask")
    head = _tree.resolve_mask(classifier_mask, params, argname="classifier_mask")
    both = [p for p in invariant.by_path if invariant(p) and head(p)]
    if both:
      raise ValueError(
          f"fixnorm: parameter {both[0]!r} is in both scale_invariant_mask and classifier_mask; "
          "a leaf can have only one fixed norm.")
    return inner.init(params)

  return optax.GradientTransformation(init_fn, inner.update)


# --- Radial projection (AdamP / SGDP) ---------------------------------------------------------------


class RadialProjectionState(NamedTuple):
  """State of :func:`radial_projection`: the wrapped direction's state and the decay's."""
  direction: optax.OptState
  decay: optax.OptState


def _radial_project(d: jax.Array, g: jax.Array, w: jax.Array, delta: Any, eps: Any, channel_axis: int
                    ) -> tuple[jax.Array, jax.Array]:
  """The update ``d`` without its radial part where ``w`` looks scale-invariant, and whether it did.

  Every sum over the whole leaf is a sum of the per-channel sums, so one pass over ``(w, g, d)``
  gives both views. The barrier keeps it that way: without it XLA rewrites each sum of sums as a
  second reduction over the whole leaf, and on CPU recomputes the sums inside the elementwise
  pass that follows (about 3x slower).
  """
  dtype = _compute_dtype(jnp.result_type(d))
  shape = np.shape(d)
  # A 2-d view (channels on one axis, a free reshape) reduces faster than the leaf's own axes.
  if len(shape) >= 2 and channel_axis % len(shape) == 0:
    view, axis = (shape[0], -1), 1
  else:
    view, axis = (-1, shape[-1] if shape else 1), 0
  x, gx, dx = (jnp.asarray(a, dtype).reshape(view) for a in (w, g, d))
  wg_c, ww_c, gg_c, wd_c = (jnp.sum(a * b, axis=axis, keepdims=True)
                            for a, b in ((x, gx), (x, x), (gx, gx), (x, dx)))
  wg_c, ww_c, gg_c, wd_c = jax.lax.optimization_barrier((wg_c, ww_c, gg_c, wd_c))
  size = x.size
  channels = wg_c.size

  def cosine(wg, ww, gg):
    return jnp.abs(wg) / (jnp.maximum(jnp.sqrt(gg), eps) * jnp.maximum(jnp.sqrt(ww), eps))

  by_channel = jnp.max(cosine(wg_c, ww_c, gg_c)) < delta / math.sqrt(size / channels)
  wg, ww, gg, wd = (jnp.sum(a) for a in (wg_c, ww_c, gg_c, wd_c))
  by_layer = cosine(wg, ww, gg) < delta / math.sqrt(size)
  coef = jnp.where(by_channel, wd_c / jnp.square(jnp.sqrt(ww_c) + eps),
                   jnp.where(by_layer, wd / jnp.square(jnp.sqrt(ww) + eps), 0.0))
  return (dx - coef * x).reshape(shape).astype(d.dtype), by_channel | by_layer


def radial_projection(
    direction: optax.GradientTransformation,
    decay: optax.GradientTransformation | None = None,
    *,
    delta: float = 0.1,
    wd_ratio: float = 0.1,
    eps: float = 1e-8,
    mask: _tree.MaskOrFn = None,
    output_channel: str = "last",
) -> optax.GradientTransformation:
  r"""Removes the radial part of an optimizer's step on the weights that look scale-invariant (AdamP, SGDP).

  Wraps ``direction`` (the optimizer's step, learning rate included, e.g.
  ``optax.chain(optax.scale_by_adam(), optax.scale_by_learning_rate(lr))``), which gets the raw
  gradient :math:`g`; then, per masked leaf :math:`w` with step :math:`d`, it tests the cosine between
  :math:`g` and :math:`w` in two views, each output channel :math:`c` (size :math:`n_c`) and the whole
  leaf (size :math:`n`):

  .. math::
    \text{channel: } \max_c |\cos(g_c, w_c)| < \delta/\sqrt{n_c}, \qquad
    \text{layer: } |\cos(g, w)| < \delta/\sqrt{n}.

  If the channel test passes, each channel's step loses its component along :math:`w_c`; else, if the
  layer test passes, the leaf's step loses its component along :math:`w`:

  .. math::
    d \leftarrow d - \frac{\langle w, d\rangle}{(\lVert w\rVert + \epsilon)^2}\, w,

  and the decay of that leaf is scaled by ``wd_ratio``: with ``decay`` (a transform that adds a decay
  step, e.g. :func:`wd_optax.decoupled_decay`, put after the projection) the output is
  :math:`d + r\,(\mathrm{decay}(d) - d)` with :math:`r` = ``wd_ratio`` where the leaf was projected and 1
  elsewhere. A scale-invariant weight's gradient is orthogonal to it, so a small cosine is the sign of
  one; the radial part of a momentum step only grows the norm, which slows the effective learning rate.

  Cosines are :math:`\langle g, w\rangle / (\max(\lVert g\rVert,\epsilon)\max(\lVert w\rVert,\epsilon))`;
  the sums run in at least float32.

  Args:
    direction: the wrapped optimizer step; it gets the raw gradients, its state and ``params``.
    decay: optional decay transform applied after the projection, its step scaled by ``wd_ratio`` on
      projected leaves; ``None`` for no decay.
    delta: :math:`\delta`, the cosine threshold.
    wd_ratio: the decay multiplier on projected leaves.
    eps: :math:`\epsilon` in the norms.
    mask: the leaves that may be projected; ``None`` means every leaf with at least two axes (as the
      authors' code: biases and norm scales are never projected). A masked vector counts each entry
      as a channel.
    output_channel: the channel axis: ``"last"`` (flax, Haiku; the default) or ``"first"`` (Equinox,
      PyTorch).

  Returns:
    An ``optax.GradientTransformation`` whose ``update`` needs ``params``; its state is a
    :class:`RadialProjectionState`.

  Example:
    >>> import jax.numpy as jnp, optax, wd_optax
    >>> tx = wd_optax.projections.radial_projection(optax.sgd(0.1), delta=0.1)
    >>> params = {"w": jnp.array([[1.0], [0.0]])}       # one output channel of 2 entries
    >>> grads = {"w": jnp.array([[0.05], [1.0]])}       # cos(g, w) = 0.05 < 0.1 / sqrt(2)
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> [round(u, 6) for u in updates["w"][:, 0].tolist()]   # the radial -0.005 is gone
    [0.0, -0.1]

  References:
    Heo, Chun, Oh, Han, Yun, Kim, Uh, Ha. *AdamP: Slowing Down the Slowdown for Momentum Optimizers
    on Scale-invariant Weights.* ICLR 2021. Code: github.com/clovaai/AdamP.
  """
  channel_axis = _channel_axis_of(output_channel)
  _checks.check_number(delta, "delta")
  _checks.check_number(wd_ratio, "wd_ratio")
  _checks.check_number(eps, "eps")
  decay_tx = decay if decay is not None else optax.identity()

  def selected(params):
    if mask is None:
      return _tree.ResolvedMask({p: np.ndim(leaf) >= 2 for p, leaf in _tree.named_leaves(params)})
    return _tree.resolve_mask(mask, params)

  def init_fn(params):
    if not _checks.is_params_placeholder(params):
      _checks.check_decayed_leaves(params, selected(params), "radial_projection",
                                   reason="the radial projection acts")
    return RadialProjectionState(direction=direction.init(params), decay=decay_tx.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    _checks.require_params(params, "radial_projection")
    _checks.check_updates_match_params(updates, params, "radial_projection")
    grads = updates
    steps, direction_state = optax.with_extra_args_support(direction).update(
        grads, state.direction, params, **extra_args)
    resolved = selected(params)
    projected = _tree.map_with_path(
        lambda path, d, g, w: _radial_project(d, g, w, delta, eps, channel_axis) if resolved(path) else (d, None),
        steps, grads, params)
    is_pair = lambda x: isinstance(x, tuple) and len(x) == 2
    steps = jax.tree.map(lambda pair: pair[0], projected, is_leaf=is_pair)
    flags = jax.tree.map(lambda pair: pair[1], projected, is_leaf=is_pair)
    if decay is None:
      return steps, RadialProjectionState(direction_state, state.decay)
    decayed, decay_state = optax.with_extra_args_support(decay).update(steps, state.decay, params, **extra_args)

    def scale_decay(d, dd, flag):
      if flag is None:
        return dd
      ratio = jnp.where(flag, wd_ratio, 1.0)
      return (d + ratio * (dd - d)).astype(dd.dtype)

    out = jax.tree.map(scale_decay, steps, decayed, flags, is_leaf=lambda x: x is None)
    return out, RadialProjectionState(direction_state, decay_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _momentum_scaled(rate: optax.ScalarOrSchedule, momentum: Any) -> optax.ScalarOrSchedule:
  """``rate / (1 - momentum)``, for a number or a schedule."""
  if momentum is None:
    return rate
  if callable(rate):
    return lambda count: rate(count) / (1.0 - momentum)
  return rate / (1.0 - momentum)


def adamp(
    learning_rate: optax.ScalarOrSchedule,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    delta: float = 0.1,
    wd_ratio: float = 0.1,
    coupling: str = "lr",
    peak_learning_rate: float | None = None,
    mask: _tree.MaskOrFn = None,
    projection_mask: _tree.MaskOrFn = None,
    output_channel: str = "last",
) -> optax.GradientTransformation:
  r"""AdamP: AdamW whose step loses its radial part on weights that look scale-invariant.

  .. math::
    d_t = \eta_t\, \hat m_t / (\sqrt{\hat v_t} + \epsilon), \qquad
    d_t \leftarrow \Pi_{w_t}(d_t), \qquad
    w_{t+1} = w_t - d_t - r\, c_t \lambda_t w_t,

  where :math:`\Pi_{w}` removes the component along :math:`w` (per channel or per leaf) and
  :math:`r` = ``wd_ratio`` on the leaves where the test of :func:`radial_projection` passes, 1 elsewhere
  (and :math:`\Pi` the identity there); :math:`c_t = \eta_t` with the default coupling, as in the
  authors' code. With ``weight_decay=0`` and no leaf projected this is ``optax.adam``.

  Args:
    learning_rate: :math:`\eta`, a number or an optax schedule.
    b1, b2, eps: Adam's, as in ``optax.scale_by_adam``; ``eps`` is also the projection's :math:`\epsilon`.
    weight_decay: :math:`\lambda`, a number >= 0 or a schedule.
    delta: the cosine threshold :math:`\delta` of the scale-invariance test.
    wd_ratio: the decay multiplier on projected leaves.
    coupling, peak_learning_rate: the decay's coupling (see :func:`wd_optax.decoupled_decay`).
    mask: which leaves to decay (see :mod:`wd_optax.masks`).
    projection_mask: which leaves may be projected; ``None``: every leaf with at least two axes.
    output_channel: ``"last"`` (flax, Haiku) or ``"first"`` (Equinox, PyTorch).

  Returns:
    An ``optax.GradientTransformation`` (its ``update`` needs ``params``).

  Example:
    >>> import jax.numpy as jnp, optax, wd_optax
    >>> tx = wd_optax.adamp(1e-3, weight_decay=1e-2)
    >>> params = {"w": jnp.array([[1.0, 0.0], [0.0, 1.0]])}
    >>> grads = {"w": jnp.array([[0.0, 1.0], [1.0, 0.0]])}
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> [[round(u, 7) for u in row] for row in updates["w"].tolist()]  # decay 1e-5 x wd_ratio 0.1
    [[-1e-06, -0.001], [-0.001, -1e-06]]

  References:
    Heo et al. *AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant Weights.*
    ICLR 2021.
  """
  from wd_optax.decoupled import decoupled_decay  # decoupled imports nothing from here
  _checks.check_rate(learning_rate, "learning_rate")
  _checks.check_number(b1, "b1", unit_interval=True)
  _checks.check_number(b2, "b2", unit_interval=True)
  _checks.check_number(eps, "eps")
  return radial_projection(
      optax.chain(optax.scale_by_adam(b1=b1, b2=b2, eps=eps), optax.scale_by_learning_rate(learning_rate)),
      decoupled_decay(weight_decay, coupling=coupling, learning_rate=learning_rate,
                      peak_learning_rate=peak_learning_rate, mask=mask),
      delta=delta, wd_ratio=wd_ratio, eps=eps, mask=projection_mask, output_channel=output_channel)


def sgdp(
    learning_rate: optax.ScalarOrSchedule,
    *,
    momentum: float | None = 0.9,
    nesterov: bool = False,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    delta: float = 0.1,
    wd_ratio: float = 0.1,
    eps: float = 1e-8,
    mask: _tree.MaskOrFn = None,
    projection_mask: _tree.MaskOrFn = None,
    output_channel: str = "last",
) -> optax.GradientTransformation:
  r"""SGDP: SGD with momentum whose step loses its radial part on weights that look scale-invariant.

  .. math::
    b_t = \mu b_{t-1} + g_t, \quad d_t = \eta_t b_t \;(\eta_t(g_t + \mu b_t) \text{ with Nesterov}), \quad
    d_t \leftarrow \Pi_{w_t}(d_t), \quad
    w_{t+1} = w_t - d_t - r\, \frac{\eta_t \lambda_t}{1 - \mu} w_t,

  with :math:`\Pi` and :math:`r` as in :func:`adamp`. The decay is divided by :math:`1-\mu`, as in the
  authors' code, so that :math:`\lambda` means what it means in SGD with L2 at the momentum's
  steady state.

  Args:
    learning_rate: :math:`\eta`, a number or an optax schedule.
    momentum: :math:`\mu`; ``None`` for no momentum buffer (and no :math:`1/(1-\mu)`).
    nesterov: use Nesterov momentum.
    weight_decay: :math:`\lambda`, a number >= 0 or a schedule.
    delta, wd_ratio, eps: as for :func:`radial_projection`.
    mask: which leaves to decay (see :mod:`wd_optax.masks`).
    projection_mask: which leaves may be projected; ``None``: every leaf with at least two axes.
    output_channel: ``"last"`` (flax, Haiku) or ``"first"`` (Equinox, PyTorch).

  Returns:
    An ``optax.GradientTransformation`` (its ``update`` needs ``params``).

  Example:
    >>> import jax.numpy as jnp, optax, wd_optax
    >>> tx = wd_optax.sgdp(0.1, momentum=0.5, weight_decay=1e-2)
    >>> params = {"w": jnp.array([[1.0, 0.0], [0.0, 1.0]])}
    >>> grads = {"w": jnp.array([[0.0, 1.0], [1.0, 0.0]])}
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> [[round(u, 7) for u in row] for row in updates["w"].tolist()]  # 0.1 x 1e-2 / 0.5 x 0.1
    [[-0.0002, -0.1], [-0.1, -0.0002]]

  References:
    Heo et al. *AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant Weights.*
    ICLR 2021.
  """
  from wd_optax.decoupled import decoupled_decay
  _checks.check_rate(learning_rate, "learning_rate")
  _checks.check_rate(weight_decay, "weight_decay")
  _checks.check_number(momentum, "momentum", unit_interval=True, allow_none=True,
                       what="a number in [0, 1) or None")
  _checks.check_flag(nesterov, "nesterov")
  momentum_step = [] if momentum is None else [optax.trace(decay=momentum, nesterov=nesterov)]
  return radial_projection(
      optax.chain(*momentum_step, optax.scale_by_learning_rate(learning_rate)),
      decoupled_decay(_momentum_scaled(weight_decay, momentum), learning_rate=learning_rate, mask=mask),
      delta=delta, wd_ratio=wd_ratio, eps=eps, mask=projection_mask, output_channel=output_channel)
