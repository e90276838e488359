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

__all__ = ["FixNormState", "fix_norm", "fixnorm"]


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
