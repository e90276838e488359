"""Which parameters the decay touches: masks usable as ``mask=`` in every wd_optax transform.

Each function returns a callable from a parameter pytree to a pytree of Python bools with the same
structure, the form of mask that ``optax.masked`` and ``optax.add_decayed_weights`` accept.

**Parameter paths.** Regexes are matched (with :func:`re.search`, so anchor with ``^`` / ``$`` for an exact
match) against the "/"-joined key path of each leaf:

* nested dict ``{"encoder": {"dense": {"kernel": w, "bias": b}}}``: ``"encoder/dense/kernel"``,
  ``"encoder/dense/bias"``;
* Flax NNX ``nnx.state(model, nnx.Param)`` (or its pure form, which ``nnx.Optimizer`` passes) of a
  model with attributes ``self.conv = nnx.Conv(...)`` and ``self.layers = nnx.List([nnx.Linear(...)])``:
  ``"conv/kernel"``, ``"conv/bias"``, ``"layers/0/kernel"``, ``"layers/0/bias"``.

A regex given to :func:`include` that matches no parameter raises ``ValueError`` when the mask is
evaluated (at ``init``): a typo there would silently switch the decay off. A regex given to
:func:`exclude` that matches nothing only warns (``UserWarning``): generic exclusions such as
``exclude("bias$", "scale$")`` are meant to work on models without biases or normalisation layers.
"""

from __future__ import annotations

import re
import warnings
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from wd_optax import _tree

__all__ = [
    "kernels", "include", "exclude", "all_of", "any_of", "negate", "scale_invariant", "Mask",
    "resolve", "map_with_path",
]

PyTree = Any
Mask = Callable[[PyTree], PyTree]


def _from_predicate(predicate: Callable[[str, Any], bool]) -> Mask:
  def mask_fn(params: PyTree) -> PyTree:
    return _tree.map_with_path(lambda path, leaf: bool(predicate(path, leaf)), params)
  return mask_fn


def kernels() -> Mask:
  r"""Selects leaves with ``ndim >= 2``: Dense and Conv kernels, and embedding tables.

  Biases and normalisation scales/offsets (1-D) are left out, the common practice for weight decay.
  Embedding tables are 2-D and are selected; combine with :func:`exclude` to leave them out.

  Returns:
    A mask callable.

  Example:
    >>> import jax.numpy as jnp, wd_optax
    >>> params = {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}}
    >>> wd_optax.masks.kernels()(params)
    {'dense': {'bias': False, 'kernel': True}}
  """
  return _from_predicate(lambda path, leaf: jnp.ndim(leaf) >= 2)


def _compile(regexes: Sequence[str], argname: str) -> list[re.Pattern]:
  if not regexes:
    raise ValueError(f"{argname} needs at least one regex.")
  compiled = []
  for regex in regexes:
    if not isinstance(regex, str):
      raise TypeError(f"{argname}: regexes must be strings, got {regex!r}.")
    try:
      compiled.append(re.compile(regex))
    except re.error as err:
      raise ValueError(f"{argname}: invalid regex {regex!r}: {err}.") from err
  return compiled


def _regex_mask(regexes: Sequence[str], *, keep_matches: bool, name: str) -> Mask:
  patterns = _compile(regexes, name)

  def mask_fn(params: PyTree) -> PyTree:
    paths = [path for path, _ in _tree.named_leaves(params)]
    for pattern in patterns:
      if not any(pattern.search(path) for path in paths):
        message = (f"{name}: regex {pattern.pattern!r} matches no parameter path. Paths: "
                   f"{paths[:12]}{' ...' if len(paths) > 12 else ''}.")
        if keep_matches:
          raise ValueError(message)
        warnings.warn(message, UserWarning, stacklevel=2)
    return _tree.map_with_path(
        lambda path, leaf: any(p.search(path) for p in patterns) == keep_matches, params)

  return mask_fn


def include(*regexes: str) -> Mask:
  r"""Selects leaves whose path matches any of ``regexes`` (:func:`re.search`).

  Args:
    *regexes: regular expressions matched against "/"-joined parameter paths.

  Returns:
    A mask callable. Evaluating it raises ``ValueError`` if a regex matches no path.

  Example:
    >>> import jax.numpy as jnp, wd_optax
    >>> params = {"conv": {"kernel": jnp.ones((3, 3, 1, 4))}, "classifier": {"kernel": jnp.ones((4, 2))}}
    >>> wd_optax.masks.include("^conv/")(params)
    {'classifier': {'kernel': False}, 'conv': {'kernel': True}}
  """
  return _regex_mask(regexes, keep_matches=True, name="include")


def exclude(*regexes: str) -> Mask:
  r"""Selects leaves whose path matches none of ``regexes`` (:func:`re.search`).

  Args:
    *regexes: regular expressions matched against "/"-joined parameter paths.

  Returns:
    A mask callable. Evaluating it warns (``UserWarning``) if a regex matches no path.

  Example:
    >>> import jax.numpy as jnp, wd_optax
    >>> params = {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}}
    >>> wd_optax.masks.exclude("bias$")(params)
    {'dense': {'bias': False, 'kernel': True}}
  """
  return _regex_mask(regexes, keep_matches=False, name="exclude")


def _combine(masks: Sequence[Any], reduce: Callable[[list[bool]], bool], name: str) -> Mask:
  if not masks:
    raise ValueError(f"{name} needs at least one mask.")

  def mask_fn(params: PyTree) -> PyTree:
    resolved = [_tree.resolve_mask(m, params, argname=f"{name}(...) argument {i}")
                for i, m in enumerate(masks)]
    return _tree.map_with_path(lambda path, _: reduce([r(path) for r in resolved]), params)

  return mask_fn


def all_of(*masks: Any) -> Mask:
  r"""Selects leaves selected by every one of ``masks`` (logical and).

  Args:
    *masks: masks: callables or pytrees of bools.

  Returns:
    A mask callable.

  Example:
    >>> import jax.numpy as jnp, wd_optax
    >>> params = {"conv": {"kernel": jnp.ones((3, 3, 1, 4)), "bias": jnp.zeros(4)},
    ...           "classifier": {"kernel": jnp.ones((4, 2))}}
    >>> m = wd_optax.masks.all_of(wd_optax.masks.kernels(), wd_optax.masks.exclude("classifier"))
    >>> m(params)
    {'classifier': {'kernel': False}, 'conv': {'bias': False, 'kernel': True}}
  """
  return _combine(masks, all, "all_of")


def any_of(*masks: Any) -> Mask:
  r"""Selects leaves selected by at least one of ``masks`` (logical or).

  Args:
    *masks: masks: callables or pytrees of bools.

  Returns:
    A mask callable.

  Example:
    >>> import jax.numpy as jnp, wd_optax
    >>> params = {"a": jnp.ones(2), "b": jnp.ones(2), "c": jnp.ones(2)}
    >>> wd_optax.masks.any_of(wd_optax.masks.include("^a$"), wd_optax.masks.include("^b$"))(params)
    {'a': True, 'b': True, 'c': False}
  """
  return _combine(masks, any, "any_of")


def negate(mask: Any) -> Mask:
  r"""Selects exactly the leaves that ``mask`` does not select.

  Args:
    mask: a callable or a pytree of bools.

  Returns:
    A mask callable.

  Example:
    >>> import jax.numpy as jnp, wd_optax
    >>> params = {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}}
    >>> wd_optax.masks.negate(wd_optax.masks.kernels())(params)
    {'dense': {'bias': True, 'kernel': False}}
  """
  return _combine([mask], lambda values: not values[0], "negate")


def scale_invariant(apply_fn: Callable[[PyTree, Any], Any], params: PyTree, batch: Any, *,
                    rtol: float = 1e-3, scales: Sequence[float] = (0.5, 3.0), seed: int = 0) -> Mask:
  r"""Finds the leaves whose scaling leaves the model's outputs unchanged (layers followed by a norm).

  A leaf :math:`w` is scale-invariant when :math:`f(\ldots, c\,w, \ldots; x) = f(\ldots, w, \ldots; x)` for
  :math:`c > 0`. It is tested numerically on ``batch``: for each leaf and each ``c`` in ``scales``,

  .. math::
    \max |f(c\,w) - f(w)| \le \mathrm{rtol} \cdot \max |f(w)|.

  The test point is ``params`` with every all-zero leaf (a freshly initialised bias) replaced by a
  random normal draw: at zero, scaling is vacuous, and a zero bias after a normalisation layer would
  make that layer's scale look invariant by coincidence. Normalisation layers must use batch statistics inside
  ``apply_fn`` (training mode): running averages are not scale-invariant.

  Args:
    apply_fn: ``apply_fn(params, batch) -> outputs`` (any pytree of arrays).
    params: the parameters to test, a pytree (nested dict, ``nnx.State``).
    batch: inputs for ``apply_fn``.
    rtol: tolerance relative to the largest output magnitude. BatchNorm's epsilon makes invariance
      approximate, so this cannot be 0.
    scales: the positive constants tried.
    seed: seed of the random draw that replaces all-zero leaves.

  Returns:
    A mask callable; it selects the scale-invariant paths in any tree with the same paths as ``params``.

  Example:
    >>> import jax.numpy as jnp, wd_optax
    >>> def apply_fn(p, x):
    ...   h = x @ p["hidden"]
    ...   h = (h - h.mean(0)) / jnp.sqrt(h.var(0) + 1e-5)   # batch normalisation
    ...   return h @ p["classifier"]
    >>> params = {"hidden": jnp.ones((3, 4)) + jnp.arange(12.).reshape(3, 4), "classifier": jnp.ones((4, 2))}
    >>> x = jnp.arange(15.).reshape(5, 3) ** 1.5
    >>> wd_optax.masks.scale_invariant(apply_fn, params, x)(params)
    {'classifier': False, 'hidden': True}

  References:
    Zhang et al. 2019 §4 and van Laarhoven 2017 (scale invariance under batch normalisation).
  """
  if not rtol > 0:
    raise ValueError(f"rtol must be > 0, got {rtol}.")
  if not scales or any(not float(c) > 0 or float(c) == 1.0 for c in scales):
    raise ValueError(f"scales must be positive constants other than 1, got {scales!r}.")

  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  paths = [_tree.path_str(p) for p, _ in leaves]
  values = [leaf for _, leaf in leaves]
  # Not jitted: apply_fns that merge NNX modules over closed-over state cannot be traced, and this
  # runs once per leaf at setup time.
  def call(flat, x):
    return apply_fn(jax.tree_util.tree_unflatten(treedef, flat), x)
  rng = np.random.default_rng(seed)

  def max_abs(tree):
    return max(float(jnp.max(jnp.abs(leaf))) for leaf in jax.tree.leaves(tree))

  def is_float(leaf):
    return jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.floating) and jnp.size(leaf) > 0

  # All-zero leaves (fresh biases) are redrawn for every test: at zero, scaling is vacuous, and a zero
  # bias after a norm layer makes the norm's scale look invariant by coincidence.
  point = [jnp.asarray(rng.standard_normal(jnp.shape(leaf)), jnp.asarray(leaf).dtype)
           if is_float(leaf) and not bool(jnp.any(jnp.asarray(leaf) != 0)) else leaf
           for leaf in values]
  reference = call(point, batch)
  bound = rtol * max(max_abs(reference), 1e-12)

  invariant = {}
  for i, path in enumerate(paths):
    if not is_float(point[i]):
      invariant[path] = False
      continue
    is_invariant = True
    for c in scales:
      scaled = call(point[:i] + [point[i] * c] + point[i + 1:], batch)
      diff = max(float(jnp.max(jnp.abs(a - b)))
                 for a, b in zip(jax.tree.leaves(scaled), jax.tree.leaves(reference)))
      if not diff <= bound:
        is_invariant = False
        break
    invariant[path] = is_invariant

  return _tree.ResolvedMask(invariant).as_mask_fn()


def resolve(mask: Any, params: PyTree) -> dict[str, bool]:
  r"""Evaluates ``mask`` against ``params``: one Python bool per parameter path.

  This is what every wd_optax transform does with its ``mask=`` at ``init``, exposed to check a mask (or
  list the decayed parameters) before training. For each leaf :math:`w_p` at path :math:`p`,

  .. math::
    \mathrm{resolve}(m, w)_p = \begin{cases} \text{True} & m = \text{None}, \\
      m(w)_p & m \text{ callable}, \\ m_q,\ q \text{ the longest entry of } m \text{ that is } p
      \text{ or a "/"-prefix of it} & m \text{ a pytree of bools.} \end{cases}

  Args:
    mask: ``None`` (every leaf), a mask callable (this module's, or any params -> pytree of bools), or a
      pytree of bools naming every parameter exactly or through a prefix (``{"conv": True}`` covers
      ``"conv/kernel"`` and ``"conv/bias"``); the container type may differ from ``params``'s.
    params: the parameter pytree (nested dict, ``nnx.State`` or its pure form). The regex masks and
      :func:`kernels` read only its structure and leaf shapes, so an abstract tree (``jax.ShapeDtypeStruct``
      leaves, from ``jax.eval_shape`` / ``nnx.eval_shape``) checks a mask without initialising the model.

  Returns:
    ``{path: bool}`` in the flattening order of ``params``.

  Raises:
    ValueError: a regex of :func:`include` matches no path, a parameter has no entry in a pytree mask, or
      an entry names no parameter; the message names the regex or path.
    TypeError: a mask entry is not a bool.

  Example:
    >>> import jax.numpy as jnp, wd_optax
    >>> params = {"conv": {"kernel": jnp.ones((3, 3, 1, 4)), "bias": jnp.zeros(4)},
    ...           "classifier": {"kernel": jnp.ones((4, 2))}}
    >>> wd_optax.masks.resolve(wd_optax.masks.exclude("classifier"), params)
    {'classifier/kernel': False, 'conv/bias': True, 'conv/kernel': True}
    >>> wd_optax.masks.resolve({"conv": True, "classifier": False}, params)["conv/bias"]
    True
  """
  return dict(_tree.resolve_mask(mask, params).by_path)


def map_with_path(fn: Callable[..., Any], tree: PyTree, *rest: PyTree) -> PyTree:
  r"""``jax.tree.map`` whose function also gets each leaf's parameter path (the string masks match) first.

  .. math::
    \mathrm{map\_with\_path}(f, x, y, \ldots)_p = f(p, x_p, y_p, \ldots)

  for every leaf path :math:`p` of ``tree`` (the "/"-joined key path, without the ``.value`` of an
  ``nnx.Variable``; see the module docstring).

  Args:
    fn: ``fn(path, leaf, *rest_leaves) -> new leaf``.
    tree: a pytree (nested dict, ``nnx.State`` or its pure form).
    *rest: pytrees with the structure of ``tree``, whose leaves are passed after ``tree``'s.

  Returns:
    A pytree with the structure of ``tree``.

  Example:
    >>> import jax.numpy as jnp, wd_optax
    >>> updates = {"conv": {"kernel": jnp.ones(2)}, "classifier": {"kernel": jnp.ones(2)}}
    >>> scaled = wd_optax.masks.map_with_path(lambda p, u: u * (3.0 if p == "conv/kernel" else 1.0), updates)
    >>> scaled["conv"]["kernel"].tolist(), scaled["classifier"]["kernel"].tolist()
    ([3.0, 3.0], [1.0, 1.0])
  """
  return _tree.map_with_path(fn, tree, *rest)
