"""Library input checks: non-float leaves under decay, updates that do not match params, out-of-range
moments, and the preconditioner floor of ``scale_by_adam_l2``.

Every check runs when the update is traced (shapes and dtypes are static), so it also fires under
``jax.jit``, and none rejects the traced hyperparameters that ``optax.inject_hyperparams`` passes.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import wd_optax
from wd_optax import kfac

PARAMS = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}
GRADS = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}
INT_PARAMS = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}, "step": jnp.zeros((), jnp.int32)}
INT_GRADS = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}, "step": jnp.zeros((), jnp.int32)}
NOT_STEP = {"dense": True, "step": False}

# Every transform that reads params next to updates, by the name its errors use.
TRANSFORMS = {
    "add_l2": lambda **kw: wd_optax.add_l2(0.1, **kw),
    "decoupled_decay": lambda **kw: wd_optax.decoupled_decay(0.1, learning_rate=0.1, **kw),
    "scale_by_adam_l2": lambda **kw: wd_optax.scale_by_adam_l2(0.1, **kw),
    "fix_norm": lambda **kw: wd_optax.fix_norm(**kw),
    "monitor": lambda **kw: wd_optax.monitor(**kw),
}
DECAYS = ["add_l2", "decoupled_decay", "scale_by_adam_l2"]


# --- integer leaves where the decay applies --------------------------------------------------------

@pytest.mark.parametrize("name", DECAYS)
def test_integer_param_under_decay_is_refused_at_init_naming_the_path(name):
  with pytest.raises(TypeError, match=re.escape(f"{name}: parameter 'step' has dtype int32;")) as info:
    TRANSFORMS[name]().init(INT_PARAMS)
  assert "floating-point" in str(info.value) and "mask" in str(info.value)


@pytest.mark.parametrize("name", DECAYS)
def test_integer_param_under_decay_is_refused_at_update_naming_the_path(name):
  tx = TRANSFORMS[name]()
  state = tx.init(PARAMS)
  params = {"dense": {"kernel": jnp.ones((2, 2), jnp.int32), "bias": jnp.ones(2)}}
  with pytest.raises(TypeError, match=re.escape(f"{name}: parameter 'dense/kernel' has dtype int32;")):
    jax.jit(tx.update)(GRADS, state, params)


@pytest.mark.parametrize("name", ["add_l2", "decoupled_decay"])
def test_integer_update_under_decay_is_refused(name):
  tx = TRANSFORMS[name]()
  grads = {"dense": {"kernel": jnp.ones((2, 2), jnp.int32), "bias": jnp.ones(2)}}
  with pytest.raises(TypeError, match=re.escape("the update for parameter 'dense/kernel' has dtype int32")):
    tx.update(grads, tx.init(PARAMS), PARAMS)


@pytest.mark.parametrize("name", ["add_l2", "decoupled_decay"])
def test_integer_leaf_outside_the_mask_passes_through(name):
  tx = TRANSFORMS[name](mask=NOT_STEP)
  updates, _ = tx.update(INT_GRADS, tx.init(INT_PARAMS), INT_PARAMS)
  assert updates["step"] is INT_GRADS["step"]
  # The decayed leaves did get the decay: -0.1 * 0.1 * w for decoupled decay, +0.1 * w for add_l2.
  expected = 1.1 if name == "add_l2" else 1.0 - 0.01
  np.testing.assert_allclose(updates["dense"]["kernel"], np.full((2, 2), expected), rtol=1e-6)


@pytest.mark.parametrize("name", DECAYS)
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32], ids=["bfloat16", "float16", "float32"])
def test_every_float_dtype_is_accepted(name, dtype):
  params = jax.tree.map(lambda x: x.astype(dtype), PARAMS)
  tx = TRANSFORMS[name]()
  updates, _ = jax.jit(tx.update)(params, tx.init(params), params)
  assert all(u.dtype == dtype for u in jax.tree.leaves(updates))


def test_optimizers_refuse_integer_params_under_their_decay():
  with pytest.raises(TypeError, match="add_l2: parameter 'step' has dtype int32"):
    wd_optax.sgd(0.1, weight_decay=1e-3).init(INT_PARAMS)
  with pytest.raises(TypeError, match="decoupled_decay: parameter 'step' has dtype int32"):
    wd_optax.adam(0.1, weight_decay=1e-3).init(INT_PARAMS)
  with pytest.raises(TypeError, match="scale_by_adam_l2: parameter 'step' has dtype int32"):
    wd_optax.adam(0.1, weight_decay=1e-3, decay="l2").init(INT_PARAMS)


# --- updates that do not match params ----------------------------------------------------------------

@pytest.mark.parametrize("name", TRANSFORMS)
def test_updates_missing_a_leaf_names_updates_and_params(name):
  tx = TRANSFORMS[name]()
  state = tx.init(PARAMS)
  with pytest.raises(ValueError, match=re.escape(
      f"{name}: the structure of updates does not match the structure of params: params has "
      "['dense/bias'] that updates lacks")):
    tx.update({"dense": {"kernel": jnp.ones((2, 2))}}, state, PARAMS)
  with pytest.raises(ValueError, match=re.escape("updates has ['head/kernel'] that params lacks")):
    tx.update({**GRADS, "head": {"kernel": jnp.ones(2)}}, state, PARAMS)


@pytest.mark.parametrize("name", TRANSFORMS)
def test_update_of_another_shape_names_the_leaf(name):
  tx = TRANSFORMS[name]()
  state = tx.init(PARAMS)
  # (2, 1) would broadcast silently against the (2, 2) kernel.
  grads = {"dense": {"kernel": jnp.ones((2, 1)), "bias": jnp.ones(2)}}
  with pytest.raises(ValueError, match=re.escape(
      f"{name}: the update for parameter 'dense/kernel' has shape (2, 1), but the parameter has shape "
      "(2, 2)")):
    jax.jit(tx.update)(grads, state, PARAMS)


def test_updates_in_another_container_are_named():
  tx = wd_optax.add_l2(0.1)
  grads = {"dense": [jnp.ones((2, 2))]}
  params = {"dense": (jnp.ones((2, 2)),)}
  with pytest.raises(ValueError, match=re.escape(
      "add_l2: updates and params name the same leaves but in different containers: at 'dense' updates has "
      "a list and params a tuple")):
    tx.update(grads, tx.init(params), params)


# --- moments and other constants -------------------------------------------------------------------

BAD_CONSTANTS = [
    (lambda: wd_optax.adam(0.1, b1=1.5), ValueError, "b1 must be in [0, 1), got 1.5."),
    (lambda: wd_optax.adam(0.1, b1=1.0), ValueError, "b1 must be in [0, 1), got 1.0."),
    (lambda: wd_optax.adam(0.1, b2=-0.1), ValueError, "b2 must be in [0, 1), got -0.1."),
    (lambda: wd_optax.adam(0.1, eps=-1e-8), ValueError, "eps must be finite and >= 0, got -1e-08."),
    (lambda: wd_optax.adam(0.1, eps=float("nan")), ValueError, "eps must be finite and >= 0, got nan."),
    (lambda: wd_optax.adam(0.1, b1="0.9"), TypeError, "b1 must be a number in [0, 1), got '0.9' of type str."),
    (lambda: wd_optax.adam(0.1, decay="l2", b2=1.0), ValueError, "b2 must be in [0, 1), got 1.0."),
    (lambda: wd_optax.scale_by_adam_l2(0.1, b1=True), TypeError,
     "b1 must be a number in [0, 1), got True of type bool."),
    (lambda: wd_optax.scale_by_adam_l2(0.1, b2=jnp.ones(2) * 0.5), ValueError,
     "b2 must be a scalar, got an array of shape (2,)."),
    (lambda: wd_optax.scale_by_adam_l2(0.1, eps=-1.0), ValueError, "eps must be finite and >= 0, got -1.0."),
    (lambda: wd_optax.scale_by_adam_l2(0.1, preconditioner_floor=-1e-3), ValueError,
     "preconditioner_floor must be finite and >= 0, got -0.001."),
    (lambda: wd_optax.scale_by_adam_l2(0.1, preconditioner_floor=lambda t: 1e-3), TypeError,
     "preconditioner_floor must be a finite number >= 0, got <function"),
    (lambda: wd_optax.sgd(0.1, momentum=1.0), ValueError, "momentum must be in [0, 1), got 1.0."),
    (lambda: wd_optax.sgd(0.1, momentum=-0.5), ValueError, "momentum must be in [0, 1), got -0.5."),
    (lambda: wd_optax.sgd(0.1, momentum="0.9"), TypeError,
     "momentum must be a number in [0, 1) or None, got '0.9' of type str."),
    (lambda: wd_optax.fixnorm(0.1, classifier_norm=1.0, classifier_mask=None, scale_invariant_mask=None,
                              momentum=1.2), ValueError, "momentum must be in [0, 1), got 1.2."),
    (lambda: kfac.kfac(0.1, damping=1e-3, momentum=1.0), ValueError, "momentum must be in [0, 1), got 1.0."),
    (lambda: kfac.scale_by_kfac(1e-3, ema=-0.1), ValueError, "ema must be in [0, 1), got -0.1."),
]


@pytest.mark.parametrize("make,error,message", BAD_CONSTANTS, ids=[m for _, _, m in BAD_CONSTANTS])
def test_bad_constant_names_the_argument(make, error, message):
  with pytest.raises(error, match=re.escape(message)):
    make()


def test_edge_constants_are_accepted():
  wd_optax.adam(0.1, b1=0.0, b2=0.0, eps=0.0)
  wd_optax.scale_by_adam_l2(0.1, b1=0.0, eps=0.0, preconditioner_floor=0.0)
  wd_optax.sgd(0.1, momentum=0.0)
  wd_optax.sgd(0.1, momentum=None)
  wd_optax.adam(0.1, b1=np.float32(0.9), b2=jnp.asarray(0.99))


@pytest.mark.parametrize("factory,kwargs", [
    (wd_optax.adam, dict(learning_rate=0.1, b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.1)),
    (wd_optax.adam, dict(learning_rate=0.1, b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.1, decay="l2")),
    (wd_optax.scale_by_adam_l2, dict(weight_decay=0.1, b1=0.9, b2=0.99, eps=1e-8, preconditioner_floor=1e-3,
                                     l2_in_second_moment=False, l2_preconditioned=True)),
    (wd_optax.sgd, dict(learning_rate=0.1, momentum=0.9, weight_decay=0.1)),
], ids=["adam", "adam[l2]", "scale_by_adam_l2", "sgd"])
def test_injected_constants_are_checked_when_concrete_and_pass_when_traced(factory, kwargs):
  injected = optax.inject_hyperparams(factory)(**kwargs)
  state = jax.jit(injected.init)(PARAMS)            # init traced: the moments are tracers
  updates, state = jax.jit(injected.update)(GRADS, state, PARAMS)
  assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))
  bad = "b1" if "b1" in kwargs else "momentum"
  with pytest.raises(ValueError, match=f"{bad} must be in"):
    optax.inject_hyperparams(factory)(**{**kwargs, bad: 1.0}).init(PARAMS)  # concrete: checked


# --- preconditioner_floor --------------------------------------------------------------------------

def _numpy_adam_l2_floor(w, grads, wd, b1, b2, eps, floor, in_m, in_v, precond):
  """Adam with routed L2 and the floored denominator, written out in numpy (float64)."""
  w = np.asarray(w, np.float64)
  m, v, steps = np.zeros_like(w), np.zeros_like(w), []
  for t, g in enumerate(grads, start=1):
    g = np.asarray(g, np.float64)
    r = wd * w
    m = b1 * m + (1 - b1) * (g + in_m * r)
    v = b2 * v + (1 - b2) * (g + in_v * r) ** 2
    denom = np.maximum(np.sqrt(v / (1 - b2 ** t)), floor) + eps
    steps.append(m / (1 - b1 ** t) / denom + precond * r / denom)
  return steps


@pytest.mark.parametrize("switches", [(0, 0, 1), (1, 0, 0), (1, 1, 0)], ids=["preconditioned", "first", "adam_l2"])
@pytest.mark.parametrize("floor", [0.0, 1e-3])
def test_preconditioner_floor_matches_hand_written_update(switches, floor):
  in_m, in_v, precond = switches
  # The last coordinate never gets a gradient: a parameter at its optimum.
  w = jnp.array([0.5, -1.0, 2.0, 1.5])
  grads = [jnp.array([0.3, -0.2, 1e-4, 0.0]) * (t + 1) for t in range(4)]
  tx = wd_optax.scale_by_adam_l2(0.1, b1=0.8, b2=0.9, eps=1e-8, preconditioner_floor=floor,
                                 l2_in_first_moment=bool(in_m), l2_in_second_moment=bool(in_v),
                                 l2_preconditioned=bool(precond))
  state = tx.init({"w": w})
  expected = _numpy_adam_l2_floor(w, grads, 0.1, 0.8, 0.9, 1e-8, floor, in_m, in_v, precond)
  for g, e in zip(grads, expected):
    u, state = tx.update({"w": g}, state, {"w": w})
    np.testing.assert_allclose(u["w"], e, rtol=1e-5, atol=1e-7 * np.max(np.abs(e)))
  if in_v == 0:
    # The hazard (floor 0): the gradient-free coordinate steps by about λw/ε; the floor bounds it by λw/φ.
    bound = 0.1 * 1.5 / (floor if floor else 1e-8)
    assert 0.5 * bound < abs(float(u["w"][-1])) <= 1.01 * bound


def test_zero_floor_is_bitwise_the_literal_formula():
  kwargs = dict(l2_in_first_moment=False, l2_in_second_moment=False, l2_preconditioned=True)
  literal = wd_optax.scale_by_adam_l2(0.1, **kwargs)
  explicit = wd_optax.scale_by_adam_l2(0.1, preconditioner_floor=0.0, **kwargs)
  w = {"w": jnp.array([0.5, -1.0, 2.0])}
  g = {"w": jnp.array([0.3, 0.0, 1e-3])}
  a, _ = literal.update(g, literal.init(w), w)
  b, _ = explicit.update(g, explicit.init(w), w)
  np.testing.assert_array_equal(a["w"], b["w"])
  # ... and the same as the formula without max: λw/ε at the zero-gradient coordinate.
  np.testing.assert_allclose(float(a["w"][1]), 0.1 * -1.0 / 1e-8, rtol=1e-6)
