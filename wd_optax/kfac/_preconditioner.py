"""The K-FAC preconditioner as an optax transform, and the effective-damping diagnostic."""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import jax
import numpy as np
import jax.numpy as jnp
import optax
from flax import nnx

from wd_optax import _checks
from wd_optax import _tree
from wd_optax.kfac import _layers
from wd_optax.kfac._curvature import LayerCurvature

__all__ = ["KfacFactors", "ScaleByKfacState", "LayerDamping", "scale_by_kfac", "effective_damping"]

_TINY = 1e-30


class KfacFactors(NamedTuple):
  """A pair of Kronecker factors (or of their damped inverses) of one layer."""
  a: jax.Array
  s: jax.Array


class ScaleByKfacState(NamedTuple):
  """State of :func:`scale_by_kfac`.

  Attributes:
    count: number of updates so far (int32).
    curvature_count: number of updates that brought an estimated curvature (int32); the averaging
      weights :math:`\\beta_t` count these, not ``count``.
    factors: per layer, the running averages of :math:`A` and :math:`S`.
    inverses: per layer, :math:`(A + \\pi\\sqrt{\\gamma'} I)^{-1}` and :math:`(S + \\sqrt{\\gamma'}/\\pi\\, I)^{-1}`
      from the last inverse update.
    damping: :math:`\\gamma` at the last update.
    cosine: per layer, the cosine between the preconditioned and the incoming gradient at the last update.
    locations: per layer, :math:`T` from the last estimated curvature (1 before any).
  """
  count: jax.Array
  curvature_count: jax.Array
  factors: dict[str, KfacFactors]
  inverses: dict[str, KfacFactors]
  damping: jax.Array
  cosine: dict[str, jax.Array]
  locations: dict[str, jax.Array]


class LayerDamping(NamedTuple):
  """What :func:`effective_damping` reports for one layer."""
  damping: jax.Array
  effective_damping: jax.Array
  cosine: jax.Array


def _join(layer: str, name: str) -> str:
  return f"{layer}/{name}" if layer else name


def _tagged_layers(params: Any) -> tuple[bool, list[str]]:
  """Whether ``params`` holds ``nnx.Variable`` s, and the layers whose kernel carries the K-FAC tag."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(params, is_leaf=lambda x: isinstance(x, nnx.Variable))
  has_variables, layers = False, []
  for path, leaf in leaves:
    if isinstance(leaf, nnx.Variable):
      has_variables = True
      if leaf.get_metadata().get(_layers.LAYER_METADATA_KEY) is not None:
        name = _tree.path_str(path)
        layers.append(name.rpartition("/")[0] if "/" in name else "")
  return has_variables, layers


def _layer_dims(params: Any, layers: Sequence[str] | None) -> dict[str, tuple[int, int, bool]]:
  """Per layer: ``(dim A, dim S, has_bias)``."""
  shapes = {path: jnp.shape(leaf) for path, leaf in _tree.named_leaves(params)}
  if layers is None:
    has_variables, layers = _tagged_layers(params)
    if not has_variables:
      raise ValueError(
          "scale_by_kfac.init got plain arrays, which do not say which layers are registered: pass "
          "layers=wd_optax.kfac.registered_layers(model), or initialise through nnx.Optimizer "
          "(its nnx.State keeps the tag wd_optax.kfac.Linear / Conv put on their kernels).")
    if not layers:
      raise ValueError(
          "scale_by_kfac.init found no registered layer in the params: use wd_optax.kfac.Linear / "
          "wd_optax.kfac.Conv in the model.")
  elif isinstance(layers, str):
    raise TypeError(f"layers must be a sequence of module paths, got the string {layers!r}.")
  dims = {}
  for layer in layers:
    kernel = shapes.get(_join(layer, "kernel"))
    if kernel is None or len(kernel) < 2:
      raise ValueError(
          f"layers: {layer!r} names no layer with a kernel of rank >= 2 in the params (looked for "
          f"{_join(layer, 'kernel')!r}; parameters: {sorted(shapes)[:10]}).")
    bias = shapes.get(_join(layer, "bias"))
    if bias is not None and bias != (kernel[-1],):
      raise ValueError(f"layers: {_join(layer, 'bias')!r} has shape {bias}, expected {(kernel[-1],)}.")
    dims[layer] = (math.prod(kernel[:-1]) + (bias is not None), kernel[-1], bias is not None)
  return dims


def _placeholder_state(layers: Sequence[str] | None) -> ScaleByKfacState:
  """What ``init`` returns for ``optax.tree.map_params``'s stand-in for the params.

  No entry mirrors the params (factors and inverses have their own shapes), so nothing is a params
  placeholder. With ``layers`` given the state has its real structure, one non-parameter leaf per
  array; with ``layers=None`` the layers are unknown and each per-layer dict is one non-parameter value.
  """
  leaf = _tree.NOT_PARAM_SHAPED
  scalar = jnp.zeros((), jnp.int32)
  if layers is None:
    per_layer = dict.fromkeys(("factors", "inverses", "cosine", "locations"), leaf)
  else:
    if isinstance(layers, str):
      raise TypeError(f"layers must be a sequence of module paths, got the string {layers!r}.")
    per_layer = dict(factors={l: KfacFactors(leaf, leaf) for l in layers},
                     inverses={l: KfacFactors(leaf, leaf) for l in layers},
                     cosine={l: leaf for l in layers}, locations={l: leaf for l in layers})
  return ScaleByKfacState(count=scalar, curvature_count=scalar, damping=jnp.zeros((), jnp.float32),
                          **per_layer)


def _static_flag(flag: Any) -> bool | None:
  """A layer's ``estimated`` as a Python bool when it is known while tracing, else ``None``."""
  if _checks.is_traced(flag):
    return None
  return bool(np.asarray(flag) > 0)


def _check_curvature(curvature: Any, state: ScaleByKfacState) -> None:
  if curvature is None:
    raise ValueError(
        "scale_by_kfac.update needs the curvature of this batch: call update(grads, state, params, "
        "curvature=curvature) with the curvature from wd_optax.kfac.value_grad_and_curvature "
        "(nnx.Optimizer: optimizer.update(model, grads, curvature=curvature)).")
  if not isinstance(curvature, dict):
    raise TypeError(
        f"curvature must be the dict returned by value_grad_and_curvature, got {type(curvature).__name__}.")
  missing = sorted(set(state.factors) - set(curvature))
  extra = sorted(set(curvature) - set(state.factors))
  if missing or extra:
    raise ValueError(
        "curvature does not match the registered layers: "
        + (f"no curvature for {missing}" if missing else "")
        + ("; " if missing and extra else "")
        + (f"curvature for unregistered {extra}" if extra else "")
        + f" (registered: {sorted(state.factors)}).")
  for layer, factors in state.factors.items():
    got = curvature[layer]
    if not isinstance(got, LayerCurvature):
      raise TypeError(f"curvature[{layer!r}] must be a LayerCurvature, got {type(got).__name__}.")
    if jnp.shape(got.a) != factors.a.shape or jnp.shape(got.s) != factors.s.shape:
      raise ValueError(
          f"curvature[{layer!r}] has factors of shapes {jnp.shape(got.a)}, {jnp.shape(got.s)}; the layer's "
          f"parameters need {factors.a.shape}, {factors.s.shape}.")


INVERSES = ("cholesky", "eigh", "lu", "newton_schulz")
NEWTON_SCHULZ_ITERATIONS = 30


def _cholesky_inverse(matrix: jax.Array) -> jax.Array:
  r"""Inverse of a damped SPD factor :math:`M = LL^\top` as :math:`L^{-\top}L^{-1}`: one Cholesky, one
  triangular solve against :math:`I`, one matmul (no pivoting and no ``custom_linear_solve``, which is
  what makes ``jnp.linalg.inv`` slow to compile)."""
  lower = jax.lax.linalg.cholesky(matrix, symmetrize_input=False)
  eye = jnp.broadcast_to(jnp.eye(matrix.shape[-1], dtype=matrix.dtype), matrix.shape)
  lower_inverse = jax.lax.linalg.triangular_solve(lower, eye, left_side=True, lower=True)
  return jnp.swapaxes(lower_inverse, -1, -2) @ lower_inverse


def _eigh_inverse(matrix: jax.Array) -> jax.Array:
  """Inverse of a damped SPD factor from its eigendecomposition, eigenvalues floored at the smallest normal."""
  eigenvalues, vectors = jnp.linalg.eigh(matrix, symmetrize_input=False)
  eigenvalues = jnp.maximum(eigenvalues, jnp.finfo(matrix.dtype).tiny)
  return (vectors / eigenvalues[..., None, :]) @ jnp.swapaxes(vectors, -1, -2)


def _lu_inverse(matrix: jax.Array) -> jax.Array:
  """Inverse of a damped (so well-conditioned) SPD factor, by LU; symmetrised against round-off."""
  inverse = jnp.linalg.inv(matrix)
  return 0.5 * (inverse + jnp.swapaxes(inverse, -1, -2))


def _newton_schulz_inverse(matrix: jax.Array) -> jax.Array:
  r"""Inverse of an SPD matrix by matmuls only: :math:`X \leftarrow X(2I - MX)` from :math:`X_0 = I/\|M\|_F`.

  The residual :math:`I - MX` is squared at every step from :math:`\|I - MX_0\| \le 1 - \lambda_{\min}/\|M\|_F`,
  so 30 steps reach float32 accuracy for condition numbers up to about :math:`10^8`; damping keeps the
  factors far below that. No LAPACK call: a vmapped LAPACK inverse inside a scanned training step was
  seen to deadlock the CPU backend (experiments/studies/three_mechanisms.py).
  """
  eye = jnp.eye(matrix.shape[-1], dtype=matrix.dtype)
  x0 = eye / jnp.linalg.norm(matrix, axis=(-2, -1), keepdims=True)
  inverse = jax.lax.fori_loop(0, NEWTON_SCHULZ_ITERATIONS, lambda _, x: x @ (2.0 * eye - matrix @ x), x0)
  return 0.5 * (inverse + jnp.swapaxes(inverse, -1, -2))


_INVERTERS = {"cholesky": _cholesky_inverse, "eigh": _eigh_inverse, "lu": _lu_inverse,
              "newton_schulz": _newton_schulz_inverse}


def damped_inverses(a: jax.Array, s: jax.Array, damping: jax.Array, pi_damping: bool = True,
                    inverse: str = "cholesky") -> KfacFactors:
  r"""``((A + π√γ I)^{-1}, (S + √γ/π I)^{-1})`` with π from the traces (1 without ``pi_damping``).

  ``inverse`` is ``"cholesky"`` (the default), ``"eigh"``, ``"lu"`` (``jnp.linalg.inv``) or
  ``"newton_schulz"`` (matmuls only, 30 iterations); see :func:`scale_by_kfac` for the measurements.
  """
  _checks.check_choice(inverse, "inverse", INVERSES)
  return _all_damped_inverses({"": KfacFactors(a, s)}, {"": damping}, pi_damping, inverse)[""]


#: Factors whose sizes are within this ratio are padded to the largest and inverted as one batch, at most
#: 2x the flops of inverting them one by one (the cost is cubic).
_BATCH_SIZE_RATIO = 2.0 ** (1.0 / 3.0)


def _size_groups(sizes: dict[Any, int]) -> list[list[Any]]:
  """Keys of ``sizes`` grouped greedily from the largest: each group within ``_BATCH_SIZE_RATIO``."""
  order = sorted(sizes, key=lambda key: -sizes[key])
  groups: list[list[Any]] = []
  for key in order:
    if groups and sizes[groups[-1][0]] <= _BATCH_SIZE_RATIO * sizes[key]:
      groups[-1].append(key)
    else:
      groups.append([key])
  return groups


def _inverse_parts(sharding: Any) -> int:
  """How many parts :func:`scale_by_kfac`'s ``inverse_sharding`` splits a stack's leading axis into (1: none)."""
  if sharding is None:
    return 1
  if not isinstance(sharding, jax.sharding.NamedSharding):
    raise TypeError(
        "inverse_sharding must be a jax.sharding.NamedSharding of the factor stacks' leading (layer) axis, e.g. "
        f"NamedSharding(mesh, PartitionSpec('data')), or None; got {type(sharding).__name__}.")
  spec = tuple(sharding.spec)
  if len(spec) != 1 or spec[0] is None:
    raise ValueError(
        "inverse_sharding must split the leading (layer) axis only, e.g. NamedSharding(mesh, "
        f"PartitionSpec('data')); got PartitionSpec{spec}.")
  axes = spec[0] if isinstance(spec[0], tuple) else (spec[0],)
  return math.prod(sharding.mesh.shape[axis] for axis in axes)


def _invert_stack(invert: Any, batch: jax.Array, sharding: jax.sharding.NamedSharding | None) -> jax.Array:
  """``invert(batch)`` of a ``(n, k, k)`` stack, split over ``sharding``'s devices and all-gathered.

  The stack is padded with identities to a multiple of the number of parts, constrained to be split along
  its leading axis (the factors are replicated there, so this is a local slice), inverted, and constrained
  to be replicated again: each device inverts ``n / parts`` matrices, and the all-gather is the broadcast.
  A stack of one matrix is inverted where it is (splitting it would only add the all-gather).
  """
  n, size = batch.shape[0], batch.shape[-1]
  parts = _inverse_parts(sharding)
  if parts == 1 or n == 1:
    return invert(batch)
  replicated = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
  # Pinned replicated first: otherwise the split propagates back into the traces and dampings, which
  # every layer needs whole, and XLA exchanges them between the devices.
  batch = jax.lax.with_sharding_constraint(batch, replicated)
  pad = -n % parts
  if pad:
    batch = jnp.concatenate([batch, jnp.broadcast_to(jnp.eye(size, dtype=batch.dtype), (pad, size, size))])
  # Pinned split on the way out too: else the last matmul of an inverse is done replicated, on gathered
  # operands.
  inverted = jax.lax.with_sharding_constraint(invert(jax.lax.with_sharding_constraint(batch, sharding)), sharding)
  return jax.lax.with_sharding_constraint(inverted, replicated)[:n]


def _all_damped_inverses(factors: dict[str, KfacFactors], dampings: dict[str, jax.Array], pi_damping: bool,
                         inverse: str, sharding: jax.sharding.NamedSharding | None = None
                         ) -> dict[str, KfacFactors]:
  r""":func:`damped_inverses` of every layer, with factors of similar size inverted as one padded batch.

  A factor :math:`F` of size :math:`k` padded to :math:`n` is embedded as ``diag(F + dI, cI)``, whose
  inverse is ``diag((F + dI)^{-1}, I/c)``: the padding changes nothing. :math:`c = \operatorname{tr}(F)/k + d`,
  the mean eigenvalue, keeps the padded matrix as well conditioned as the damped factor. Batching cuts
  the number of kernels XLA compiles (each LAPACK call, trace and damping add was one kernel per factor).
  With ``sharding``, each stack is inverted split over its devices (:func:`_invert_stack`).
  """
  invert = _INVERTERS[inverse]
  matrices = {(layer, side): getattr(f, side) for layer, f in factors.items() for side in ("a", "s")}
  groups = _size_groups({key: m.shape[0] for key, m in matrices.items()})
  padded, traces = [], {}
  for group in groups:
    size = matrices[group[0]].shape[0]
    stack = jnp.stack([jnp.pad(matrices[key], [(0, size - matrices[key].shape[0])] * 2) for key in group])
    padded.append(stack)
    for key, trace in zip(group, jnp.trace(stack, axis1=-2, axis2=-1)):
      traces[key] = trace
  additions = {}
  for layer in factors:
    dim_a, dim_s = matrices[layer, "a"].shape[0], matrices[layer, "s"].shape[0]
    root = jnp.sqrt(jnp.asarray(dampings[layer], jnp.float32))
    if pi_damping:
      mean_a, mean_s = traces[layer, "a"] / dim_a, traces[layer, "s"] / dim_s
      ok = (mean_a > 0) & (mean_s > 0)
      pi = jnp.where(ok, jnp.sqrt(jnp.where(ok, mean_a / jnp.where(ok, mean_s, 1.0), 1.0)), 1.0)
    else:
      pi = jnp.ones((), jnp.float32)
    additions[layer, "a"], additions[layer, "s"] = pi * root, root / pi
  inverses = {}
  for group, stack in zip(groups, padded):
    size = stack.shape[-1]
    dims = np.array([matrices[key].shape[0] for key in group])[:, None]
    added = jnp.stack([additions[key] for key in group])[:, None]
    # The padding block gets the factor's mean eigenvalue, so that the padded matrix is no worse conditioned
    # than the damped factor (an identity block would be, for factors far from unit scale).
    mean_eigenvalue = jnp.stack([traces[key] / matrices[key].shape[0] for key in group])[:, None] + added
    diagonal = jnp.where(np.arange(size)[None, :] < dims, added, mean_eigenvalue).astype(stack.dtype)
    batch = _invert_stack(invert, stack + diagonal[:, :, None] * jnp.eye(size, dtype=stack.dtype), sharding)
    for key, inv in zip(group, batch):
      inverses[key] = inv[: matrices[key].shape[0], : matrices[key].shape[0]]
  return {layer: KfacFactors(inverses[layer, "a"], inverses[layer, "s"]) for layer in factors}


def scale_by_kfac(
    damping: optax.ScalarOrSchedule,
    *,
    ema: float = 0.95,
    inverse_every: int = 20,
    pi_damping: bool = True,
    layers: Sequence[str] | None = None,
    kl_clip: float | None = None,
    learning_rate: optax.ScalarOrSchedule | None = None,
    inverse: str = "cholesky",
    batch_space: bool = False,
    inverse_sharding: jax.sharding.NamedSharding | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Preconditions the gradients of the registered layers with K-FAC; other parameters pass unchanged.

  For a layer with kernel gradient :math:`G_W` (flattened to ``(d_in, d_out)``) and bias gradient
  :math:`g_b`, :math:`\bar G = [G_W; g_b^\top]` is replaced by

  .. math::
    U = \tfrac{1}{T} (\hat A + \pi\sqrt{\gamma'} I)^{-1}\, \bar G\, (\hat S + \tfrac{\sqrt{\gamma'}}{\pi} I)^{-1},
    \qquad \gamma' = \gamma / T, \qquad
    \pi = \sqrt{\frac{\operatorname{tr}\hat A / \dim \hat A}{\operatorname{tr}\hat S / \dim \hat S}},

  i.e. the factored Tikhonov damping of :math:`(T \hat A \otimes \hat S + \gamma I)^{-1}` (Martens &
  Grosse, 2015, §6.3), where :math:`T` is the number of spatial locations of a convolution (1 for a dense
  layer; Grosse & Martens, 2016) and :math:`\hat A, \hat S` are exponential moving averages of the
  factors in ``curvature``:
  :math:`\hat A_t = \beta_t \hat A_{t-1} + (1-\beta_t) A_t` with
  :math:`\beta_t = \min(\texttt{ema}, t/(t+1))`, so the first update uses the first batch alone.

  The damped inverses are recomputed when ``count % inverse_every == 0`` (the first update included),
  inside ``jit`` through ``lax.cond``: no recompilation, and between recomputations the last inverses,
  with the damping of that step, are reused (a damping schedule therefore takes effect at the next
  recomputation). Inverses are explicit, by Cholesky (:math:`M^{-1} = L^{-\top}L^{-1}`; the damped factors
  are symmetric positive definite), chosen by measurement on this project's 2-core CPU: a 129 / 257 / 577
  square factor took 0.4 / 2.0 / 14.6 ms against 2.0 / 5.1 / 35 ms by eigendecomposition and 11 / 12 / 41 ms
  by ``jnp.linalg.inv`` (LU); the preconditioner of a 128-256-256-10 MLP compiled in 0.8 s with Cholesky,
  0.5 s with eigendecomposition, 1.0 s by Newton-Schulz and 1.8 s with LU (``benchmarks/kfac_speed.py``
  times the whole step). ``inverse`` selects another method. Factors whose sizes lie within a ratio
  :math:`2^{1/3}` are padded to the largest (as ``diag(F + dI, cI)``, which changes nothing) and inverted as
  one batch: at most twice the flops, and far fewer kernels to compile (the preconditioner of a two-layer
  CNN compiled in 2.2 s instead of 3.5 s).

  **Curvature every k steps.** :func:`wd_optax.kfac.value_grad_and_curvature` with ``estimate=False`` (or a
  traced false, e.g. ``step % 10 != 0``, Zhang et al.'s factor period) skips the statistics and marks the
  curvature as not estimated (:attr:`LayerCurvature.estimated` is 0): the running averages are then left
  as they are, and :math:`t` in :math:`\beta_t` counts only the estimated batches. With a static flag the
  average is not in the program at all; with a traced one it sits under ``lax.cond``
  (:func:`wd_optax.kfac.curvature_every` compiles either way). Inverses are recomputed
  on schedule from the averages so far; before the first estimated batch they stay the identity (the
  gradient passes unchanged), so estimate the curvature on the first step.

  **Batch space** (``batch_space=True``, opt-in). For a :class:`wd_optax.kfac.Linear` whose incoming
  update is the batch gradient itself, :math:`\bar G = \bar X^\top \Delta` with :math:`\bar X` the
  ``(n, d_A)`` input rows (a column of ones with a bias) and :math:`\Delta` the ``(n, d_S)`` rows of the
  loss gradient at the layer's output, so

  .. math::
    U = \tfrac{1}{T} (A_\gamma^{-1} \bar X^\top)(\Delta S_\gamma^{-1})

  costs :math:`2n(d_A^2 + d_S^2 + d_A d_S)` flops instead of :math:`2 d_A d_S (d_A + d_S)`; it is used on
  each layer where that is fewer (square layers wider than :math:`1.5n`), with the rows from
  ``value_grad_and_curvature(..., rows=True)``. The incoming gradient then only enters the cosine and the
  KL clip. It is exact only when ``updates`` is the unmodified batch gradient: put this transform first
  in the chain, with no L2 term (:func:`wd_optax.kfac.kfac` refuses ``decay="l2"`` with it), gradient
  clipping or other transform before it, and no gradient accumulation over batches.

  **Distributed inverses** (``inverse_sharding``, for data-parallel training under ``jit``). With the batch
  split over a mesh axis, XLA reduces the factor statistics over that axis (the sums over the batch in
  :math:`A` and :math:`S` become all-reduces over it), so every device of the axis holds the same
  averages and, by default, computes every inverse. ``inverse_sharding=NamedSharding(mesh,
  PartitionSpec("data"))`` instead splits each padded stack of similar-size factors (see above) along
  its leading axis over the devices of ``"data"`` (padded with identities to a multiple of their
  number :math:`D`), inverts on each device only its :math:`\lceil n/D \rceil` factors, and all-gathers
  the inverses (the broadcast of Ba et al., 2017, and of kfac-jax's distributed inverses): the inverse
  work per device does not grow with :math:`D`. A stack of one factor stays where it is. The inverses
  are the same matrices up to float32 round-off. Under ``jax.vmap(..., spmd_axis_name=...)`` (a
  population split over another mesh axis) the constraints apply per member; the inverse update still
  sits under the ``lax.cond`` of ``inverse_every``.

  Parameters outside the registered layers (norm scales, embeddings, plain ``nnx.Linear``) pass through
  unchanged.

  With ``kl_clip`` :math:`\kappa` (Ba et al., 2017, as in Zhang et al.'s code) every update is scaled by
  :math:`\nu = \min(1, \sqrt{\kappa / (\eta_t^2 \sum \langle U, G\rangle)})`, the sum over all
  parameters (:math:`U = G` outside registered layers).

  Args:
    damping: :math:`\gamma > 0`, a number or a schedule of the step count.
    ema: :math:`\beta`, the factor averaging in ``[0, 1)``.
    inverse_every: recompute the damped inverses every this many updates.
    pi_damping: split the damping between the factors with :math:`\pi` (else :math:`\pi = 1`).
    layers: module paths of the registered layers; ``None`` reads them from the ``nnx.Variable``
      metadata of the params given to ``init`` (what ``nnx.Optimizer`` passes). With plain arrays pass
      ``wd_optax.kfac.registered_layers(model)``.
    kl_clip: :math:`\kappa`, or ``None`` for no clipping.
    learning_rate: :math:`\eta`, required with ``kl_clip``.
    inverse: how the damped factors are inverted: ``"cholesky"`` (the default), ``"eigh"``
      (eigendecomposition), ``"lu"`` (``jnp.linalg.inv``) or ``"newton_schulz"`` (matmuls only; use it
      where LAPACK calls are slow or unavailable, or inside large vmapped programs on CPU).
    batch_space: precondition wide dense layers in batch space (see above); needs the curvature from
      ``value_grad_and_curvature(..., rows=True)`` and the raw batch gradient as ``updates``.
    inverse_sharding: ``None`` (every device computes every inverse) or a ``jax.sharding.NamedSharding``
      whose ``PartitionSpec`` names the mesh axis (or axes) to split the inverse work over, e.g.
      ``NamedSharding(mesh, PartitionSpec("data"))`` (see above); the update must run under ``jit``.

  Inside ``optax.inject_hyperparams`` pass ``static_args=("layers", "inverse_every", "pi_damping", "inverse",
  "batch_space", "inverse_sharding")``:
  those shape the computation and cannot be traced.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update(grads, state, params=None, *,
    curvature, shared_count=None)`` requires the ``curvature`` from
    :func:`wd_optax.kfac.value_grad_and_curvature`. ``shared_count``: in a ``jax.vmap``-ped population whose
    members all take their steps together, the common step count (this transform's ``count``), passed
    unbatched: the inverse refresh then stays a ``lax.cond`` that runs every ``inverse_every`` steps; with the
    per-member ``count`` alone ``jax.vmap`` turns it into a select that computes the inverses on every step.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from flax import nnx
    >>> from wd_optax import kfac
    >>> model = kfac.Linear(3, 2, rngs=nnx.Rngs(0))
    >>> def loss_fn(model, batch):
    ...   logits = model(batch["x"])
    ...   return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean(), logits
    >>> batch = {"x": jnp.ones((4, 3)), "y": jnp.array([0, 1, 0, 1])}
    >>> optimizer = nnx.Optimizer(
    ...     model, optax.chain(kfac.scale_by_kfac(1e-3), optax.scale(-0.1)), wrt=nnx.Param)
    >>> _, grads, curvature = kfac.value_grad_and_curvature(loss_fn, model, batch, mode="empirical")
    >>> _ = optimizer.update(model, grads, curvature=curvature)
    >>> int(optimizer.opt_state[0].count[...])
    1

    Data-parallel, with each device inverting its share of the factors:

    >>> from jax.sharding import Mesh, NamedSharding, PartitionSpec
    >>> mesh = Mesh(jax.devices(), ("data",))
    >>> tx = kfac.scale_by_kfac(1e-3, inverse_sharding=NamedSharding(mesh, PartitionSpec("data")))

  References:
    Martens & Grosse. *Optimizing Neural Networks with Kronecker-factored Approximate Curvature.* ICML 2015.
    Grosse & Martens. *A Kronecker-factored Approximate Fisher Matrix for Convolution Layers.* ICML 2016.
    Ba, Grosse, Martens. *Distributed Second-Order Optimization using Kronecker-Factored Approximations.*
    ICLR 2017.
    Zhang, Wang, Xu, Grosse. *Three Mechanisms of Weight Decay Regularization.* ICLR 2019.
  """
  _checks.check_rate(damping, "damping", positive=True)
  _checks.check_number(ema, "ema", unit_interval=True)
  if isinstance(inverse_every, bool) or not isinstance(inverse_every, int) or inverse_every < 1:
    raise ValueError(
        f"inverse_every must be a Python int >= 1, got {inverse_every!r} (inside optax.inject_hyperparams "
        "name it in static_args, with layers and pi_damping).")
  _checks.check_choice(inverse, "inverse", INVERSES)
  if not isinstance(batch_space, bool):
    raise TypeError(f"batch_space must be a Python bool, got {type(batch_space).__name__}.")
  _inverse_parts(inverse_sharding)
  if kl_clip is not None:
    _checks.check_rate(kl_clip, "kl_clip", positive=True)
    _checks.check_rate(learning_rate, "learning_rate")

  def init_fn(params: Any) -> ScaleByKfacState:
    if _checks.is_params_placeholder(params):
      return _placeholder_state(layers)
    dims = _layer_dims(params, layers)
    # Built in numpy and transferred: eager jnp.zeros / jnp.eye compile one small program per shape, which
    # made init take over a second on CPU.
    zeros = {l: KfacFactors(jnp.asarray(np.zeros((da, da), np.float32)),
                            jnp.asarray(np.zeros((ds, ds), np.float32))) for l, (da, ds, _) in dims.items()}
    eyes = {l: KfacFactors(jnp.asarray(np.eye(da, dtype=np.float32)), jnp.asarray(np.eye(ds, dtype=np.float32)))
            for l, (da, ds, _) in dims.items()}
    scalar = lambda value, dtype: jnp.asarray(np.asarray(value, dtype))
    return ScaleByKfacState(
        count=scalar(0, np.int32), curvature_count=scalar(0, np.int32), factors=zeros, inverses=eyes,
        damping=scalar(0, np.float32), cosine={l: scalar(0, np.float32) for l in dims},
        locations={l: scalar(1, np.float32) for l in dims})

  def update_fn(updates: Any, state: ScaleByKfacState, params: Any = None, *,
                curvature: dict[str, LayerCurvature] | None = None, shared_count: Any = None, **extra_args: Any):
    del params, extra_args
    _check_curvature(curvature, state)
    if batch_space and all(c.inputs is None for c in curvature.values()):
      raise ValueError(
          "scale_by_kfac(batch_space=True) got curvature without rows: call "
          "value_grad_and_curvature(..., rows=True) on every step.")
    count = state.count
    gamma = jnp.asarray(damping(count) if callable(damping) else damping, jnp.float32)
    seen = state.curvature_count
    beta = jnp.minimum(jnp.asarray(ema, jnp.float32), seen / (seen + 1.0))
    flags = {l: curvature[l].estimated for l in state.factors}
    static = {l: _static_flag(flag) for l, flag in flags.items()}

    def averaged(operands):
      # Only the layers that may have statistics are averaged; a traced flag selects per layer.
      factors, locations = dict(operands[0]), dict(operands[1])
      for l, f in operands[0].items():
        if static[l] is False:
          continue
        c = curvature[l]
        new = KfacFactors(beta * f.a + (1 - beta) * jnp.asarray(c.a, jnp.float32),
                          beta * f.s + (1 - beta) * jnp.asarray(c.s, jnp.float32))
        new_t = jnp.asarray(c.locations, jnp.float32)   # T comes with the statistics
        if static[l] is None:
          estimated = jnp.asarray(flags[l], jnp.float32) > 0
          new = KfacFactors(jnp.where(estimated, new.a, f.a), jnp.where(estimated, new.s, f.s))
          new_t = jnp.where(estimated, new_t, locations[l])
        factors[l], locations[l] = new, new_t
      return factors, locations

    # A step without statistics must not touch the averages: with statically known flags (a Python
    # estimate=, or one compiled program per case) the average is left out of the program, with traced
    # ones it sits under lax.cond so that such steps skip its arithmetic.
    if all(flag is not None for flag in static.values()):
      factors, locations = averaged((state.factors, state.locations))
      estimated_any = jnp.asarray(any(static.values()))
    else:
      estimated_any = jnp.zeros((), bool)
      for l, flag in flags.items():
        estimated_any = estimated_any | (jnp.asarray(flag, jnp.float32) > 0)
      factors, locations = jax.lax.cond(estimated_any, averaged, lambda operands: operands,
                                        (state.factors, state.locations))
    curvature_count = seen + estimated_any.astype(jnp.int32)

    def fresh_inverses(operands):
      factors, gamma, locations = operands
      return _all_damped_inverses(factors, {l: gamma / locations[l] for l in factors}, pi_damping, inverse,
                                  inverse_sharding)

    if shared_count is None:
      due = (count % inverse_every == 0) & (curvature_count > 0)
      inverses = jax.lax.cond(due, fresh_inverses, lambda _: state.inverses, (factors, gamma, locations))
    else:
      # Under jax.vmap a per-member count turns the lax.cond into a select that inverts on every step; a count
      # shared by the population (unbatched) keeps the cond, and only the cheap "any statistics yet" test is
      # per member.
      def refresh(operands):
        fresh = fresh_inverses(operands)
        return jax.tree.map(lambda new, old: jnp.where(curvature_count > 0, new, old), fresh, state.inverses)
      inverses = jax.lax.cond(jnp.asarray(shared_count) % inverse_every == 0, refresh, lambda _: state.inverses,
                              (factors, gamma, locations))

    grads = dict(_tree.named_leaves(updates))
    new_leaves, cosine = {}, {}
    inner = jnp.zeros((), jnp.float32)
    for layer, inv in inverses.items():
      kernel_path, bias_path = _join(layer, "kernel"), _join(layer, "bias")
      if kernel_path not in grads:
        raise ValueError(f"scale_by_kfac: the updates have no {kernel_path!r} for registered layer {layer!r}.")
      kernel = grads[kernel_path]
      g = kernel.reshape(-1, kernel.shape[-1]).astype(jnp.float32)
      has_bias = inv.a.shape[0] == g.shape[0] + 1
      if has_bias:
        g = jnp.concatenate([g, grads[bias_path].astype(jnp.float32)[None]], axis=0)
      rows = _batch_space_rows(layer, curvature[layer], has_bias, g.shape) if batch_space else None
      if rows is None:
        u = inv.a @ g @ inv.s / locations[layer]
      else:
        u = (inv.a @ rows[0].T) @ (rows[1] @ inv.s) / locations[layer]
      dot = jnp.vdot(u, g)
      inner = inner + dot
      cosine[layer] = dot / (jnp.linalg.norm(u) * jnp.linalg.norm(g) + _TINY)
      new_leaves[kernel_path] = u[: kernel.size // kernel.shape[-1]].reshape(kernel.shape).astype(kernel.dtype)
      if has_bias:
        new_leaves[bias_path] = u[-1].astype(grads[bias_path].dtype)
    if kl_clip is not None:
      for path, g in grads.items():
        if path not in new_leaves:
          inner = inner + jnp.vdot(g, g).astype(jnp.float32)
      lr = jnp.asarray(learning_rate(count) if callable(learning_rate) else learning_rate, jnp.float32)
      size = lr * lr * inner
      nu = jnp.where(size > kl_clip, jnp.sqrt(kl_clip / jnp.maximum(size, _TINY)), 1.0)
      new_leaves = {p: (new_leaves.get(p, g) * nu).astype(g.dtype) for p, g in grads.items()}
    updates = _tree.map_with_path(lambda p, g: new_leaves.get(p, g), updates)
    return updates, ScaleByKfacState(count=optax.safe_int32_increment(count), curvature_count=curvature_count,
                                     factors=factors, inverses=inverses, damping=gamma, cosine=cosine,
                                     locations=locations)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _batch_space_rows(layer: str, curvature: LayerCurvature, has_bias: bool,
                      shape: tuple[int, int]) -> tuple[jax.Array, jax.Array] | None:
  """``(X̄, Δ)`` of a dense layer where the batch-space product is cheaper, else ``None``."""
  if curvature.inputs is None or curvature.output_grads is None:
    return None   # a convolution: the dense path
  x = jnp.asarray(curvature.inputs, jnp.float32)
  delta = jnp.asarray(curvature.output_grads, jnp.float32)
  if has_bias:
    x = jnp.concatenate([x, jnp.ones((x.shape[0], 1), x.dtype)], axis=1)
  (n, d_a), d_s = x.shape, delta.shape[-1]
  if (d_a, d_s) != tuple(shape) or delta.shape[0] != n:
    raise ValueError(
        f"curvature[{layer!r}]: rows of shapes {x.shape} / {delta.shape} do not match the gradient {shape}.")
  if n * (d_a * d_a + d_s * d_s + d_a * d_s) >= d_a * d_s * (d_a + d_s):
    return None
  return x, delta


def _find_state(state: Any) -> ScaleByKfacState:
  if isinstance(state, nnx.Optimizer):
    state = state.opt_state
  found = [s for s in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, ScaleByKfacState))
           if isinstance(s, ScaleByKfacState)]
  if len(found) != 1:
    raise ValueError(
        f"effective_damping needs an optimizer state holding exactly one scale_by_kfac state, found "
        f"{len(found)}.")
  return jax.tree.map(lambda x: x.get_value() if isinstance(x, nnx.Variable) else x, found[0],
                      is_leaf=lambda x: isinstance(x, nnx.Variable))


def effective_damping(state: Any, params: Any) -> dict[str, LayerDamping]:
  r"""Per registered layer: :math:`\gamma`, :math:`\gamma\|W\|^2` and :math:`\cos(U, G)` at the last update.

  For a scale-invariant kernel :math:`W` (followed by a normalisation), :math:`F(cW) = F(W)/c^2`, so a
  damping :math:`\gamma` acts like :math:`\gamma\|W\|^2` in normalised coordinates (Zhang et al., §4
  mechanism 3): as :math:`\|W\|` grows without decay, damping dominates and the K-FAC direction
  :math:`U` turns towards the gradient :math:`G` (the cosine goes to 1). :math:`\|W\|` is the kernel's
  norm (bias excluded); :math:`\gamma` is the nominal damping (not divided by a convolution's :math:`T`).

  Args:
    state: an optimizer state containing one :class:`ScaleByKfacState` (e.g. a chain's state, or an
      ``nnx.Optimizer``).
    params: the current params (``nnx.State``, pure, or nested dict).

  Returns:
    A dict from layer path to :class:`LayerDamping` ``(damping, effective_damping, cosine)``.

  Example:
    >>> import jax.numpy as jnp
    >>> from wd_optax import kfac
    >>> tx = kfac.scale_by_kfac(0.1, layers=["dense"])
    >>> params = {"dense": {"kernel": jnp.ones((2, 3)), "bias": jnp.zeros(3)}}
    >>> state = tx.init(params)._replace(damping=jnp.asarray(0.1))
    >>> round(float(kfac.effective_damping(state, params)["dense"].effective_damping), 4)
    0.6

  References:
    Zhang, Wang, Xu, Grosse. *Three Mechanisms of Weight Decay Regularization.* ICLR 2019.
  """
  kfac_state = _find_state(state)
  leaves = dict(_tree.named_leaves(params))
  report = {}
  for layer in kfac_state.factors:
    kernel = leaves.get(_join(layer, "kernel"))
    if kernel is None:
      raise ValueError(f"params have no {_join(layer, 'kernel')!r} for registered layer {layer!r}.")
    norm2 = jnp.sum(jnp.square(jnp.asarray(kernel, jnp.float32)))
    report[layer] = LayerDamping(kfac_state.damping, kfac_state.damping * norm2, kfac_state.cosine[layer])
  return report
