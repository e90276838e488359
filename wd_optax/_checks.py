"""Argument checks that turn bad input into errors naming the argument."""

from __future__ import annotations

import math
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import numpy as np


def is_traced(value: Any) -> bool:
  return isinstance(value, jax.core.Tracer)


def check_rate(value: Any, argname: str, *, allow_none: bool = False, positive: bool = False) -> None:
  """Checks a ``ScalarOrSchedule``: a callable, or a finite number >= 0 (> 0 if ``positive``).

  Traced values (inside ``optax.inject_hyperparams`` under ``jit``) and schedules cannot be checked
  before they are evaluated and pass through.
  """
  if value is None:
    if allow_none:
      return
    raise ValueError(f"{argname} is required, got None.")
  if callable(value) or is_traced(value):
    return
  if isinstance(value, (str, bytes)) or not _is_number_like(value):
    raise TypeError(
        f"{argname} must be a number or an optax schedule (a callable from step to value), "
        f"got {value!r} of type {type(value).__name__}.")
  array = np.asarray(value)
  if array.shape != ():
    raise ValueError(f"{argname} must be a scalar, got an array of shape {array.shape}.")
  number = float(array)
  if not math.isfinite(number):
    raise ValueError(f"{argname} must be finite, got {number}.")
  if positive and number <= 0:
    raise ValueError(f"{argname} must be > 0, got {number}.")
  if number < 0:
    raise ValueError(f"{argname} must be >= 0, got {number}.")


def _is_number_like(value: Any) -> bool:
  if isinstance(value, (bool, np.bool_)):
    return False
  if isinstance(value, (int, float, np.number)):
    return True
  return isinstance(value, (np.ndarray, jax.Array)) and np.issubdtype(value.dtype, np.number)


def check_choice(value: Any, argname: str, choices: Iterable[str]) -> None:
  choices = tuple(choices)
  if value not in choices:
    raise ValueError(f"{argname} must be one of {choices}, got {value!r}.")


def require_params(params: Any, transform: str) -> None:
  if params is None:
    raise ValueError(
        f"{transform} needs the current parameters: call update(updates, state, params) with "
        "params, as optax.add_decayed_weights does.")


def check_number(value: Any, argname: str, *, unit_interval: bool = False, allow_none: bool = False,
                 what: str | None = None) -> None:
  """Checks a constant hyperparameter: a finite number >= 0, or in ``[0, 1)`` if ``unit_interval``.

  Unlike :func:`check_rate` a callable is refused (these arguments take no schedule). Traced values
  (``optax.inject_hyperparams`` under ``jit``) cannot be checked before they are evaluated and pass
  through; concrete arrays, as ``inject_hyperparams`` passes them outside ``jit``, are checked.
  """
  expected = what or ("a number in [0, 1)" if unit_interval else "a finite number >= 0")
  if value is None:
    if allow_none:
      return
    raise ValueError(f"{argname} must be {expected}, got None.")
  if is_traced(value):
    return
  if isinstance(value, (str, bytes)) or callable(value) or not _is_number_like(value):
    raise TypeError(f"{argname} must be {expected}, got {value!r} of type {type(value).__name__}.")
  array = np.asarray(value)
  if array.shape != ():
    raise ValueError(f"{argname} must be a scalar, got an array of shape {array.shape}.")
  number = float(array)
  if unit_interval:
    if not 0.0 <= number < 1.0:
      raise ValueError(f"{argname} must be in [0, 1), got {number}.")
  elif not math.isfinite(number) or number < 0:
    raise ValueError(f"{argname} must be finite and >= 0, got {number}.")


def is_params_placeholder(params: Any) -> bool:
  """Whether ``init`` got the stand-in that ``optax.tree.map_params`` passes instead of parameters.

  ``optax.tree.map_params(tx, fn, state)`` calls ``tx.init`` on a pytree node with no leaves, and marks
  as parameter-shaped every part of the state that tree-mapping over it returns unchanged. An ``init``
  that gets it can validate nothing against it (there are no leaves) and must build the state's
  structure without reading the parameters.
  """
  return type(params).__name__ == "_ParamsPlaceholder" and not jax.tree_util.tree_leaves(params)


def _dtype(leaf: Any) -> Any:
  dtype = getattr(leaf, "dtype", None)
  return np.dtype(dtype) if dtype is not None else np.result_type(leaf)


def check_inexact(path: str, leaf: Any, transform: str, *, what: str = "parameter",
                  reason: str = "weight decay acts") -> None:
  """A leaf the transform changes must be floating point (or complex): an integer one would drop it."""
  dtype = _dtype(leaf)
  if not jnp.issubdtype(dtype, jnp.inexact):  # jnp's knows bfloat16 and the float8s, numpy's does not
    raise TypeError(
        f"{transform}: {what} {path!r} has dtype {dtype}; {reason} only on floating-point (or complex) "
        "leaves, and on this one the result would be cast back to "
        f"{dtype}. Leave it out of the mask (see wd_optax.masks).")


def check_updates_match_params(updates: Any, params: Any, transform: str) -> None:
  """``updates`` must name the same leaves as ``params``, with the same shapes (checked at trace time)."""
  from wd_optax import _tree  # _tree imports nothing from here; a local import keeps the layering simple.
  named_updates = _tree.named_leaves(updates)
  named_params = _tree.named_leaves(params)
  update_paths = [p for p, _ in named_updates]
  param_paths = [p for p, _ in named_params]
  if update_paths != param_paths:
    missing = [p for p in param_paths if p not in set(update_paths)]
    extra = [p for p in update_paths if p not in set(param_paths)]
    details = []
    if missing:
      details.append(f"params has {missing[:5]}{' ...' if len(missing) > 5 else ''} that updates lacks")
    if extra:
      details.append(f"updates has {extra[:5]}{' ...' if len(extra) > 5 else ''} that params lacks")
    if not details:
      details.append("the same leaves come in a different order")
    raise ValueError(
        f"{transform}: the structure of updates does not match the structure of params: "
        + "; ".join(details) + ". Pass update(updates, state, params) with updates shaped like params.")
  for (path, u), (_, w) in zip(named_updates, named_params):
    if np.shape(u) != np.shape(w):
      raise ValueError(
          f"{transform}: the update for parameter {path!r} has shape {np.shape(u)}, but the parameter has "
          f"shape {np.shape(w)}; updates must have the shapes of params.")
  try:
    jax.tree_util.tree_structure(updates).flatten_up_to(params)
  except (ValueError, TypeError) as err:
    where, u_type, p_type = _container_mismatch(updates, params)
    if not u_type:
      raise ValueError(
          f"{transform}: updates and params name the same leaves but their pytree structures differ "
          f"({err}); pass both as the same kind of pytree.") from err
    raise ValueError(
        f"{transform}: updates and params name the same leaves but in different containers: at "
        f"{where or '<root>'!r} updates has a {u_type} and params a {p_type}; pass both as the same "
        "kind of pytree.") from err


def _children(node: Any) -> list[tuple[tuple[Any, ...], Any]]:
  return jax.tree_util.tree_flatten_with_path(node, is_leaf=lambda x: x is not node)[0]


def _container_mismatch(updates: Any, params: Any, path: tuple[Any, ...] = ()) -> tuple[str, str, str]:
  """The first path at which the two trees' containers differ, and the two container types."""
  from wd_optax import _tree
  u_children = _children(updates)
  leaf = len(u_children) == 1 and u_children[0][1] is updates
  if not leaf and type(updates) is not type(params):
    return _tree.path_str(path), type(updates).__name__, type(params).__name__
  if not leaf:
    for (key, u), (_, p) in zip(u_children, _children(params)):
      found = _container_mismatch(u, p, path + key)
      if found[1]:
        return found
  return _tree.path_str(path), "", ""


def check_decayed_leaves(params: Any, selected: Any, transform: str, updates: Any = None, *,
                         reason: str = "weight decay acts") -> None:
  """Every leaf ``selected(path)`` picks, in ``params`` (and ``updates`` if given), is floating point."""
  from wd_optax import _tree
  for path, leaf in _tree.named_leaves(params):
    if selected(path):
      check_inexact(path, leaf, transform, reason=reason)
  if updates is not None:
    for path, leaf in _tree.named_leaves(updates):
      if selected(path):
        check_inexact(path, leaf, transform, what="the update for parameter", reason=reason)


def check_flag(value: Any, argname: str) -> None:
  """A switch must be a Python (or numpy) bool: a truthy string or array would silently pick a branch."""
  if not isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{argname} must be a bool, got {value!r} of type {type(value).__name__}.")


def check_positive_finite(value: Any, argname: str) -> float:
  """A constant that must be a finite number > 0 (no schedule, no array of more than one entry)."""
  if isinstance(value, (str, bytes)) or callable(value) or not _is_number_like(value):
    raise TypeError(f"{argname} must be a finite number > 0, got {value!r} of type {type(value).__name__}.")
  array = np.asarray(value)
  if array.shape != ():
    raise ValueError(f"{argname} must be a scalar, got an array of shape {array.shape}.")
  number = float(array)
  if not math.isfinite(number) or number <= 0:
    raise ValueError(f"{argname} must be a finite number > 0, got {number}.")
  return number
