"""Loss, gradients and per-layer K-FAC statistics from one forward pass."""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wd_optax import _checks
from wd_optax import _tree
from wd_optax.kfac import _layers

__all__ = ["LayerCurvature", "Curvature", "MODES", "PROGRAMS", "curvature_every", "value_grad_and_curvature"]

MODES = ("fisher", "empirical", "ggn")


class LayerCurvature(NamedTuple):
  """The Kronecker factors of one registered layer, estimated on one batch.

  Attributes:
    a: :math:`A = E[\\bar a \\bar a^\\top]`, shape ``(d_in [+1], d_in [+1])`` (``+1``: the homogeneous
      coordinate of a bias, last).
    s: :math:`S = E[s s^\\top]`, shape ``(d_out, d_out)``, with ``s`` the gradient of the per-example
      loss at the layer's output.
    locations: :math:`T`, the number of spatial locations a convolution kernel is applied to (1 for
      ``Linear``), a float32 scalar.
    estimated: 1 if the factors were estimated on this batch, 0 if ``value_grad_and_curvature`` was told
      not to (``estimate=False``; ``a`` and ``s`` are then zeros and :func:`scale_by_kfac` keeps its
      running averages). A float32 scalar; defaults to 1 for factors built by hand.
    inputs: with ``rows=True``, for a :class:`wd_optax.kfac.Linear`: its inputs as rows ``(n, d_in)``
      (``None`` otherwise); what the batch-space preconditioner of :func:`scale_by_kfac` uses.
    output_grads: with ``rows=True``, for a :class:`wd_optax.kfac.Linear`: the gradient of the mean loss at
      its output, rows ``(n, d_out)``, so that the kernel gradient is ``inputs.T @ output_grads``.
  """
  a: jax.Array
  s: jax.Array
  locations: jax.Array
  estimated: Any = 1.0
  inputs: Any = None
  output_grads: Any = None


#: The curvature of a model: a dict from each registered layer's module path to its factors.
Curvature = dict[str, LayerCurvature]


def _sampling_key(key: jax.Array) -> jax.Array:
  """An ``rbg`` key (XLA's RngBitGenerator) determined by ``key``.

  The default threefry sampler took about 4 s to compile for a (256, 10) draw on this project's CPU,
  against about 0.6 s for ``rbg``, and the sampling is a small part of the step. The samples are a
  deterministic function of ``key`` on a given backend; they are not the ones threefry would draw.
  """
  data = jax.random.key_data(key).reshape(-1).astype(jnp.uint32)
  if data.shape[0] == 2:
    data = jnp.concatenate([data, data ^ jnp.uint32(0x9E3779B9)])
  if data.shape[0] != 4:
    return key
  return jax.random.wrap_key_data(data, impl="rbg")


def _output_second_moment(grad: jax.Array, scale: float) -> jax.Array:
  rows = grad.reshape(-1, grad.shape[-1]).astype(jnp.promote_types(grad.dtype, jnp.float32)) * scale
  return jnp.matmul(rows.T, rows, precision=jax.lax.Precision.HIGHEST) / rows.shape[0]


def value_grad_and_curvature(
    loss_fn: Callable[[nnx.Module, Any], tuple[jax.Array, jax.Array]],
    model: nnx.Module,
    batch: Any,
    *,
    mode: str = "fisher",
    key: jax.Array | None = None,
    estimate: bool | jax.Array = True,
    rows: bool = False,
) -> tuple[tuple[jax.Array, jax.Array], nnx.State, Curvature]:
  r"""Loss, gradients with respect to the ``nnx.Param`` s, and the K-FAC factors of every registered layer.

  ``loss_fn(model, batch) -> (loss, logits)`` must return the loss as the **mean** over the
  :math:`n` = ``prod(logits.shape[:-1])`` predictions (the usual mean softmax cross-entropy over a batch, or
  over the tokens of a batch of sequences) and the logits it was computed from, classes last.
  With :math:`g` the gradient of the mean loss at a layer's output, the per-example output gradient is
  :math:`s = n\,g`; the factors are

  .. math::
    A = E[\bar a \bar a^\top], \qquad S = E[s s^\top],

  means over the samples (rows; for a convolution, every example and location). ``mode`` picks where
  :math:`s` comes from:

  * ``"fisher"`` (KFAC-F, the true Fisher): targets :math:`y \sim \mathrm{softmax}(z)` are sampled with
    an ``rbg`` key derived from ``key`` (much faster to compile than threefry) and
    :math:`\partial \ell(z, y)/\partial z = \mathrm{softmax}(z) - \mathrm{onehot}(y)` is back-propagated from the logits :math:`z`;
  * ``"empirical"`` (the empirical Fisher): the gradient of ``loss_fn`` itself, i.e. the true labels; no
    extra pass and no ``key``;
  * ``"ggn"`` (KFAC-G as Zhang et al. ran it: Gauss-Newton with an identity output Hessian):
    :math:`r \sim N(0, I)` is back-propagated from the logits, so :math:`s = J^\top r` and
    :math:`E[s s^\top] = E[J^\top J]`, whatever loss trains the model.

  Scale convention: :math:`S` is the second moment of *per-example* output gradients. kfac-jax's
  ``"fisher_empirical"`` divides it by the batch size once more (its :math:`S` is ours over :math:`n`);
  ``tests/test_kfac_reference.py`` matches it with damping and learning rate multiplied by :math:`n`.

  The forward pass runs once; the sampled modes add one backward pass (``jax.vjp`` is applied twice).
  Mutable non-parameter state the forward pass changes (batch statistics, RNG counters) is written back
  to ``model``. Under ``jit`` with a batch sharded over devices the means are over the global batch.

  ``estimate`` skips the statistics on steps that do not need them (Zhang et al. refresh the factors
  every 10 steps): ``False`` runs a plain forward and backward pass and returns zero factors marked
  ``estimated=0``, which :func:`scale_by_kfac` leaves out of its running averages. A traced boolean (e.g.
  ``optimizer.step[...] % 10 == 0``) chooses inside ``jit``, one compiled step: the forward and backward
  passes run either way and the second moments (in convolution-free models also the sampled backward
  pass) sit under ``lax.cond``, because XLA:CPU runs backward-pass convolutions 7-20x slower inside a
  conditional. Loss and gradients are the same either way.

  Args:
    loss_fn: ``(model, batch) -> (mean loss, logits)``; the model contains
      :class:`wd_optax.kfac.Linear` / :class:`wd_optax.kfac.Conv` layers, each called once.
    model: the ``nnx.Module``.
    batch: anything ``loss_fn`` accepts.
    mode: ``"fisher"``, ``"empirical"`` or ``"ggn"``.
    key: a PRNG key, required for ``"fisher"`` and ``"ggn"``.
    estimate: whether to estimate the factors on this batch: a Python bool or a boolean scalar array.
    rows: also return, for every :class:`wd_optax.kfac.Linear`, its input rows and the rows of the loss
      gradient at its output (:attr:`LayerCurvature.inputs`, :attr:`LayerCurvature.output_grads`), on every
      step, estimated or not: what ``scale_by_kfac(batch_space=True)`` needs.

  Returns:
    ``((loss, logits), grads, curvature)``: ``grads`` is an ``nnx.State`` of the ``nnx.Param`` s (as
    ``nnx.grad`` gives), ``curvature`` a dict from each registered layer's module path to its
    :class:`LayerCurvature`.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from flax import nnx
    >>> from wd_optax import kfac
    >>> model = kfac.Linear(3, 2, rngs=nnx.Rngs(0))
    >>> def loss_fn(model, batch):
    ...   logits = model(batch["x"])
    ...   return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean(), logits
    >>> batch = {"x": jnp.ones((4, 3)), "y": jnp.array([0, 1, 0, 1])}
    >>> (loss, logits), grads, curvature = kfac.value_grad_and_curvature(
    ...     loss_fn, model, batch, mode="fisher", key=jax.random.key(0))
    >>> curvature[""].a.shape, curvature[""].s.shape    # the layer is the model itself: path ""
    ((4, 4), (2, 2))

  References:
    Martens & Grosse. *Optimizing Neural Networks with Kronecker-factored Approximate Curvature.* ICML 2015.
    Zhang, Wang, Xu, Grosse. *Three Mechanisms of Weight Decay Regularization.* ICLR 2019.
  """
  _checks.check_choice(mode, "mode", MODES)
  if mode != "empirical" and key is None:
    raise ValueError(f"value_grad_and_curvature(mode={mode!r}) samples its output gradients: pass key=.")
  if not isinstance(model, nnx.Module):
    raise TypeError(f"model must be an nnx.Module, got {type(model).__name__}.")
  static_estimate = _static_bool(estimate)
  if not isinstance(rows, bool):
    raise TypeError(f"rows must be a Python bool, got {type(rows).__name__}.")
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  if static_estimate is False and not rows:
    (loss, logits), grads, new_rest = _plain(loss_fn, graphdef, params, rest, batch)
    curvature = _not_estimated(jax.eval_shape(
        lambda: _curvature(loss_fn, model, graphdef, params, rest, batch, mode, key)[2]))
  else:
    (loss, logits), grads, curvature, new_rest = _curvature(
        loss_fn, model, graphdef, params, rest, batch, mode, key,
        estimate=estimate if static_estimate is None else static_estimate, rows=rows)
  nnx.update(model, new_rest)
  return (loss, logits), grads, curvature


def _not_estimated(shapes: Curvature) -> Curvature:
  """Zero factors marked ``estimated=0`` (``scale_by_kfac`` keeps its averages and its T)."""
  return {layer: LayerCurvature(jnp.zeros(c.a.shape, c.a.dtype), jnp.zeros(c.s.shape, c.s.dtype),
                                jnp.zeros(c.locations.shape, c.locations.dtype), np.zeros((), np.float32))
          for layer, c in shapes.items()}


def _static_bool(estimate: Any) -> bool | None:
  """``estimate`` as a Python bool, or ``None`` when it is a (traced) boolean scalar."""
  if isinstance(estimate, (bool, np.bool_)):
    return bool(estimate)
  shape, dtype = jnp.shape(estimate), getattr(estimate, "dtype", None)
  if shape != () or dtype != jnp.bool_:
    raise TypeError(
        f"estimate must be a Python bool or a boolean scalar array, got {type(estimate).__name__} with "
        f"shape {shape} and dtype {dtype}.")
  if not _checks.is_traced(estimate):
    return bool(estimate)
  return None


def _check_outputs(outputs: Any) -> tuple[jax.Array, jax.Array]:
  if not (isinstance(outputs, tuple) and len(outputs) == 2):
    raise TypeError(
        "loss_fn must return (loss, logits), the mean loss and the logits it was computed from; got "
        f"{type(outputs).__name__}.")
  loss, logits = outputs
  if jnp.shape(loss) != ():
    raise ValueError(f"loss_fn must return a scalar (mean) loss first, got shape {jnp.shape(loss)}.")
  return loss, logits


def _plain(loss_fn, graphdef, params, rest, batch):
  """Loss, logits, gradients and the updated non-parameter state, without any statistics."""
  def forward(params: nnx.State):
    module = nnx.merge(graphdef, params, jax.tree.map(lambda x: x, rest))
    loss, logits = _check_outputs(loss_fn(module, batch))
    return (loss, logits), nnx.split(module, nnx.Param, ...)[2]

  (loss, logits), vjp_fn, new_rest = jax.vjp(forward, params, has_aux=True)
  (grads,) = vjp_fn((jnp.ones_like(loss), jnp.zeros_like(logits)))
  return (loss, logits), grads, new_rest


def _curvature(loss_fn, model, graphdef, params, rest, batch, mode, key, estimate=True, rows=False):
  """Loss, logits, gradients, curvature and the updated non-parameter state.

  With a traced ``estimate``, only the second moments are computed under ``lax.cond``: the forward and
  backward passes run unconditionally, because XLA:CPU ran the convolutions of a backward pass placed
  inside a conditional 7-20x slower than outside one (measured on jax 0.10.2).
  """
  def run(params: nnx.State, rest: nnx.State, perturbations: nnx.State | None, *var_types: type):
    # Fresh Variables for the mutable state, so that the forward pass may update them inside the trace.
    module = nnx.merge(graphdef, params, jax.tree.map(lambda x: x, rest))
    out = nnx.capture(loss_fn, *var_types, init=perturbations)(module, batch)
    return out, nnx.split(module, nnx.Param, ...)[2]

  (_, perturbation_shapes), _ = jax.eval_shape(
      lambda p, r: run(p, r, None, _layers.KfacOutputPerturbation), params, rest)
  perturbations = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), perturbation_shapes)

  def forward(params: nnx.State, perturbations: nnx.State):
    (outputs, inputs), new_rest = run(params, rest, perturbations, _layers.KfacInputStats)
    return _check_outputs(outputs), (inputs, new_rest)

  (loss, logits), vjp_fn, (inputs, new_rest) = jax.vjp(forward, params, perturbations, has_aux=True)
  grads, output_grads = vjp_fn((jnp.ones_like(loss), jnp.zeros_like(logits)))
  count = 1
  for dim in logits.shape[:-1]:
    count *= dim
  scale = float(count)
  modules = {"/".join(str(k) for k in path): module for path, module in nnx.iter_modules(model)}

  def sampled_output_grads(logits: jax.Array, key: jax.Array) -> nnx.State:
    key = _sampling_key(key)
    if mode == "fisher":
      targets = jax.random.categorical(key, jax.lax.stop_gradient(logits), axis=-1)
      probs = jax.nn.softmax(jax.lax.stop_gradient(logits).astype(jnp.float32), axis=-1)
      cotangent = probs - jax.nn.one_hot(targets, logits.shape[-1], dtype=probs.dtype)
    else:
      cotangent = jax.random.normal(key, logits.shape, jnp.float32)
    # The cotangent is already a per-example output gradient: no factor n.
    return vjp_fn((jnp.zeros_like(loss), cotangent.astype(logits.dtype)))[1]

  # The sampled backward pass joins the conditional statistics only in convolution-free models: XLA:CPU
  # ran convolutions inside a conditional 7-20x slower (jax 0.10.2), which would cost more than it saves.
  backward_in_cond = estimate is not True and (estimate is False or not any(
      isinstance(m, (nnx.Conv, nnx.ConvTranspose)) for m in modules.values()))
  loss_output_grads = output_grads
  if mode != "empirical":
    scale = 1.0
    if not backward_in_cond:
      output_grads = sampled_output_grads(logits, key)

  def moments(operands):
    inputs, output_grads = operands
    if backward_in_cond and mode != "empirical":
      output_grads = sampled_output_grads(logits, key)
    return _assemble(modules, inputs, output_grads, scale)

  if estimate is True:
    curvature = moments((inputs, output_grads))
  elif estimate is False:
    curvature = _not_estimated(jax.eval_shape(moments, (inputs, output_grads)))
  else:
    def skipped(operands):
      return _not_estimated(jax.eval_shape(moments, operands))
    curvature = jax.lax.cond(estimate, moments, skipped, (inputs, output_grads))
  if rows:
    by_layer_inputs, by_layer_grads = _by_layer(inputs), _by_layer(loss_output_grads)
    curvature = {
        layer: c._replace(inputs=by_layer_inputs[layer].reshape(-1, modules[layer].in_features),
                          output_grads=by_layer_grads[layer].reshape(-1, modules[layer].out_features))
        if isinstance(modules[layer], _layers.Linear) else c
        for layer, c in curvature.items()}
  return (loss, logits), grads, curvature, new_rest


def _by_layer(state: nnx.State) -> dict[str, Any]:
  """The value of each captured variable, keyed by the module path of the layer that recorded it."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(state, is_leaf=lambda x: isinstance(x, nnx.Variable))
  by_layer = {}
  for path, variable in leaves:
    by_layer[_tree.path_str(path[:-1])] = variable.get_value()
  return by_layer


def _assemble(modules: dict[str, nnx.Module], inputs: nnx.State, output_grads: nnx.State,
              scale: float) -> Curvature:
  inputs = _by_layer(inputs)
  outputs = _by_layer(output_grads)
  if not inputs:
    raise ValueError(
        "value_grad_and_curvature found no registered layer: the model called inside loss_fn must use "
        "wd_optax.kfac.Linear / wd_optax.kfac.Conv layers.")
  if set(inputs) != set(outputs):
    raise ValueError(
        "registered layers whose inputs and output gradients do not pair up: "
        f"{sorted(set(inputs) ^ set(outputs))}.")
  curvature = {}
  for layer in sorted(inputs):
    a, locations = modules[layer].input_second_moment(inputs[layer])
    curvature[layer] = LayerCurvature(a, _output_second_moment(outputs[layer], scale), locations,
                                      np.ones((), np.float32))
  return curvature


PROGRAMS = ("cond", "two")


def curvature_every(step_fn: Callable[..., Any], every: int, *, programs: str = "cond",
                    jit: Callable[..., Any] = jax.jit, **jit_kwargs: Any) -> Callable[..., Any]:
  r"""Compiles a training step that estimates the curvature every ``every`` steps, as one program or two.

  ``step_fn(*args, estimate, **kwargs)`` passes ``estimate`` on to :func:`value_grad_and_curvature`. The
  returned ``run(step, *args, **kwargs)`` calls it with ``estimate = (step % every == 0)`` for the Python
  int ``step`` (counted on the host, so choosing costs no device round trip):

  * ``programs="cond"``: one compiled program, ``estimate`` a traced boolean; the statistics, the factor
    average and the inverse update sit under ``lax.cond``.
  * ``programs="two"``: ``estimate`` a static argument, so two programs are compiled, one with and one
    without the statistics; neither carries the other's branch (the steps without statistics do not even
    hold the factor average), at the price of a second compilation. Both read and write the same state
    structure, so they alternate on one optimizer state.

  The state, the results and the update are the same either way (up to float32 round-off of two programs).
  This is a helper around ``jit`` rather than a flag of :func:`scale_by_kfac`: whether a step has
  statistics is decided where the curvature is computed, and the transform follows whatever it is given
  (a traced or a static :attr:`LayerCurvature.estimated`).

  Args:
    step_fn: the training step; takes ``estimate`` as a keyword argument.
    every: the factor period, a Python int >= 1 (1: every step, one program).
    programs: ``"cond"`` or ``"two"``.
    jit: the compiler, ``jax.jit`` (default) or ``flax.nnx.jit``.
    **jit_kwargs: passed to ``jit`` (e.g. ``donate_argnums``).

  Returns:
    ``run(step, *args, **kwargs)``, the result of ``step_fn``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from wd_optax import kfac
    >>> def step_fn(x, *, estimate):
    ...   return jnp.where(estimate, x + 1.0, x)
    >>> run = kfac.curvature_every(step_fn, 3, programs="two")
    >>> [float(run(step, jnp.zeros(()))) for step in range(4)]
    [1.0, 0.0, 0.0, 1.0]
  """
  _checks.check_choice(programs, "programs", PROGRAMS)
  if isinstance(every, bool) or not isinstance(every, int) or every < 1:
    raise ValueError(f"every must be a Python int >= 1, got {every!r}.")
  if every == 1:
    compiled = jit(functools.partial(step_fn, estimate=True), **jit_kwargs)
    return lambda step, *args, **kwargs: compiled(*args, **kwargs)
  if programs == "two":
    compiled = jit(step_fn, static_argnames="estimate", **jit_kwargs)
    return lambda step, *args, **kwargs: compiled(*args, estimate=step % every == 0, **kwargs)
  compiled = jit(step_fn, **jit_kwargs)
  return lambda step, *args, **kwargs: compiled(*args, estimate=np.asarray(step % every == 0), **kwargs)
