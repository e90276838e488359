"""The pure training step of one population member, and its vmapped, scanned population form.

The model is split once (``nnx.split``) into a graph definition and pure dicts of parameters and state
(batch statistics); every jitted function below takes and returns only arrays and merges the model inside
the trace. One member's step is

  1. its batch: the permutation of epoch ``t // (N // B)`` from the member's data key (drawn once per
     epoch), slice ``t mod (N // B)`` of it (so the data order is a function of (key, t) and a restarted run
     sees the same batches); drawn on device from the replicated training set, or, with host-fed batches
     (``train.feed``, :mod:`experiments.train.feed`), the same examples gathered by the host and passed in;
  2. η_t, λ_t from the member's traced hyperparameters (:meth:`experiments.optimizers.OptimizerSpec.rates_at`);
  3. loss and gradient through the optimizer family's ``value_and_grad`` (default: ``jax.value_and_grad`` of
     the cross-entropy; K-FAC's also returns its curvature, from the same pass, in ``extra``), which gets the
     member's model (:class:`MemberModel`), or through a study's ``grad_fn`` hook with the same signature;
  4. ``tx = make_tx(optim, rates)`` (default: ``optim.build(rates)``);
     ``tx.update(grads, opt_state, params, **extra)``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding

from experiments import optimizers
from wd_optax import diagnostics
from wd_optax import masks

PyTree = Any


GradResult = optimizers.GradResult
# grad_fn(loss_fn, params, batch, key, model) -> GradResult, where loss_fn(params) -> (loss, (logits, model_state))
# and model is the member's MemberModel.
GradFn = Callable[..., GradResult]


class MemberModel(NamedTuple):
  """One member's model inside its step, for gradient functions that need the module itself (K-FAC).

  Attributes:
    module: ``module(params) -> nnx.Module``: the model with ``params`` and the member's current state.
    state: ``state(module) -> pure dict`` of its non-parameter state (batch statistics) after a forward pass.
    loss: ``loss(module, (x, y)) -> (mean loss, logits)``: the training loss, train mode.
  """
  module: Callable[[PyTree], Any]
  state: Callable[[Any], PyTree]
  loss: Callable[[Any, Any], tuple[jax.Array, jax.Array]]


def default_grad_fn(loss_fn, params, batch, key, model=None) -> GradResult:
  """``jax.value_and_grad`` of the training loss; no extra update arguments."""
  del batch, key, model
  (loss, (logits, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  return GradResult(loss, logits, model_state, grads, {})


def cross_entropy(logits: jax.Array, labels: jax.Array, smoothing: float = 0.0) -> jax.Array:
  """Mean softmax cross-entropy against integer labels, with optional label smoothing."""
  targets = jax.nn.one_hot(labels, logits.shape[-1])
  if smoothing:
    targets = optax.smooth_labels(targets, smoothing)
  return optax.softmax_cross_entropy(logits, targets).mean()


def epoch_order(key: jax.Array, step: jax.Array, num_examples: int, batch_size: int) -> jax.Array:
  """The example order of the epoch containing ``step``: a permutation drawn from ``fold_in(key, epoch)``."""
  epoch = step // (num_examples // batch_size)
  return jax.random.permutation(jax.random.fold_in(key, epoch), num_examples)


def batch_indices(key: jax.Array, step: jax.Array, num_examples: int, batch_size: int,
                  order: jax.Array | None = None) -> jax.Array:
  """Indices of the batch at ``step``: epoch-wise shuffling without replacement, last partial batch dropped.

  ``order`` is the epoch's permutation if the caller already has it. :func:`population_chunk` draws the
  permutations of a chunk's epochs once before its scan and slices the same indices out of them.
  """
  if order is None:
    order = epoch_order(key, step, num_examples, batch_size)
  position = step % (num_examples // batch_size)
  return jax.lax.dynamic_slice(order, (position * batch_size,), (batch_size,))


def chunk_orders(keys: jax.Array, first_step: jax.Array, num_steps: int, num_examples: int, batch_size: int,
                 vmap: Callable = jax.vmap) -> tuple[jax.Array, jax.Array]:
  """The permutations of every epoch a chunk of ``num_steps`` steps from ``first_step`` touches, per member.

  Returns ``(orders, first_epoch)``: ``orders[m]`` is member ``m``'s epochs laid end to end (shape
  ``(members, epochs * num_examples)``), so step ``t``'s batch is the ``batch_size`` entries from
  :func:`chunk_offset`.
  """
  n, batch, per_epoch = num_examples, batch_size, num_examples // batch_size
  first_epoch = first_step // per_epoch
  epochs = first_epoch + jnp.arange((num_steps - 1) // per_epoch + 2)
  orders = vmap(lambda k: jax.vmap(lambda e: epoch_order(k, e * per_epoch, n, batch))(epochs).reshape(-1))(keys)
  return orders, first_epoch


def chunk_offset(step: jax.Array, first_epoch: jax.Array, num_examples: int, batch_size: int) -> jax.Array:
  """Where step ``step``'s batch starts in a member's :func:`chunk_orders`."""
  per_epoch = num_examples // batch_size
  return (step // per_epoch - first_epoch) * num_examples + (step % per_epoch) * batch_size


def chunk_indices(keys: jax.Array, first_step: jax.Array, num_steps: int, num_examples: int,
                  batch_size: int) -> jax.Array:
  """Batch indices of every member at each step of a chunk, shape ``(num_steps, members, batch_size)``.

  The indices :func:`population_chunk` draws on device (the same permutations, sliced at the same offsets),
  for a host that feeds the batches itself (:mod:`experiments.train.feed`); step ``first_step + s`` of
  member ``m`` gets ``batch_indices(keys[m], first_step + s, ...)``.
  """
  orders, first_epoch = chunk_orders(keys, first_step, num_steps, num_examples, batch_size)
  offsets = chunk_offset(first_step + jnp.arange(num_steps), first_epoch, num_examples, batch_size)
  take = lambda order, offset: jax.lax.dynamic_slice(order, (offset,), (batch_size,))
  return jax.vmap(lambda offset: jax.vmap(lambda order: take(order, offset))(orders))(offsets)


def sq_norm(tree: PyTree) -> jax.Array:
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return jnp.zeros([], jnp.float32)
  return sum(jnp.sum(jnp.square(jnp.asarray(x, jnp.float32))) for x in leaves)


def select(tree: PyTree, paths: frozenset[str]) -> dict[str, jax.Array]:
  """The leaves of ``tree`` whose path is in ``paths``, as a flat dict in sorted path order.

  The order is fixed here, not by the set's iteration order (which varies with ``PYTHONHASHSEED``), so that
  whatever is built from the values in order (e.g. the concatenation behind ``angle/scale_invariant``) is
  bit-identical from one process to the next.
  """
  flat = diagnostics.flatten_by_path(tree)
  return {p: flat[p] for p in sorted(paths) if p in flat}


@dataclasses.dataclass(frozen=True)
class StepSpec:
  """Everything static about one member's step (hashable parts go into the jit cache key)."""
  apply: Callable[..., Any]              # apply(params, model_state, x, train) -> (logits, model_state)
  optim: optimizers.OptimizerSpec
  total_steps: int
  batch_size: int
  num_examples: int
  scale_invariant: frozenset            # paths of scale-invariant leaves (lr_norm_sq, η_eff, angles)
  measured: frozenset                   # paths whose norms are logged
  make_tx: Callable[..., optax.GradientTransformation] = optimizers.build
  grad_fn: GradFn | None = None         # None: the optimizer family's value_and_grad
  # module(params, model_state) -> nnx.Module and state_of(module) -> pure dict (for MemberModel).
  module: Callable[..., Any] | None = None
  state_of: Callable[..., Any] | None = None
  augment: Callable[..., jax.Array] | None = None
  label_smoothing: float = 0.0
  data_sharding: NamedSharding | None = None
  # The mesh axis the population axis is split over (``vmap``'s ``spmd_axis_name``), None: not split.
  member_axis: str | None = None
  # eval_metrics(apply, params, model_state, x, y) -> {name: scalar}, on the first evaluation batch.
  eval_metrics: Callable[..., dict] | None = None

  def si_paths(self) -> list[str]:
    return sorted(self.scale_invariant)

  def si_sq_norms(self, params) -> jax.Array:
    """‖w_l‖² of each scale-invariant leaf, in :meth:`si_paths` order (shape ``(layers,)``)."""
    chosen = select(params, self.scale_invariant)
    if not chosen:
      return jnp.zeros([0], jnp.float32)
    return jnp.stack([sq_norm(chosen[p]) for p in self.si_paths()])

  def lr_factors(self, state) -> dict[str, jax.Array]:
    """Per scale-invariant leaf, the factor on its step: ‖w_l,t‖²/‖w_l,0‖² with ``lr_norm_sq``, else none."""
    if not self.optim.lr_norm_sq:
      return {}
    ratios = self.si_sq_norms(state["params"]) / state["init_sq_norm"]
    return dict(zip(self.si_paths(), ratios))

  def rates(self, state, hp) -> dict[str, jax.Array]:
    return self.optim.rates_at(hp, state["step"], self.total_steps)

  def init_opt_state(self, params: PyTree, hp) -> PyTree:
    rates = self.optim.rates_at(hp, jnp.zeros([], jnp.int32), self.total_steps)
    return self.make_tx(self.optim, rates).init(params)


def member_step(spec: StepSpec, state: dict, hp: dict, x_all: jax.Array | None, y_all: jax.Array | None,
                *, diagnose: bool = False, idx: jax.Array | None = None,
                batch: tuple[jax.Array, jax.Array] | None = None,
                shared_step: jax.Array | None = None) -> tuple[dict, dict]:
  """One optimizer step of one member. Returns the new state and this step's metrics.

  ``idx``: this step's batch indices (:func:`batch_indices`), computed here when not given.
  ``batch``: this step's ``(x, y)`` itself (host-fed); ``x_all``, ``y_all`` and ``idx`` are then unused.
  ``shared_step``: the population's common step count, unbatched under ``jax.vmap``; handed to an optimizer
  family that asks for it (``OptimizerSpec.SHARED_STEP_ARG``: K-FAC keeps its inverse refresh a ``lax.cond``).
  """
  step = state["step"]
  if batch is not None:
    x, y = batch
  else:
    if idx is None:
      idx = batch_indices(state["key"], step, spec.num_examples, spec.batch_size)
    x, y = x_all[idx], y_all[idx]
  if spec.data_sharding is not None:
    x = jax.lax.with_sharding_constraint(x, spec.data_sharding)
    y = jax.lax.with_sharding_constraint(y, spec.data_sharding)
  step_key = jax.random.fold_in(jax.random.fold_in(state["key"], step), 1)
  if spec.augment is not None:
    x = spec.augment(step_key, x)

  def loss_fn(params):
    logits, model_state = spec.apply(params, state["model_state"], x, True)
    return cross_entropy(logits, y, spec.label_smoothing), (logits, model_state)

  def module_loss(module, batch):
    logits = module(batch[0], train=True)
    return cross_entropy(logits, batch[1], spec.label_smoothing), logits

  model = MemberModel(module=lambda params: spec.module(params, state["model_state"]), state=spec.state_of,
                      loss=module_loss)
  rates = spec.rates(state, hp)
  grad_fn = spec.grad_fn or spec.optim.value_and_grad
  result = grad_fn(loss_fn, state["params"], (x, y), step_key, model)
  tx = spec.make_tx(spec.optim, rates)
  extra = dict(result.extra)
  if shared_step is not None and spec.optim.SHARED_STEP_ARG:
    extra[spec.optim.SHARED_STEP_ARG] = shared_step
  updates, opt_state = tx.update(result.grads, state["opt_state"], state["params"], **extra)
  factors = spec.lr_factors(state)
  if factors:
    # Zhang et al. Z2: η_t ∝ ‖w_t‖² per scale-invariant layer, i.e. its step scaled by ‖w_t‖²/‖w_0‖²;
    # the other parameters (classifier) keep the base schedule.
    updates = masks.map_with_path(lambda path, u: u * factors[path] if path in factors else u, updates)
  params = optax.apply_updates(state["params"], updates)
  new_state = dict(state, step=step + 1, params=params, model_state=result.model_state, opt_state=opt_state)
  metrics = {
      "loss": result.loss,
      "accuracy": jnp.mean(jnp.argmax(result.logits, -1) == y),
  }
  if diagnose:
    metrics.update(diagnose_step(spec, state["params"], params, rates, spec.lr_factors(state)))
  return new_state, metrics


def diagnose_step(spec: StepSpec, old_params: PyTree, new_params: PyTree, rates: dict,
                  lr_factors: dict | None = None) -> dict:
  """Per-layer ‖w‖, η_eff (scale-invariant leaves) and angular update (every measured leaf) of one step.

  Zhang et al. 2019 §4.1, via wd_optax.diagnostics.
  """
  old = select(old_params, spec.measured | spec.scale_invariant)
  new = select(new_params, spec.measured | spec.scale_invariant)
  si_old = {p: old[p] for p in spec.si_paths()}  # sorted: the concatenation below is in this order
  si_new = {p: new[p] for p in spec.si_paths()}
  optimizer = spec.optim.KIND
  out = {"lr": rates["learning_rate"], "weight_decay": rates["weight_decay"]}
  out.update(diagnostics.flatten_by_path(diagnostics.weight_norms(new), prefix="norm"))
  lr_factors = lr_factors or {}
  for path, w in si_new.items():  # η_eff = η_l/‖w‖² with the leaf's own step size η_l
    lr = rates["learning_rate"] * lr_factors.get(path, 1.0)
    out[f"eff_lr/{path}"] = diagnostics.effective_learning_rate(lr, {"w": w}, optimizer=optimizer)["w"]
  # Angles of every measured weight matrix too: in a model without scale-invariant layers (a pre-LN transformer)
  # the angular update is still the step's size relative to the weight.
  out.update(diagnostics.flatten_by_path(diagnostics.angular_update(old, new), prefix="angle"))
  if spec.scale_invariant:
    out["norm/scale_invariant"] = jnp.sqrt(sq_norm(si_new))
    flat = lambda tree: {"scale_invariant": jnp.concatenate([jnp.ravel(v) for v in tree.values()])}
    out["angle/scale_invariant"] = diagnostics.angular_update(flat(si_old), flat(si_new))["scale_invariant"]
  return out


def population_chunk(spec: StepSpec, state: dict, hp: dict, x_all: jax.Array | None, y_all: jax.Array | None,
                     num_steps: int, first_step: jax.Array | None = None,
                     batches: tuple[jax.Array, jax.Array] | None = None) -> tuple[dict, dict]:
  """``num_steps`` steps of every member (vmapped), scanned on device; diagnostics of the last step.

  ``first_step``: the members' (common) step count as a replicated scalar; read from member 0's state when
  not given, which on a mesh whose ``members`` axis splits the population costs a broadcast from member 0's
  device to the others every chunk and step.

  ``batches``: host-fed ``(xs, ys)`` of shape ``(num_steps, members, batch, ...)`` (the examples of
  :func:`chunk_indices`, :mod:`experiments.train.feed`), consumed step by step instead of drawing from
  ``x_all`` / ``y_all`` (which may then be ``None``).

  Returns the new state and metrics: ``loss``/``accuracy`` of shape ``(members, num_steps)``, diagnostics
  of shape ``(members,)``. Nothing leaves the device until the caller fetches the result.
  """
  vmap = lambda f: jax.vmap(f, spmd_axis_name=spec.member_axis)
  # The step count is the same for every member: passed unbatched (in_axes None) as the members' shared step.
  vmap_shared = lambda f: jax.vmap(f, in_axes=(0, 0, 0, None), spmd_axis_name=spec.member_axis)
  single = jax.tree.leaves(state)[0].shape[0] == 1
  squeeze = lambda tree: jax.tree.map(lambda x: x[0], tree)
  expand = lambda tree: jax.tree.map(lambda x: x[None], tree)
  if first_step is None:
    first_step = state["step"][0]
  n, batch = spec.num_examples, spec.batch_size
  if batches is None:
    if single:
      # A population of one runs unbatched (squeezed once, outside the loop): size-1 batch dimensions and
      # per-step reshapes cost XLA:CPU time.
      step_all = lambda s, h, i, t: member_step(spec, s, h, x_all, y_all, idx=i[0], shared_step=t)
    else:
      step_all = vmap_shared(lambda s, h, i, t: member_step(spec, s, h, x_all, y_all, idx=i, shared_step=t))
    # Members of a population share the step count, so the chunk's epochs are known: their permutations are
    # drawn once before the scan (a sort of the training set per step would cost more than a small
    # network's step; a conditional redraw inside the loop costs buffer copies on XLA:CPU). They are laid
    # out end to end per member, so a step's batch is one contiguous slice (indexing an epoch axis first
    # costs a copy per step).
    orders, first_epoch = chunk_orders(state["key"], first_step, num_steps, n, batch, vmap)
  elif single:
    fed_all = lambda s, h, b, t: member_step(spec, s, h, None, None, batch=squeeze(b), shared_step=t)
  else:
    fed_all = vmap_shared(lambda s, h, b, t: member_step(spec, s, h, None, None, batch=b, shared_step=t))
  member_hp = squeeze(hp) if single else hp

  def body(carry, _):
    current, step = carry
    if batches is None:
      offset = chunk_offset(step, first_epoch, n, batch)
      idx = vmap(lambda o: jax.lax.dynamic_slice(o, (offset,), (batch,)))(orders)
      current, metrics = step_all(current, member_hp, idx, step)
    else:
      # Indexed, not scanned over: slicing the last step off the scan's inputs would copy them.
      at = lambda b: jax.lax.dynamic_index_in_dim(b, step - first_step, keepdims=False)
      current, metrics = fed_all(current, member_hp, jax.tree.map(at, batches), step)
    return (current, step + 1), metrics

  if single:
    state = squeeze(state)

  # The last step runs outside the scan so the parameters before it are at hand for its angular update;
  # carrying them through the scan costs a copy of all parameters per step on XLA:CPU.
  (state, step), history = jax.lax.scan(body, (state, jnp.asarray(first_step, jnp.int32)), None,
                                       length=num_steps - 1)
  before_last = state["params"]
  (state, _), last = body((state, step), None)
  history = jax.tree.map(lambda h, l: jnp.concatenate([h, l[None]]), history, last)
  if single:
    state, before_last, history = expand(state), expand(before_last), jax.tree.map(lambda h: h[:, None], history)

  def diagnose_member(s, h, old_params):
    previous = dict(s, step=s["step"] - 1, params=old_params)
    return diagnose_step(spec, old_params, s["params"], spec.rates(previous, h), spec.lr_factors(previous))

  def diagnose_member_state(s, h, old_params):
    out = diagnose_member(s, h, old_params)
    out.update(spec.optim.diagnostics(s["opt_state"], s["params"]))
    return out

  out = vmap(diagnose_member_state)(state, hp, before_last)
  for key in ("loss", "accuracy"):
    out[key] = jnp.swapaxes(history[key], 0, 1)
  return state, out
