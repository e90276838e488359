"""One conformance suite over every transform and optimizer of the foundation.

Each entry is a factory and its keyword arguments; every test runs over all entries: jit without
recompilation, inside ``optax.inject_hyperparams``, dtype preservation, state shapes stable under
``lax.cond``, schedules for every rate, and ``nnx.Optimizer`` on a small NNX model.
"""

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import wd_optax
from _tol import assert_close_scaled


@dataclasses.dataclass(frozen=True)
class Entry:
  name: str
  factory: Callable[..., optax.GradientTransformation]
  kwargs: dict
  rate_args: tuple[str, ...]   # the ScalarOrSchedule arguments
  lr_scaled: bool = True       # False for a direction-only transform: chain a learning rate in tests

  def make(self, **overrides) -> optax.GradientTransformation:
    return self.factory(**{**self.kwargs, **overrides})


KERNELS = wd_optax.masks.kernels()
ENTRIES = [
    Entry("add_l2", wd_optax.add_l2, dict(weight_decay=0.1, mask=KERNELS), ("weight_decay",), False),
    *[Entry(f"decoupled_decay[{c}]", wd_optax.decoupled_decay,
            dict(weight_decay=0.1, coupling=c, learning_rate=0.05, mask=KERNELS),
            ("weight_decay", "learning_rate"), False) for c in wd_optax.COUPLINGS],
    Entry("scale_by_adam_l2", wd_optax.scale_by_adam_l2, dict(weight_decay=0.1, mask=KERNELS),
          ("weight_decay",), False),
    Entry("scale_by_adam_l2[outside]", wd_optax.scale_by_adam_l2,
          dict(weight_decay=0.1, l2_in_first_moment=False, l2_preconditioned=True),
          ("weight_decay",), False),
    Entry("sgd[l2]", wd_optax.sgd, dict(learning_rate=0.05, weight_decay=0.1, decay="l2", mask=KERNELS),
          ("learning_rate", "weight_decay")),
    Entry("sgd[decoupled]", wd_optax.sgd,
          dict(learning_rate=0.05, weight_decay=0.1, decay="decoupled", mask=KERNELS),
          ("learning_rate", "weight_decay")),
    *[Entry(f"adam[{d}]", wd_optax.adam, dict(learning_rate=1e-2, weight_decay=0.1, decay=d, mask=KERNELS),
            ("learning_rate", "weight_decay")) for d in wd_optax.optimizers.ADAM_DECAYS],
]
IDS = [e.name for e in ENTRIES]


def _full(entry: Entry, tx: optax.GradientTransformation) -> optax.GradientTransformation:
  """A complete optimizer: direction-only transforms get a momentum step and a learning rate."""
  if entry.lr_scaled:
    return tx
  if entry.factory is wd_optax.decoupled_decay:
    return optax.chain(optax.scale_by_learning_rate(0.05), tx)
  return optax.chain(tx, optax.scale_by_learning_rate(0.05))


def _params(dtype=jnp.float32):
  k1, k2 = jax.random.split(jax.random.key(0))
  return {"dense": {"kernel": jax.random.normal(k1, (5, 3), dtype), "bias": jnp.ones((3,), dtype)},
          "scale": jax.random.normal(k2, (3,), dtype)}


def _grads(params, step):
  return jax.tree.map(lambda p: jnp.sin(p * (step + 1)).astype(p.dtype), params)


def _run(tx, params, steps=3):
  state = tx.init(params)
  for t in range(steps):
    updates, state = tx.update(_grads(params, t), state, params)
    params = optax.apply_updates(params, updates)
  return params, state


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_jit_compiles_once(entry):
  tx = _full(entry, entry.make())
  traces = []

  @jax.jit
  def step(params, state, t):
    traces.append(1)
    updates, state = tx.update(_grads(params, t), state, params)
    return optax.apply_updates(params, updates), state

  params = _params()
  state = tx.init(params)
  for t in range(3):
    params, state = step(params, state, jnp.asarray(t, jnp.float32))
  assert len(traces) == 1
  eager, _ = _run(tx, _params(), steps=3)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(eager)):
    assert_close_scaled(a, b, c=100)   # two programs, 3 steps: float32 round-off of the params' scale


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_inject_hyperparams_matches_plain_and_exposes_rates(entry):
  static = tuple(k for k in ("mask",) if k in entry.kwargs)
  injected = optax.inject_hyperparams(entry.factory, static_args=static)(**entry.kwargs)
  plain_params, _ = _run(_full(entry, entry.make()), _params())
  inj_params, inj_state = _run(_full(entry, injected), _params())
  for a, b in zip(jax.tree.leaves(inj_params), jax.tree.leaves(plain_params)):
    assert_close_scaled(a, b, c=100)   # two programs, 3 steps: float32 round-off of the params' scale
  hyperparams = optax.tree_utils.tree_get(inj_state, "hyperparams")
  for rate in entry.rate_args:
    assert float(hyperparams[rate]) == pytest.approx(entry.kwargs[rate])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_keeps_param_dtype(entry, dtype):
  tx = _full(entry, entry.make())
  params = _params(dtype)
  state = tx.init(params)
  state_dtypes = jax.tree.map(lambda x: x.dtype, state)
  for t in range(2):
    updates, state = tx.update(_grads(params, t), state, params)
    for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params)):
      assert u.dtype == p.dtype
    assert jax.tree.map(lambda x: x.dtype, state) == state_dtypes
    params = optax.apply_updates(params, updates)
  assert all(p.dtype == dtype for p in jax.tree.leaves(params))


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_state_shapes_stable_under_cond(entry):
  tx = _full(entry, entry.make())
  params = _params()
  state = tx.init(params)

  @jax.jit
  def maybe_update(state, take_step):
    return jax.lax.cond(take_step, lambda s: tx.update(_grads(params, 0), s, params)[1], lambda s: s, state)

  stepped = maybe_update(state, True)
  skipped = maybe_update(state, False)
  assert jax.tree.structure(stepped) == jax.tree.structure(state)
  for a, b in zip(jax.tree.leaves(skipped), jax.tree.leaves(state)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_accepts_schedules_for_every_rate(entry):
  # A constant schedule must give the same steps as the constant; a decaying one must differ.
  # Couplings that divide by the peak learning rate need it given once the learning rate is a schedule.
  needs_peak = entry.kwargs.get("coupling") in ("schedule", "corrected") and "learning_rate" in entry.rate_args
  extra = {"peak_learning_rate": entry.kwargs["learning_rate"]} if needs_peak else {}
  as_constant_schedules = {k: optax.constant_schedule(entry.kwargs[k]) for k in entry.rate_args}
  plain, _ = _run(_full(entry, entry.make()), _params())
  scheduled, state = _run(_full(entry, entry.make(**as_constant_schedules, **extra)), _params())
  for a, b in zip(jax.tree.leaves(scheduled), jax.tree.leaves(plain)):
    assert_close_scaled(a, b, c=16)   # a constant schedule traced in place of the constant
  decaying = {k: optax.linear_schedule(entry.kwargs[k], 0.0, 3) for k in entry.rate_args}
  changed, _ = _run(_full(entry, entry.make(**decaying, **extra)), _params())
  assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(changed), jax.tree.leaves(plain)))


class TinyNet(nnx.Module):
  def __init__(self, rngs):
    self.hidden = nnx.Linear(4, 8, rngs=rngs)
    self.norm = nnx.LayerNorm(8, rngs=rngs)
    self.classifier = nnx.Linear(8, 3, rngs=rngs)

  def __call__(self, x):
    return self.classifier(nnx.relu(self.norm(self.hidden(x))))


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_works_with_nnx_optimizer(entry):
  # nnx.Optimizer (Variables at init, pure States at update) must take the same steps as the same
  # transform run on the model's parameters as a plain nested dict.
  x = jax.random.normal(jax.random.key(1), (16, 4))
  y = jnp.arange(16) % 3

  def loss_fn(model):
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

  model = TinyNet(nnx.Rngs(0))
  graphdef, start_params, rest = nnx.split(model, nnx.Param, ...)
  start_params = nnx.as_pure(start_params)  # arrays: immune to the in-place training below
  tx = _full(entry, entry.make())
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def train_step(model, optimizer):
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  for _ in range(3):
    train_step(model, optimizer)

  def dict_loss(p):
    return loss_fn(nnx.merge(graphdef, p, rest))

  dict_grad = jax.jit(jax.grad(dict_loss))
  params = start_params
  state = tx.init(params)
  for _ in range(3):
    grads = dict_grad(params)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  trained = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  for a, b in zip(jax.tree.leaves(trained), jax.tree.leaves(params)):
    assert_close_scaled(a, b, c=100)   # two programs, 3 steps: float32 round-off of the params' scale
