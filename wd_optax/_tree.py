"""Parameter paths and mask resolution shared by every transform.

A parameter is named by the "/"-joined key path of its leaf: ``{"conv": {"kernel": w}}`` names ``w``
``"conv/kernel"``; an ``nnx.State`` of a model with ``self.layers = nnx.List([nnx.Linear(...)])``
names the first kernel ``"layers/0/kernel"``. The trailing ``.value`` that an ``nnx.Variable`` adds to
the key path is dropped, so the same string names a leaf in an ``nnx.State``, its pure form
(``nnx.as_pure``, what ``nnx.Optimizer`` hands to ``update``) and the equivalent nested dict. An
Equinox module's key path is made of attribute names (``GetAttrKey``) and tuple indices, so
``eqx.filter(model, eqx.is_array)`` names ``model.mlp.layers[0].weight`` ``"mlp/layers/0/weight"``;
the ``None`` that ``eqx.filter`` leaves for non-array fields is an empty subtree to JAX, so it has no
path and every ``map_with_path`` keeps it ``None``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Union

import jax
import numpy as np

PyTree = Any
MaskOrFn = Union[None, PyTree, Callable[[PyTree], PyTree]]


def _key_name(key: Any) -> str:
  if isinstance(key, jax.tree_util.DictKey):
    return str(key.key)
  if isinstance(key, jax.tree_util.SequenceKey):
    return str(key.idx)
  if isinstance(key, jax.tree_util.GetAttrKey):
    return key.name
  if isinstance(key, jax.tree_util.FlattenedIndexKey):
    return str(key.key)
  return str(key)


def path_str(path: tuple[Any, ...]) -> str:
  """The "/"-joined name of a key path, without the ``.value`` of an ``nnx.Variable``."""
  if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value":
    path = path[:-1]
  return "/".join(_key_name(k) for k in path)


def named_leaves(tree: PyTree) -> list[tuple[str, Any]]:
  """``(path, leaf)`` pairs of a pytree, in flattening order."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return [(path_str(p), leaf) for p, leaf in leaves]


def map_with_path(fn: Callable[[str, Any], Any], tree: PyTree, *rest: PyTree) -> PyTree:
  """``jax.tree.map`` whose function also receives the leaf's path string first."""
  return jax.tree_util.tree_map_with_path(lambda p, *xs: fn(path_str(p), *xs), tree, *rest)


def is_function(tree: Any) -> bool:
  """Whether a ``mask=`` (or target) argument is a function of the params rather than a pytree.

  optax's rule (``optax.masked``): a function when every leaf of the pytree is callable. A callable
  *container* of bools is a pytree: an Equinox module is callable (its ``__call__`` is the forward
  pass), and an ``eqx.tree_at``-built mask shaped like the model must be read, not called.
  """
  if isinstance(tree, Mapping):
    return False
  leaves = jax.tree_util.tree_leaves(jax.tree_util.tree_map(callable, tree))
  return bool(leaves) and all(leaves)


def _is_prefix(prefix: str, path: str) -> bool:
  return prefix == "" or path == prefix or path.startswith(prefix + "/")


def _as_bool(value: Any, path: str, argname: str) -> bool:
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  if isinstance(value, (np.ndarray, jax.Array)) and value.shape == () and value.dtype == bool:
    if isinstance(value, jax.core.Tracer):
      raise TypeError(
          f"{argname}: the entry for {path or '<root>'!r} is a traced value; a mask must be made of "
          "Python or concrete numpy booleans, known before tracing.")
    return bool(value)
  raise TypeError(
      f"{argname}: the entry for {path or '<root>'!r} is {value!r} of type {type(value).__name__}; "
      "expected a bool (a mask is a pytree of bools, or a callable from params to one).")


@dataclasses.dataclass(frozen=True)
class ResolvedMask:
  """A mask evaluated against a concrete parameter tree: one Python bool per leaf path."""
  by_path: Mapping[str, bool]

  def __call__(self, path: str) -> bool:
    return self.by_path[path]

  def as_mask_fn(self) -> Callable[[PyTree], PyTree]:
    """A mask callable (params -> pytree of bools) that looks each leaf up by its path."""
    def mask_fn(params: PyTree) -> PyTree:
      resolved = resolve_mask(self, params)
      return map_with_path(lambda path, _: resolved(path), params)
    return mask_fn


def resolve_mask(mask: MaskOrFn, params: PyTree, *, argname: str = "mask") -> ResolvedMask:
  """Evaluates ``mask`` against ``params`` to one bool per parameter path.

  ``mask`` is ``None`` (every leaf), a callable from params to a pytree of bools (by optax's rule,
  :func:`is_function`: a callable pytree of bools such as an Equinox-shaped mask is a pytree), or a
  pytree of bools whose paths name every parameter, either exactly or through a prefix (``{"conv": True}`` covers
  ``"conv/kernel"`` and ``"conv/bias"``). The mask may be a nested dict while the params are an
  ``nnx.State`` (or the reverse): leaves are matched by path, not by container type.

  Raises:
    ValueError: a parameter has no entry in the mask, or a mask entry names no parameter; the message
      names the path.
    TypeError: a mask entry is not a bool.
  """
  param_paths = [p for p, _ in named_leaves(params)]
  if mask is None:
    return ResolvedMask({p: True for p in param_paths})
  if isinstance(mask, ResolvedMask):
    tree = mask
  elif is_function(mask):
    tree = mask(params)
  else:
    tree = mask
  if isinstance(tree, ResolvedMask):
    entries = dict(tree.by_path)
  elif isinstance(tree, (bool, np.bool_)):
    entries = {"": bool(tree)}
  else:
    entries = {p: _as_bool(v, p, argname) for p, v in named_leaves(tree)}

  if set(entries) == set(param_paths):
    return ResolvedMask({p: entries[p] for p in param_paths})

  unused = set(entries)
  by_path = {}
  for path in param_paths:
    covering = [e for e in entries if _is_prefix(e, path)]
    if not covering:
      raise ValueError(
          f"{argname} does not match the params: parameter {path!r} has no entry in the mask. "
          f"Mask entries: {sorted(entries)[:10]}{' ...' if len(entries) > 10 else ''}.")
    longest = max(covering, key=len)
    by_path[path] = entries[longest]
    unused.difference_update(covering)
  if unused:
    extra = sorted(unused)
    raise ValueError(
        f"{argname} does not match the params: mask entr{'y' if len(extra) == 1 else 'ies'} "
        f"{extra[:10]} name{'s' if len(extra) == 1 else ''} no parameter. "
        f"Parameters: {param_paths[:10]}{' ...' if len(param_paths) > 10 else ''}.")
  return ResolvedMask(by_path)


class _NotParamShaped:
  """A leaf standing for a state entry whose structure depends on the parameters but does not mirror them.

  ``init`` returns it when it gets ``optax.tree.map_params``'s stand-in for the parameters (see
  :func:`wd_optax._checks.is_params_placeholder`) in place of per-leaf measurements such as the norms
  :func:`wd_optax.fix_norm` keeps or :func:`wd_optax.monitor` records: it is a leaf, so map_params
  treats the whole entry as one non-parameter value (kept, or given to ``transform_non_params``).
  """

  def __repr__(self) -> str:
    return "NOT_PARAM_SHAPED"


NOT_PARAM_SHAPED = _NotParamShaped()
