"""fix_norm and fixnorm: the norm invariant in a real training run, against hand-written references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import wd_optax
from wd_optax.projections import FixNormState, fix_norm, fixnorm
from _tol import assert_close_scaled

# A bias-free layer followed by a LayerNorm without scale/offset is exactly scale-invariant.
_SCALE_INVARIANT = {"hidden1": {"kernel": True}, "hidden2": {"kernel": True},
                    "gain": False, "head": {"kernel": False, "bias": False}}
_CLASSIFIER = {"hidden1": {"kernel": False}, "hidden2": {"kernel": False},
               "gain": False, "head": {"kernel": True, "bias": False}}


_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _layer_norm(h):
  h = h - h.mean(-1, keepdims=True)
  return h / jnp.sqrt(jnp.mean(h * h, -1, keepdims=True) + 1e-5)


def _apply(params, x):
  h = jax.nn.relu(_layer_norm(x @ params["hidden1"]["kernel"]))
  h = jax.nn.relu(_layer_norm(h @ params["hidden2"]["kernel"])) * params["gain"]
  return h @ params["head"]["kernel"] + params["head"]["bias"]


def _loss(params, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(_apply(params, x), y).mean()


def _init_params(key, d_in=8, width=16, classes=4):
  k1, k2, k3 = jax.random.split(key, 3)
  return {
      "hidden1": {"kernel": jax.random.normal(k1, (d_in, width)) / math.sqrt(d_in)},
      "hidden2": {"kernel": jax.random.normal(k2, (width, width)) / math.sqrt(width)},
      "gain": jnp.ones((width,)),
      "head": {"kernel": jax.random.normal(k3, (width, classes)) / math.sqrt(width),
               "bias": jnp.zeros((classes,))},
  }


def _teacher_data(key, n=512, d_in=8, classes=4):
  kx, kt, kn = jax.random.split(key, 3)
  x = jax.random.normal(kx, (n, d_in))
  y = jnp.argmax(jnp.tanh(x @ jax.random.normal(kt, (d_in, 16))) @ jax.random.normal(kn, (16, classes)), -1)
  return x, y


def _masked_norms(params, per_channel, classifier_per_class):
  axes = lambda w, pc: tuple(range(w.ndim - 1)) if pc else None
  norms = lambda w, pc: jnp.sqrt(jnp.sum(jnp.square(w), axis=axes(w, pc)))
  return (norms(params["hidden1"]["kernel"], per_channel),
          norms(params["hidden2"]["kernel"], per_channel),
          norms(params["head"]["kernel"], classifier_per_class))


@pytest.mark.parametrize("per_channel, classifier_per_class, nesterov",
                         [(False, False, False), (True, True, True)])
def test_norm_invariant_holds_over_2000_training_steps(per_channel, classifier_per_class, nesterov):
  steps, batch, classifier_norm = 2000, 32, 3.0
  params = _init_params(jax.random.key(0))
  x, y = _teacher_data(jax.random.key(1))
  schedule = optax.cosine_decay_schedule(0.5, steps)
  tx = fixnorm(schedule, classifier_norm=classifier_norm, classifier_mask=_CLASSIFIER,
               scale_invariant_mask=_SCALE_INVARIANT, momentum=0.9, nesterov=nesterov,
               per_channel=per_channel, classifier_per_class=classifier_per_class)
  # optax.sgd sees the same gradients: the leaves outside both masks must get its updates bit for bit
  # (fix_norm passes them through untouched and nothing decays them).
  reference = optax.sgd(schedule, momentum=0.9, nesterov=nesterov)
  targets = _masked_norms(params, per_channel, classifier_per_class)[:2] + (classifier_norm,)

  def step(carry, i):
    params, state, ref_state = carry
    start = (i * batch) % x.shape[0]
    xb, yb = jax.lax.dynamic_slice_in_dim(x, start, batch), jax.lax.dynamic_slice_in_dim(y, start, batch)
    loss, grads = jax.value_and_grad(_loss)(params, xb, yb)
    updates, state = tx.update(grads, state, params)
    ref_updates, ref_state = reference.update(grads, ref_state, params)
    new_params = optax.apply_updates(params, updates)
    relative_errors = jnp.stack([
        jnp.max(jnp.abs(norm / target - 1))
        for norm, target in zip(_masked_norms(new_params, per_channel, classifier_per_class), targets)])
    untouched = jnp.all(jnp.stack([
        jnp.array_equal(updates["gain"], ref_updates["gain"]),
        jnp.array_equal(updates["head"]["bias"], ref_updates["head"]["bias"])]))
    return (new_params, state, ref_state), (relative_errors, untouched, loss)

  run = jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p), reference.init(p)), jnp.arange(steps)))
  # For a model this small XLA's optimising passes cost seconds and save milliseconds.
  run = run.lower(params).compile(compiler_options=_FAST_COMPILE)
  (final, _, _), (relative_errors, untouched, losses) = run(params)

  assert np.asarray(relative_errors).max() < 1e-5
  assert bool(np.all(np.asarray(untouched)))
  # A real run: it learns, and the fixed-norm weights really turn (else the invariant is vacuous).
  assert float(losses[-200:].mean()) < 0.5 * float(losses[:20].mean())
  w0, w1 = params["hidden2"]["kernel"], final["hidden2"]["kernel"]
  cosine = jnp.sum(w0 * w1) / (jnp.linalg.norm(w0) * jnp.linalg.norm(w1))
  assert float(cosine) < 0.99
  assert not bool(np.all(np.asarray(final["gain"]) == 1.0))


def _project_reference(w, u, radius, per_channel):
  """The projection written out in float64 numpy."""
  moved = np.asarray(w, np.float64) + np.asarray(u, np.float64)
  axes = tuple(range(moved.ndim - 1)) if per_channel else None
  norm = np.sqrt(np.sum(moved ** 2, axis=axes, keepdims=True))
  return radius * moved / norm - np.asarray(w, np.float64)


@pytest.mark.parametrize("per_channel", [False, True])
def test_update_matches_hand_written_projection_for_each_target_kind(per_channel):
  rng = np.random.default_rng(0)
  params = {"conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 2, 5)), jnp.float32)},
            "dense": {"kernel": jnp.asarray(rng.normal(size=(6, 4)), jnp.float32),
                      "bias": jnp.asarray(rng.normal(size=(4,)), jnp.float32)}}
  updates = jax.tree.map(lambda p: jnp.asarray(0.3 * rng.normal(size=p.shape), jnp.float32), params)
  mask = {"conv": True, "dense": {"kernel": True, "bias": False}}
  channel_targets = np.array([1.0, 2.0, 0.5, 3.0])
  cases = [
      ("init", lambda path, w: np.sqrt(np.sum(np.asarray(w, np.float64) ** 2,
                                              axis=tuple(range(w.ndim - 1)) if per_channel else None))),
      (2.5, lambda path, w: 2.5),
      ({"conv": 0.7, "dense/kernel": channel_targets if per_channel else 4.0, "dense/bias": 9.0},
       lambda path, w: 0.7 if path == "conv" else (channel_targets if per_channel else 4.0)),
  ]
  for target, expected_radius in cases:
    tx = fix_norm(target=target, per_channel=per_channel, mask=mask)
    state = tx.init(params)
    out, _ = jax.jit(tx.update)(updates, state, params)
    for path, w in [("conv", params["conv"]["kernel"]), ("dense", params["dense"]["kernel"])]:
      key = (path, "kernel")
      expected = _project_reference(w, updates[key[0]][key[1]], expected_radius(path, w), per_channel)
      assert_close_scaled(out[key[0]][key[1]], expected, c=100, err_msg=f"target={target!r} path={path}")
    np.testing.assert_array_equal(out["dense"]["bias"], updates["dense"]["bias"])


def test_init_target_is_kept_in_the_state_per_channel():
  w = jnp.array([[3.0, 0.0], [4.0, 2.0]])
  state = fix_norm(per_channel=True).init({"w": w})
  assert isinstance(state, FixNormState)
  np.testing.assert_allclose(state.init_norms["w"], [5.0, 2.0], rtol=1e-6)
  assert fix_norm(target=1.0).init({"w": w}).init_norms == {}


def test_works_inside_nnx_optimizer_with_variable_state():
  class Net(nnx.Module):
    def __init__(self, rngs):
      self.body = nnx.Linear(4, 8, use_bias=False, rngs=rngs)
      self.norm = nnx.LayerNorm(8, use_scale=False, use_bias=False, rngs=rngs)
      self.head = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
      return self.head(jax.nn.relu(self.norm(self.body(x))))

  model = Net(nnx.Rngs(0))
  body_norm = float(jnp.linalg.norm(model.body.kernel[...]))
  tx = fixnorm(0.3, classifier_norm=2.0,
               classifier_mask=wd_optax.masks.include("^head/kernel$"),
               scale_invariant_mask=wd_optax.masks.include("^body/kernel$"),
               classifier_per_class=True)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  x = jax.random.normal(jax.random.key(1), (16, 4))
  y = jnp.arange(16) % 3
  bias_before = np.asarray(model.head.bias[...]).copy()

  @nnx.jit
  def train_step(model, optimizer):
    loss_fn = lambda m: optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()
    grads = nnx.grad(loss_fn)(model)
    optimizer.update(model, grads)

  for _ in range(3):
    train_step(model, optimizer)
  np.testing.assert_allclose(jnp.linalg.norm(model.body.kernel[...]), body_norm, rtol=1e-5)
  np.testing.assert_allclose(jnp.linalg.norm(model.head.kernel[...], axis=0), [2.0] * 3, rtol=1e-5)
  assert not np.array_equal(np.asarray(model.head.bias[...]), bias_before)


@pytest.mark.parametrize("momentum, nesterov", [(0.9, False), (0.8, True), (None, False)])
def test_fixnorm_matches_hand_written_momentum_sgd_with_projection(momentum, nesterov):
  rng = np.random.default_rng(3)
  params = {"a": rng.normal(size=(5, 3)), "c": rng.normal(size=(3, 2)), "b": rng.normal(size=(2,))}
  grads_seq = [{k: rng.normal(size=v.shape) for k, v in params.items()} for _ in range(6)]
  schedule = lambda step: 0.2 / (1.0 + step)
  tx = fixnorm(schedule, classifier_norm=1.5, classifier_mask={"a": False, "c": True, "b": False},
               scale_invariant_mask={"a": True, "c": False, "b": False}, momentum=momentum,
               nesterov=nesterov, per_channel=True, classifier_per_class=False)
  jparams = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), params)
  state = tx.init(jparams)
  update = jax.jit(tx.update)

  ref = {k: v.copy() for k, v in params.items()}
  a_norms = np.linalg.norm(params["a"], axis=0)
  buffers = {k: np.zeros_like(v) for k, v in params.items()}
  for t, grads in enumerate(grads_seq):
    updates, state = update(jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), grads), state, jparams)
    jparams = optax.apply_updates(jparams, updates)
    for k in ref:
      mu = momentum or 0.0
      buffers[k] = mu * buffers[k] + grads[k]
      direction = grads[k] + mu * buffers[k] if nesterov else buffers[k]
      ref[k] = ref[k] - schedule(t) * direction
    ref["a"] = a_norms * ref["a"] / np.linalg.norm(ref["a"], axis=0)
    ref["c"] = 1.5 * ref["c"] / np.linalg.norm(ref["c"])
  for k in ref:
    assert_close_scaled(jparams[k], ref[k], c=200, err_msg=k)   # several float32 steps vs float64


def test_zero_norm_leaf_at_init_is_an_error_naming_the_path():
  params = {"enc": {"kernel": jnp.ones((2, 3))}, "head": {"kernel": jnp.zeros((3, 2))}}
  with pytest.raises(ValueError, match=r"'head/kernel' has zero norm"):
    fix_norm().init(params)
  with pytest.raises(ValueError, match=r"'head/kernel' has zero norm"):
    fix_norm(target=1.0).init(params)
  one_dead_channel = {"w": jnp.array([[1.0, 0.0, 2.0], [1.0, 0.0, 0.0]])}
  with pytest.raises(ValueError, match=r"'w' has zero norm \(output channels \[1\]\)"):
    fix_norm(per_channel=True).init(one_dead_channel)
  # Outside the mask a zero leaf is fine.
  fix_norm(mask={"enc": True, "head": False}).init(params)


@pytest.mark.parametrize("per_channel", [False, True])
def test_step_onto_zero_keeps_the_weights_and_produces_no_nan(per_channel):
  w = jnp.array([[1.0, 2.0], [3.0, -1.0]])
  params = {"w": w}
  tx = fix_norm(target=2.0, per_channel=per_channel)
  state = tx.init(params)
  # w + u = 0 everywhere (whole leaf) or in channel 0 only.
  u = -w if not per_channel else jnp.array([[-1.0, 0.5], [-3.0, 0.5]])
  for update_fn in (tx.update, jax.jit(tx.update)):
    out, _ = update_fn({"w": u}, state, params)
    assert bool(jnp.all(jnp.isfinite(out["w"])))
    if per_channel:
      np.testing.assert_array_equal(out["w"][:, 0], [0.0, 0.0])
      moved = np.array([2.5, -0.5])
      np.testing.assert_allclose(out["w"][:, 1], 2.0 * moved / np.linalg.norm(moved) - np.array(w[:, 1]),
                                 rtol=1e-6)
    else:
      np.testing.assert_array_equal(out["w"], jnp.zeros_like(w))


def test_float_target_is_read_at_update_so_it_can_be_injected():
  params = {"a": jnp.ones((3, 2)), "c": jnp.ones((2, 2))}
  tx = optax.inject_hyperparams(fixnorm, static_args=("classifier_mask", "scale_invariant_mask"))(
      learning_rate=0.1, classifier_norm=2.0, classifier_mask={"a": False, "c": True},
      scale_invariant_mask={"a": True, "c": False})
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  update = jax.jit(tx.update)
  updates, state = update(grads, state, params)
  params = optax.apply_updates(params, updates)
  assert_close_scaled(jnp.linalg.norm(params["c"]), 2.0, c=16)   # a rescale, then a float32 norm
  state.hyperparams["classifier_norm"] = jnp.asarray(5.0)
  updates, state = update(grads, state, params)
  params = optax.apply_updates(params, updates)
  assert_close_scaled(jnp.linalg.norm(params["c"]), 5.0, c=16)
  assert_close_scaled(jnp.linalg.norm(params["a"]), math.sqrt(6.0), c=16)


def test_low_precision_params_keep_their_dtype():
  params = {"w": jnp.ones((8, 4), jnp.bfloat16)}
  tx = optax.chain(optax.sgd(0.1), fix_norm())
  state = tx.init(params)
  updates, new_state = tx.update({"w": jnp.full((8, 4), 0.5, jnp.bfloat16)}, state, params)
  assert updates["w"].dtype == jnp.bfloat16
  assert jax.tree.structure(new_state) == jax.tree.structure(state)
  np.testing.assert_allclose(float(jnp.linalg.norm(optax.apply_updates(params, updates)["w"].astype(jnp.float32))),
                             math.sqrt(32.0), rtol=1e-2)


def test_target_pytree_mismatch_errors_name_the_path():
  params = {"enc": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones((3,))}, "head": jnp.ones((3, 2))}
  mask = {"enc": {"kernel": True, "bias": False}, "head": True}
  with pytest.raises(ValueError, match=r"masked parameter 'head' has no target"):
    fix_norm(target={"enc": 1.0}, mask=mask).init(params)
  with pytest.raises(ValueError, match=r"target entry 'decoder' names no parameter"):
    fix_norm(target={"enc": 1.0, "head": 2.0, "decoder": 1.0}, mask=mask).init(params)
  with pytest.raises(ValueError, match=r"target for parameter 'head' must be positive"):
    fix_norm(target={"enc": 1.0, "head": -2.0}, mask=mask).init(params)
  with pytest.raises(ValueError, match=r"target for parameter 'enc/kernel' has shape \(2,\)"):
    fix_norm(target={"enc": jnp.ones(2), "head": 2.0}, mask=mask, per_channel=True).init(params)
  # An entry for an unmasked parameter is ignored, a prefix covers the leaves under it.
  fix_norm(target={"enc": 1.0, "enc/bias": -5.0, "head": 2.0}, mask=mask).init(params)


def test_bad_arguments_are_named():
  params = {"w": jnp.ones((2, 2)), "b": jnp.ones((2,)), "step": jnp.zeros((), jnp.int32)}
  with pytest.raises(ValueError, match="target must be one of"):
    fix_norm(target="initial")
  with pytest.raises(ValueError, match="target must be positive"):
    fix_norm(target=0.0)
  with pytest.raises(ValueError, match="classifier_norm must be positive"):
    fixnorm(0.1, classifier_norm=float("nan"), classifier_mask=None, scale_invariant_mask=None)
  with pytest.raises(ValueError, match="momentum must be in"):
    fixnorm(0.1, classifier_norm=1.0, classifier_mask=None, scale_invariant_mask=None, momentum=1.0)
  with pytest.raises(ValueError, match="learning_rate"):
    fixnorm(-0.1, classifier_norm=1.0, classifier_mask=None, scale_invariant_mask=None)
  with pytest.raises(ValueError, match=r"'b' has shape \(2,\); per_channel=True"):
    fix_norm(per_channel=True, mask={"w": True, "b": True, "step": False}).init(params)
  with pytest.raises(TypeError, match=r"'step' has dtype int32"):
    fix_norm(mask={"w": False, "b": False, "step": True}).init(params)
  with pytest.raises(ValueError, match="needs the current parameters"):
    fix_norm().update({"w": jnp.ones(2)}, FixNormState({}), None)
  with pytest.raises(ValueError, match=r"'w' is in both scale_invariant_mask and classifier_mask"):
    fixnorm(0.1, classifier_norm=1.0, classifier_mask={"w": True, "b": False, "step": False},
            scale_invariant_mask={"w": True, "b": False, "step": False}).init(params)
  with pytest.raises(ValueError, match="classifier_mask does not match"):
    fixnorm(0.1, classifier_norm=1.0, classifier_mask={"v": True},
            scale_invariant_mask={"w": False, "b": False, "step": False}).init(params)
