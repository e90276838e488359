"""A pass-through transform that records per-leaf norms and angular updates in its state.

The transform is :func:`wd_optax.monitor` (also ``wd_optax.monitoring.monitor``); this module holds it
with its state, :class:`MonitorState`, and :func:`unpack`, which turns the fields of a
``monitor(packed=True)`` state back into pytrees. The module is named ``monitoring`` so that it cannot
shadow the function: ``wd_optax.monitor`` is always the transform.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from wd_optax import _checks
from wd_optax import _tree
from wd_optax.diagnostics import equilibrium as _equilibrium
from wd_optax.diagnostics import norms as _norms

PyTree = Any

__all__ = ["MonitorState", "monitor", "unpack"]


_BLOCK = 256


def _blocks(leaves: list[jax.Array]) -> tuple[jax.Array, np.ndarray]:
  """All leaves, zero-padded to whole blocks and stacked as rows of one ``(num_blocks, _BLOCK)`` array.

  Also returns, per row, the index of the leaf it came from (a small host constant).
  """
  rows, owners = [], []
  for i, leaf in enumerate(leaves):
    flat = jnp.ravel(jnp.asarray(leaf, jnp.float32))
    num_rows = max(1, -(-flat.size // _BLOCK))
    rows.append(jnp.pad(flat, (0, num_rows * _BLOCK - flat.size)).reshape(num_rows, _BLOCK))
    owners.append(np.full(num_rows, i, np.int32))
  return jnp.concatenate(rows, axis=0), np.concatenate(owners)


def _measure_blocked(params: list[jax.Array], updates: list[jax.Array]):
  """‖w + u‖, ‖u‖ and ∠(w, w + u) for every leaf, in a handful of fused kernels for all leaves.

  One reduction per leaf would launch dozens of tiny kernels, which on a GPU costs more than a small
  network's whole training step; instead all leaves share one blocked layout. The angle is
  atan2(‖u⊥‖, ‖w‖ + ⟨u, ŵ⟩) with u⊥ = u − (⟨u, w⟩/‖w‖²) w formed explicitly (a second pass), which is
  accurate for tiny angles, unlike arccos of a cosine or the Lagrange identity ‖w‖²‖u‖² − ⟨w, u⟩².
  """
  num_leaves = len(params)
  w, owners = _blocks(params)
  u, _ = _blocks(updates)
  new = w + u
  # One reduction over the block axis for all four sums (fewer kernels than four reductions).
  partial = jnp.sum(jnp.stack([w * w, u * u, w * u, new * new], -1), axis=1)
  sums = jax.ops.segment_sum(partial, owners, num_leaves, indices_are_sorted=True)
  w_sq, u_sq, wu, new_sq = sums[:, 0], sums[:, 1], sums[:, 2], sums[:, 3]
  along_coefficient = jnp.where(w_sq > 0, wu / jnp.where(w_sq > 0, w_sq, 1.0), 0.0)
  perp_rows = jnp.sum(jnp.square(u - along_coefficient[owners][:, None] * w), 1)
  perp_sq = jax.ops.segment_sum(perp_rows, owners, num_leaves, indices_are_sorted=True)
  w_norm, new_norm = jnp.sqrt(w_sq), jnp.sqrt(new_sq)
  along = w_norm + wu / jnp.where(w_norm > 0, w_norm, 1.0)
  angle = jnp.where((w_norm > 0) & (new_norm > 0), jnp.arctan2(jnp.sqrt(perp_sq), along), 0.0)
  return new_norm, jnp.sqrt(u_sq), angle


class MonitorState(NamedTuple):
  """Latest per-leaf measurements (float32 scalars; ``None`` for leaves outside the mask).

  With ``monitor(packed=True)`` each field is instead a float32 vector, one entry per measured leaf;
  see :func:`wd_optax.monitoring.unpack`.

  Attributes:
    param_norm: ‖w_{t+1}‖, the norm of the parameters after the latest step (‖w_0‖ after ``init``).
    update_norm: ‖u_t‖, the norm of the latest (final) update (0 after ``init``).
    angular_update: ∠(w_t, w_{t+1}) in radians (0 after ``init``).
    predicted_angular_update: with ``monitor(equilibrium=...)``, the equilibrium angle
      :func:`wd_optax.diagnostics.equilibrium_angular_update` predicts for the latest step (the same
      value for every measured leaf, laid out like ``angular_update``); ``None`` otherwise.
    predicted_norm: with ``monitor(equilibrium=dict(optimizer="adamw", ...))``, each leaf's predicted
      equilibrium norm :func:`wd_optax.diagnostics.equilibrium_norm` (``√(ηC/(2λ))``); ``None`` otherwise
      (SGD's prediction needs the gradients, which a monitor chained last does not see).
    count: with ``equilibrium``, the number of updates so far (the schedules' step); ``None`` otherwise.

  The fields are measurements, not param-shaped arrays: ``optax.tree.map_params`` leaves each alone (or
  hands it whole to ``transform_non_params``).
  """
  param_norm: PyTree
  update_norm: PyTree
  angular_update: PyTree
  predicted_angular_update: PyTree = None
  predicted_norm: PyTree = None
  count: Any = None


def unpack(values: jax.Array, params: PyTree, mask: Any = None) -> PyTree:
  """A packed monitor field (one entry per measured leaf) as a pytree like ``params``.

  Entries follow the flattening order of the leaves in ``mask``; leaves outside it are ``None``.
  Use it on the fields of ``monitor(packed=True)``'s state, with the same ``mask``.

  Example:
    >>> import jax.numpy as jnp
    >>> from wd_optax.monitoring import unpack
    >>> unpack(jnp.array([1.0, 2.0]), {"a": jnp.zeros(3), "b": jnp.zeros(2), "c": jnp.zeros(1)},
    ...        mask={"a": True, "b": False, "c": True})
    {'a': Array(1., dtype=float32), 'b': None, 'c': Array(2., dtype=float32)}
  """
  resolved = _tree.resolve_mask(mask, params)
  index = {}
  for path, _ in _tree.named_leaves(params):
    if resolved(path):
      index[path] = len(index)
  if jnp.shape(values) != (len(index),):
    raise ValueError(
        f"unpack: values has shape {jnp.shape(values)}, but params has {len(index)} leaves in the "
        "mask; pass the params and mask the monitor was built with.")
  return _tree.map_with_path(lambda path, _: values[index[path]] if path in index else None, params)


_EQUILIBRIUM_KEYS = ("optimizer", "learning_rate", "weight_decay", "momentum")


def _check_equilibrium(equilibrium: Any) -> None:
  if equilibrium is None:
    return
  if not isinstance(equilibrium, Mapping):
    raise TypeError(f"equilibrium must be a dict with keys {_EQUILIBRIUM_KEYS} or None, got {equilibrium!r}.")
  unknown = sorted(set(equilibrium) - set(_EQUILIBRIUM_KEYS))
  missing = [k for k in ("optimizer", "learning_rate", "weight_decay") if k not in equilibrium]
  if unknown or missing:
    raise ValueError(f"equilibrium: expected keys {_EQUILIBRIUM_KEYS} (momentum optional), "
                     f"got unknown {unknown} and missing {missing}.")
  _checks.check_choice(equilibrium["optimizer"], "equilibrium['optimizer']", ("sgd", "adamw"))
  _checks.check_rate(equilibrium["learning_rate"], "equilibrium['learning_rate']")
  _checks.check_rate(equilibrium["weight_decay"], "equilibrium['weight_decay']")
  _checks.check_number(equilibrium.get("momentum", 0.0), "equilibrium['momentum']", unit_interval=True)


def monitor(mask: Any = None, *, packed: bool = False, equilibrium: Mapping[str, Any] | None = None
            ) -> optax.GradientTransformation:
  r"""Passes updates through unchanged and records ‖w‖, ‖u‖ and the angular update per leaf.

  Chain it last, after the learning-rate scaling and any decoupled decay, so that ``updates`` is the
  step actually applied, ``w_{t+1} = w_t + u_t``. Each ``update`` stores

  .. math::
    \|w_{t+1}\|,\qquad \|u_t\|,\qquad
    \theta_t = \angle(w_t, w_{t+1}) = 2\operatorname{atan2}(\|\hat w_t - \hat w_{t+1}\|, \|\hat w_t + \hat w_{t+1}\|)

  for every leaf in ``mask`` (the same angle as :func:`wd_optax.diagnostics.angular_update`, computed
  as atan2(‖u⊥‖, ‖w‖ + ⟨u, ŵ⟩), accurate near 0; 0 when either vector is zero), in float32 from
  ``params + updates``. All leaves are measured together in one blocked layout, so the cost is a few
  fused kernels whatever the number of leaves (per-leaf reductions cost a GPU more launches than a
  small network's whole step). The returned updates are the input
  objects themselves, so the optimizer's results are bitwise those of the chain without the monitor.
  Read the values with ``optax.tree_utils.tree_get(opt_state, "angular_update")`` and log them with
  :func:`wd_optax.diagnostics.flatten_by_path`. For scale-invariant leaves the angle is the quantity
  weight decay controls (Zhang et al. 2019 §4.1; at equilibrium ≈ √(2ηλ/(1+μ)), Kosson et al. 2024);
  FixNorm (Zhou et al.) predicts it tracks η_t/c² when the norm is pinned to c.

  Args:
    mask: project mask convention: which leaves to measure (e.g. ``wd_optax.masks.kernels()``).
      Leaves outside it hold ``None`` in every field of the state.
    packed: store each field as one float32 vector with an entry per measured leaf (flattening
      order; turn it into a pytree with :func:`wd_optax.monitoring.unpack`) instead of a pytree of
      scalars. The values are identical; what changes is the number of arrays in the optimizer
      state. A jitted step pays a few microseconds of host dispatch per input and output array, so on an accelerator, where a
      small network's step takes well under a millisecond, per-leaf scalars (3 per leaf, in and out)
      can add tens of percent to the step time; packed adds 3 arrays whatever the model.
    equilibrium: opt-in: also record the equilibrium predictions beside the measurements, from
      ``dict(optimizer="sgd" | "adamw", learning_rate=η, weight_decay=λ, momentum=μ or β₁)`` (η and λ
      numbers or schedules, evaluated at each step): ``predicted_angular_update`` (and, for AdamW,
      ``predicted_norm``) in the state, laid out like the measurements. Meaningful for the
      scale-invariant leaves (pass them as ``mask``).

  Returns:
    An ``optax.GradientTransformation`` whose state is a :class:`MonitorState`; ``update`` requires
    ``params``.

  Example:
    >>> import jax.numpy as jnp, optax, wd_optax
    >>> tx = optax.chain(optax.sgd(1.0), wd_optax.monitor())
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

  _check_equilibrium(equilibrium)
  predicts_norm = equilibrium is not None and equilibrium["optimizer"] == "adamw"

  def predictions(params, measured, count):
    """The predicted angle (and AdamW norm) per measured leaf, at step ``count``, as float32 vectors."""
    value = lambda rate: rate(count) if callable(rate) else rate
    eta, lam = value(equilibrium["learning_rate"]), value(equilibrium["weight_decay"])
    angle = _norms.equilibrium_angular_update(eta, lam, equilibrium.get("momentum", 0.0),
                                              optimizer=equilibrium["optimizer"])
    angles = jnp.full((len(measured),), angle, jnp.float32)
    if not predicts_norm:
      return angles, None
    norms = _equilibrium.equilibrium_norm(eta, lam, list(measured), optimizer="adamw")
    return angles, jnp.stack(norms) if norms else jnp.zeros((0,), jnp.float32)

  def with_predictions(state, params, measured, count):
    if equilibrium is None:
      return state
    angles, norms = predictions(params, measured, count)
    layout = (lambda v: v) if packed else (lambda v: unpack(v, params, mask))
    return state._replace(predicted_angular_update=layout(angles),
                          predicted_norm=None if norms is None else layout(norms), count=count)

  def init_fn(params):
    _checks.require_params(params, "monitor")
    if _checks.is_params_placeholder(params):
      # optax.tree.map_params: the fields hold per-leaf scalars (or one vector), not param-shaped
      # arrays, so each field is one non-parameter value.
      state = MonitorState(*(_tree.NOT_PARAM_SHAPED,) * 3)
      if equilibrium is None:
        return state
      return state._replace(predicted_angular_update=_tree.NOT_PARAM_SHAPED,
                            predicted_norm=_tree.NOT_PARAM_SHAPED if predicts_norm else None,
                            count=jnp.zeros([], jnp.int32))
    resolved = _tree.resolve_mask(mask, params)
    measured = [w for path, w in _tree.named_leaves(params) if resolved(path)]
    norms = jnp.stack([_norms._norm(w, None) for w in measured]) if measured else jnp.zeros((0,))
    zeros = jnp.zeros((len(measured),), jnp.float32)
    if packed:
      state = MonitorState(param_norm=norms, update_norm=zeros, angular_update=zeros)
    else:
      state = MonitorState(param_norm=unpack(norms, params, mask), update_norm=unpack(zeros, params, mask),
                           angular_update=unpack(zeros, params, mask))
    return with_predictions(state, params, measured, jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    _checks.require_params(params, "monitor")
    _checks.check_updates_match_params(updates, params, "monitor")
    resolved = _tree.resolve_mask(mask, params)
    named_params = _tree.named_leaves(params)
    named_updates = _tree.named_leaves(updates)
    measured = [(w, u) for (path, w), (_, u) in zip(named_params, named_updates) if resolved(path)]
    if measured:
      fields = _measure_blocked([w for w, _ in measured], [u for _, u in measured])
    else:
      fields = (jnp.zeros((0,), jnp.float32),) * 3
    if not packed:
      fields = [unpack(values, params, mask) for values in fields]
    new_state = MonitorState(*fields)
    if equilibrium is not None:
      # The prediction for the step just measured, then the count moves on.
      new_state = with_predictions(new_state, params, [w for w, _ in measured], state.count)
      new_state = new_state._replace(count=optax.safe_increment(state.count))
    return updates, new_state

  return optax.GradientTransformation(init_fn, update_fn)
