"""optax.contrib.muon composed with wd_optax.decoupled_decay (docs/mechanisms/equilibrium.md, "With Muon").

optax.contrib.muon exists in the oldest supported optax (0.2.5) and in the pinned one (0.2.8), with the same
split: 2-D leaves take the Muon step, the rest optax.adamw. The module skips cleanly where it is missing.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import wd_optax
from _tol import assert_close_scaled

muon = getattr(getattr(optax, "contrib", None), "muon", None)
if muon is None:
  pytest.skip("optax.contrib.muon is not in this optax", allow_module_level=True)

MATRICES = wd_optax.masks.kernels()              # the 2-D leaves, which muon gives the Muon step
REST = wd_optax.masks.negate(MATRICES)           # biases and gains: muon's Adam group
STEPS = 5


def _params():
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  return {"hidden": {"kernel": jax.random.normal(k1, (6, 4)), "bias": jax.random.normal(k2, (4,))},
          "head": {"kernel": jax.random.normal(k3, (4, 3))}}


def _grads(t):
  keys = jax.random.split(jax.random.key(10 + t), 3)
  shapes = {"hidden": {"kernel": (6, 4), "bias": (4,)}, "head": {"kernel": (4, 3)}}
  leaves, treedef = jax.tree.flatten(shapes, is_leaf=lambda x: isinstance(x, tuple))
  return jax.tree.unflatten(treedef, [jax.random.normal(k, s) for k, s in zip(keys, leaves)])


def _run(tx, params, steps=STEPS):
  state = tx.init(params)
  update = jax.jit(tx.update)   # one compile: muon's Newton-Schulz op by op is slow eagerly
  for t in range(steps):
    updates, state = update(_grads(t), state, params)
    params = optax.apply_updates(params, updates)
  return params


def test_decoupled_decay_per_group_equals_muons_own_weight_decay():
  # optax's muon decays its Muon group by add_decayed_weights before the learning rate, and its Adam
  # group through adamw: both are wd_optax's coupling="lr", so per-group masks reproduce them.
  lr, wd_muon, wd_adam = 0.02, 0.1, 0.03
  own = muon(lr, weight_decay=wd_muon, adam_weight_decay=wd_adam)
  ours = optax.chain(
      muon(lr),
      wd_optax.decoupled_decay(wd_muon, coupling="lr", learning_rate=lr, mask=MATRICES),
      wd_optax.decoupled_decay(wd_adam, coupling="lr", learning_rate=lr, mask=REST))
  params = _params()
  expected, got = _run(own, params), _run(ours, params)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
    # -η(d + λw) vs -ηd - ηλw: rounding of 5 steps. A missing or misplaced decay is off by ~5ηλ|w| = 1%
    # of the weights, ~1e5 times this tolerance (64 eps of max|w|).
    assert_close_scaled(a, b, c=64)


_SCHEDULE = optax.linear_schedule(0.0, 0.02, 4)


@functools.lru_cache(maxsize=1)
def _plain_muon_updates():
  """Muon's own updates for the fixed gradient sequence (the same for every coupling: computed once)."""
  tx = muon(_SCHEDULE)
  params = _params()
  state = tx.init(params)
  update = jax.jit(tx.update)
  out = []
  for t in range(STEPS):
    u, state = update(_grads(t), state, params)
    out.append(u)
  return out


@pytest.mark.parametrize("coupling", wd_optax.COUPLINGS)
def test_muon_then_decoupled_decay_matches_hand_written_reference(coupling):
  # Reference: the Muon updates (they depend on the gradients only, which are fixed here) followed by
  # w ← w − c_t λ w on the matrices, with c_t written out for each coupling (docs/papers.md §1).
  schedule = _SCHEDULE
  peak, lam = 0.02, 0.1
  params = _params()
  tx = optax.chain(muon(schedule), wd_optax.decoupled_decay(
      lam, coupling=coupling, learning_rate=schedule,
      peak_learning_rate=peak if coupling in ("schedule", "corrected") else None, mask=MATRICES))
  got = _run(tx, params)

  w = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
  for t, u in enumerate(_plain_muon_updates()):
    eta = float(schedule(t))
    c = {"lr": eta, "schedule": eta / peak, "independent": 1.0, "corrected": eta * eta / peak}[coupling]
    for layer in w:
      for name in w[layer]:
        decay = c * lam * w[layer][name] if name == "kernel" else 0.0
        w[layer][name] = w[layer][name] + np.asarray(u[layer][name], np.float64) - decay
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(w)):
    assert_close_scaled(a, b, c=64)


def test_documented_example_runs_under_jit():
  # The example of docs/mechanisms/equilibrium.md: Muon on matrices with AdamC-style decay, Adam on the rest.
  lr = optax.warmup_cosine_decay_schedule(0.0, 0.02, 2, 20)
  tx = optax.chain(
      optax.contrib.muon(lr),
      wd_optax.decoupled_decay(0.1, coupling="corrected", learning_rate=lr, peak_learning_rate=0.02,
                               mask=wd_optax.masks.kernels()),
      wd_optax.decoupled_decay(0.01, coupling="lr", learning_rate=lr,
                               mask=wd_optax.masks.negate(wd_optax.masks.kernels())))
  params = _params()
  state = tx.init(params)
  step = jax.jit(lambda p, s, g: tx.update(g, s, p))
  for t in range(3):
    updates, state = step(params, state, _grads(t))
    params = optax.apply_updates(params, updates)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))
