"""Explicitly registered K-FAC layers: ``nnx.Linear`` and ``nnx.Conv`` that report their curvature.

Inside :func:`flax.nnx.capture` (which :func:`wd_optax.kfac.value_grad_and_curvature` sets up) a registered
layer sows its input, from which :meth:`Linear.input_second_moment` / :meth:`Conv.input_second_moment` form
``A = E[a a^T]``, and routes its output through ``Module.perturb``, so that the gradient with respect to that
zero perturbation is the gradient at the layer's output, from which ``S = E[s s^T]`` is formed. The second
moments are taken after the backward pass, so that a step that does not need them skips only that work. Outside ``nnx.capture`` the layers behave exactly like their
flax parents: nothing is recorded and no variable is added to the module.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import linear as nnx_linear

__all__ = ["Linear", "Conv", "KfacInputStats", "KfacOutputPerturbation", "registered_layers",
           "LAYER_METADATA_KEY"]

#: Metadata key set on the kernel ``nnx.Param`` of every registered layer; its value is the layer kind.
LAYER_METADATA_KEY = "kfac_layer"
INPUT_STATS_NAME = "kfac_input_stats"
OUTPUT_PERTURBATION_NAME = "kfac_output"


class KfacInputStats(nnx.Intermediate):
  """The input a registered layer sows inside ``nnx.capture``; its layer's ``input_second_moment`` makes A."""


class KfacOutputPerturbation(nnx.Perturbation):
  """The zero perturbation added to a registered layer's output; its gradient is the output gradient."""


def _no_previous(previous: Any, value: Any) -> Any:
  if previous is not None:
    raise ValueError(
        "a wd_optax.kfac layer was called more than once inside one value_grad_and_curvature call; "
        "K-FAC factors are per layer application, so weight sharing across calls is not supported. "
        "Use a separate layer per call site.")
  return value


def _second_moment(rows: jax.Array, use_bias: bool) -> jax.Array:
  """``E[a a^T]`` over the rows of ``rows``, with a homogeneous 1 appended when the layer has a bias."""
  rows = rows.astype(jnp.promote_types(rows.dtype, jnp.float32))
  if use_bias:
    rows = jnp.concatenate([rows, jnp.ones((rows.shape[0], 1), rows.dtype)], axis=1)
  return jnp.matmul(rows.T, rows, precision=jax.lax.Precision.HIGHEST) / rows.shape[0]


def _captures(module: nnx.Module, variable_type: type) -> bool:
  return any(type(v) is variable_type for v in getattr(module, "__captures__", ()))


def _with_layer_metadata(metadata: Any, kind: str) -> dict[str, Any]:
  metadata = dict(metadata)
  metadata[LAYER_METADATA_KEY] = kind
  return metadata


class Linear(nnx.Linear):
  r"""``nnx.Linear`` registered for K-FAC.

  Same constructor and call as :class:`flax.nnx.Linear`. Every leading dimension of the input counts as
  a sample: for inputs of shape ``(..., in_features)``,

  .. math::
    A = \frac{1}{n}\sum_{i=1}^{n} \bar a_i \bar a_i^\top, \qquad \bar a_i = (a_i, 1) \text{ with a bias},

  where :math:`n` is the product of the leading dimensions. The kernel ``nnx.Param`` carries the
  metadata ``kfac_layer="linear"``, which lets :func:`wd_optax.kfac.scale_by_kfac` find the layer when it
  is initialised by ``nnx.Optimizer``.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from wd_optax import kfac
    >>> layer = kfac.Linear(3, 2, rngs=nnx.Rngs(0))
    >>> layer(jnp.ones((4, 3))).shape
    (4, 2)

  References:
    Martens & Grosse. *Optimizing Neural Networks with Kronecker-factored Approximate Curvature.* ICML 2015.
  """

  def __init__(self, in_features: int, out_features: int, *, kernel_metadata: Any = None, **kwargs: Any):
    super().__init__(in_features, out_features,
                     kernel_metadata=_with_layer_metadata(kernel_metadata or {}, "linear"), **kwargs)

  def input_second_moment(self, inputs: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(A, T)`` for this layer's ``inputs``: :math:`A` over every leading position, :math:`T = 1`."""
    stats = _second_moment(inputs.reshape(-1, self.in_features), self.use_bias)
    return stats, jnp.ones((), stats.dtype)

  def __call__(self, inputs: jax.Array, out_sharding: Any = None) -> jax.Array:
    outputs = super().__call__(inputs, out_sharding)
    if _captures(self, KfacInputStats):
      self.sow(KfacInputStats, INPUT_STATS_NAME, inputs, reduce_fn=_no_previous, init_fn=lambda: None)
    if _captures(self, KfacOutputPerturbation):
      outputs = self.perturb(OUTPUT_PERTURBATION_NAME, outputs, variable_type=KfacOutputPerturbation)
    return outputs


class Conv(nnx.Conv):
  r"""``nnx.Conv`` registered for K-FAC with the KFC approximation (Grosse & Martens, 2016).

  Same constructor and call as :class:`flax.nnx.Conv`, restricted to ``feature_group_count=1``, no
  ``mask`` and the paddings ``"SAME"``, ``"VALID"`` or explicit pads. The input patches (strided slices
  of the padded input) are the activations and each of the :math:`T` output locations
  is an extra sample:

  .. math::
    A = \frac{1}{N T}\sum_{n=1}^{N}\sum_{t=1}^{T} \bar a_{n,t} \bar a_{n,t}^\top,

  with :math:`\bar a_{n,t}` the patch at location :math:`t`, flattened in the kernel's
  ``(*kernel_size, in_features)`` order, and a homogeneous 1 appended with a bias. :math:`T` is reported
  with the statistics: the preconditioner treats the Fisher block as :math:`T\,(A\otimes S)` (spatially
  uncorrelated, homogeneous derivatives) and so divides the damping by :math:`T`.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from wd_optax import kfac
    >>> layer = kfac.Conv(2, 4, kernel_size=(3, 3), rngs=nnx.Rngs(0))
    >>> layer(jnp.ones((1, 5, 5, 2))).shape
    (1, 5, 5, 4)

  References:
    Grosse & Martens. *A Kronecker-factored Approximate Fisher Matrix for Convolution Layers.* ICML 2016.
    Zhang, Wang, Xu, Grosse. *Three Mechanisms of Weight Decay Regularization.* ICLR 2019.
  """

  def __init__(self, in_features: int, out_features: int, kernel_size: int | Sequence[int],
               strides: Any = 1, *, kernel_metadata: Any = None, **kwargs: Any):
    if kwargs.get("feature_group_count", 1) != 1:
      raise ValueError(
          f"wd_optax.kfac.Conv supports feature_group_count=1 only, got "
          f"{kwargs['feature_group_count']!r}: grouped convolutions have block-diagonal factors.")
    if kwargs.get("mask") is not None:
      raise ValueError("wd_optax.kfac.Conv does not support a kernel mask (mask must be None).")
    padding = kwargs.get("padding", "SAME")
    if isinstance(padding, str) and padding.upper() not in ("SAME", "VALID", "SAME_LOWER"):
      raise ValueError(
          f"wd_optax.kfac.Conv supports padding 'SAME', 'VALID' or explicit pads, got {padding!r}.")
    super().__init__(in_features, out_features, kernel_size, strides,
                     kernel_metadata=_with_layer_metadata(kernel_metadata or {}, "conv"), **kwargs)

  def _broadcast(self, value: Any) -> tuple[int, ...]:
    if value is None:
      value = 1
    if isinstance(value, int):
      return (value,) * len(self.kernel_size)
    return tuple(value)

  def _patches(self, inputs: jax.Array) -> jax.Array:
    """``(N, *out_spatial, prod(kernel_size) * in_features)`` patches in the kernel's flattening order.

    Strided slices of the padded input, one per kernel offset: on CPU about 3x faster than
    ``lax.conv_general_dilated_patches`` (which also orders the features channel-major). That function
    remains the path for ``input_dilation != 1``.
    """
    kernel_size = tuple(self.kernel_size)
    spatial = len(kernel_size)
    strides = self._broadcast(self.strides)
    kernel_dilation = self._broadcast(self.kernel_dilation)
    input_dilation = self._broadcast(self.input_dilation)
    padding = nnx_linear.canonicalize_padding(self.padding, spatial)
    dilated = tuple((k - 1) * d + 1 for k, d in zip(kernel_size, kernel_dilation))
    if isinstance(padding, str):
      # As lax.conv_general_dilated resolves it: on the dilated input, for the dilated kernel.
      dilated_input = [(n - 1) * d + 1 for n, d in zip(inputs.shape[1:-1], input_dilation)]
      padding = jax.lax.padtype_to_pads(dilated_input, dilated, strides, padding)
    if any(d != 1 for d in input_dilation):
      patches = jax.lax.conv_general_dilated_patches(
          inputs, kernel_size, strides, padding, lhs_dilation=input_dilation,
          rhs_dilation=kernel_dilation, dimension_numbers=nnx_linear._conv_dimension_numbers(inputs.shape),
          precision=jax.lax.Precision.HIGHEST)
      window = math.prod(kernel_size)
      order = jnp.arange(self.in_features * window).reshape(self.in_features, window).T.reshape(-1)
      return patches[..., order]
    padded = jnp.pad(inputs, [(0, 0), *[tuple(p) for p in padding], (0, 0)])
    out_shape = [(padded.shape[1 + i] - dilated[i]) // strides[i] + 1 for i in range(spatial)]
    columns = []
    for offset in itertools.product(*[range(k) for k in kernel_size]):
      start = [0] + [o * d for o, d in zip(offset, kernel_dilation)] + [0]
      limit = ([padded.shape[0]] + [s + (n - 1) * st + 1 for s, n, st in zip(start[1:], out_shape, strides)]
               + [padded.shape[-1]])
      columns.append(jax.lax.slice(padded, start, limit, (1, *strides, 1)))
    return jnp.concatenate(columns, axis=-1)

  def input_second_moment(self, inputs: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(A, T)`` for this layer's ``inputs``: :math:`A` over examples and output locations, :math:`T` locations."""
    spatial = len(self.kernel_size)
    inputs = inputs.reshape((-1,) + inputs.shape[inputs.ndim - spatial - 1:])
    patches = self._patches(inputs)
    locations = math.prod(patches.shape[1:-1])
    rows = patches.reshape(-1, patches.shape[-1])
    stats = _second_moment(rows, self.use_bias)
    return stats, jnp.asarray(locations, stats.dtype)

  def __call__(self, inputs: jax.Array, out_sharding: Any = None) -> jax.Array:
    outputs = super().__call__(inputs, out_sharding)
    if _captures(self, KfacInputStats):
      self.sow(KfacInputStats, INPUT_STATS_NAME, inputs, reduce_fn=_no_previous, init_fn=lambda: None)
    if _captures(self, KfacOutputPerturbation):
      outputs = self.perturb(OUTPUT_PERTURBATION_NAME, outputs, variable_type=KfacOutputPerturbation)
    return outputs


def registered_layers(model: nnx.Module) -> tuple[str, ...]:
  """The ``"/"``-joined module paths of the registered K-FAC layers in ``model``.

  Pass it as ``layers=`` to :func:`wd_optax.kfac.scale_by_kfac` when the transform is initialised with
  plain arrays rather than through ``nnx.Optimizer``.

  Example:
    >>> from flax import nnx
    >>> from wd_optax import kfac
    >>> class Net(nnx.Module):
    ...   def __init__(self, rngs):
    ...     self.body = kfac.Linear(3, 4, rngs=rngs)
    ...     self.norm = nnx.LayerNorm(4, rngs=rngs)
    ...     self.head = kfac.Linear(4, 2, rngs=rngs)
    >>> kfac.registered_layers(Net(nnx.Rngs(0)))
    ('body', 'head')
  """
  return tuple("/".join(str(k) for k in path) for path, module in nnx.iter_modules(model)
               if isinstance(module, (Linear, Conv)))
