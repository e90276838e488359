"""wd_optax on the nested dicts of Flax Linen and Haiku, built by hand with those libraries' naming.

Neither library is a dependency: the dicts are written out here. Linen's naming is checked against
``flax.linen`` itself (installed with flax); Haiku's is the documented one — a module's name in
snake case (``linear``, ``linear_1``, ``conv2_d``, ``batch_norm``), ``~`` between a module and the
modules it creates (``hk.nets.MLP`` names its layers ``"mlp/~/linear_0"``), one flat dict entry per
module with parameters ``w`` and ``b`` (``scale`` / ``offset`` for normalisation; BatchNorm keeps them
with singleton axes, ``(1, 1, 1, C)`` for NHWC inputs).

Paths: wd_optax joins dict keys with "/", so Linen's ``params["Dense_0"]["kernel"]`` is
``"Dense_0/kernel"`` (``"params/Dense_0/kernel"`` if the whole variables dict is passed) and Haiku's
``params["mlp/~/linear_0"]["w"]`` is ``"mlp/~/linear_0/w"``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import wd_optax
from wd_optax.diagnostics import flatten_by_path
from _tol import assert_close_scaled

LR, WD = 0.1, 0.05


def _normal(key, shape, scale=0.5):
  return scale * jax.random.normal(key, shape)


# --- Linen --------------------------------------------------------------------------------------------


def _linen_params():
  k = jax.random.split(jax.random.key(0), 6)
  return {
      "Conv_0": {"kernel": _normal(k[0], (3, 3, 1, 4)), "bias": _normal(k[1], (4,), 0.1)},
      "LayerNorm_0": {"scale": 1.0 + _normal(k[2], (4,), 0.1), "bias": _normal(k[3], (4,), 0.1)},
      "Dense_0": {"kernel": _normal(k[4], (64, 3)), "bias": jnp.full((3,), 0.1)},
  }


def _linen_apply(params, x):
  """The forward pass of _LinenNet below, written on the dict."""
  h = jax.lax.conv_general_dilated(x, params["Conv_0"]["kernel"], (1, 1), "SAME",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC")) + params["Conv_0"]["bias"]
  mean = h.mean(-1, keepdims=True)
  var = h.var(-1, keepdims=True)
  h = (h - mean) / jnp.sqrt(var + 1e-6) * params["LayerNorm_0"]["scale"] + params["LayerNorm_0"]["bias"]
  h = jax.nn.relu(h).reshape(h.shape[0], -1)
  return h @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"]


def _batch():
  x = jax.random.normal(jax.random.key(1), (5, 4, 4, 1))
  return x, jnp.array([0, 1, 2, 0, 1])


def test_the_hand_built_linen_dict_has_flax_linens_names_shapes_and_forward_pass():
  nn = pytest.importorskip("flax.linen")

  class _LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x):
      h = nn.Conv(4, (3, 3))(x)
      h = nn.relu(nn.LayerNorm()(h)).reshape(x.shape[0], -1)
      return nn.Dense(3)(h)

  x, _ = _batch()
  variables = _LinenNet().init(jax.random.key(0), x)
  assert list(variables) == ["params"]
  shapes = lambda t: jax.tree.map(lambda a: a.shape, t)
  assert shapes(variables["params"]) == shapes(_linen_params())
  params = _linen_params()
  np.testing.assert_allclose(_LinenNet().apply({"params": params}, x), _linen_apply(params, x),
                             rtol=0, atol=1e-5)


def test_masks_select_linen_leaves_by_path():
  params = _linen_params()
  masks = wd_optax.masks
  on = lambda m, p=params: [k for k, v in flatten_by_path(m(p)).items() if v]
  assert on(masks.kernels()) == ["Conv_0/kernel", "Dense_0/kernel"]
  assert on(masks.include("^Dense_0/")) == ["Dense_0/bias", "Dense_0/kernel"]
  assert on(masks.all_of(masks.kernels(), masks.exclude("^Dense_"))) == ["Conv_0/kernel"]
  assert on(masks.exclude("bias$", "scale$")) == ["Conv_0/kernel", "Dense_0/kernel"]
  # The whole variables dict: the collection name is the first component of every path.
  assert on(masks.include("^params/Dense_0/kernel$"), {"params": params}) == ["params/Dense_0/kernel"]


def test_one_linen_sgd_step_equals_the_hand_written_update():
  params = _linen_params()
  x, y = _batch()
  loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(_linen_apply(p, x), y).mean()
  tx = wd_optax.sgd(LR, momentum=0.9, weight_decay=WD, mask=wd_optax.masks.kernels())
  state = tx.init(params)
  grads = jax.grad(loss)(params)
  updates, state = jax.jit(tx.update)(grads, state, params)
  new = optax.apply_updates(params, updates)
  for module, leaves in params.items():
    for name, w in leaves.items():
      g = np.asarray(grads[module][name], np.float64)
      if name == "kernel":
        g = g + WD * np.asarray(w, np.float64)
      assert_close_scaled(new[module][name], np.asarray(w, np.float64) - LR * g, c=4,
                          err_msg=f"{module}/{name}")


# --- Haiku --------------------------------------------------------------------------------------------


def _haiku_params():
  """What ``hk.transform`` returns for conv2_d -> batch_norm -> hk.nets.MLP([8, 3]) (+ a layer_norm)."""
  k = jax.random.split(jax.random.key(2), 8)
  return {
      "conv2_d": {"w": _normal(k[0], (3, 3, 1, 4)), "b": _normal(k[1], (4,), 0.1)},
      "batch_norm": {"scale": 1.0 + _normal(k[2], (1, 1, 1, 4), 0.1), "offset": _normal(k[3], (1, 1, 1, 4), 0.1)},
      "mlp/~/linear_0": {"w": _normal(k[4], (64, 8)), "b": _normal(k[5], (8,), 0.1)},
      "mlp/~/linear_1": {"w": _normal(k[6], (8, 3)), "b": _normal(k[7], (3,), 0.1)},
      "layer_norm": {"scale": jnp.ones((3,)), "offset": jnp.zeros((3,))},
  }


def _haiku_apply(params, x):
  h = jax.lax.conv_general_dilated(x, params["conv2_d"]["w"], (1, 1), "SAME",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC")) + params["conv2_d"]["b"]
  mean = h.mean((0, 1, 2), keepdims=True)
  var = h.var((0, 1, 2), keepdims=True)
  h = (h - mean) / jnp.sqrt(var + 1e-5) * params["batch_norm"]["scale"] + params["batch_norm"]["offset"]
  h = jax.nn.relu(h).reshape(h.shape[0], -1)
  h = jax.nn.relu(h @ params["mlp/~/linear_0"]["w"] + params["mlp/~/linear_0"]["b"])
  h = h @ params["mlp/~/linear_1"]["w"] + params["mlp/~/linear_1"]["b"]
  h = (h - h.mean(-1, keepdims=True)) / jnp.sqrt(h.var(-1, keepdims=True) + 1e-5)
  return h * params["layer_norm"]["scale"] + params["layer_norm"]["offset"]


HAIKU_KERNELS = ["conv2_d/w", "mlp/~/linear_0/w", "mlp/~/linear_1/w"]


def test_haiku_paths_and_kernels():
  params = _haiku_params()
  paths = [p for p, _ in wd_optax._tree.named_leaves(params)]
  assert paths == ["batch_norm/offset", "batch_norm/scale", "conv2_d/b", "conv2_d/w", "layer_norm/offset",
                   "layer_norm/scale", "mlp/~/linear_0/b", "mlp/~/linear_0/w", "mlp/~/linear_1/b",
                   "mlp/~/linear_1/w"]
  on = lambda m: [k for k, v in flatten_by_path(m(params)).items() if v]
  # batch_norm's (1, 1, 1, 4) scale and offset have ndim 4 but are left out by name.
  assert on(wd_optax.masks.kernels()) == HAIKU_KERNELS
  assert on(wd_optax.masks.include("^mlp/~/linear_1/")) == ["mlp/~/linear_1/b", "mlp/~/linear_1/w"]
  assert on(wd_optax.masks.include(r"/w$")) == HAIKU_KERNELS
  assert on(wd_optax.masks.all_of(wd_optax.masks.kernels(), wd_optax.masks.exclude("^mlp/~/linear_1/"))) == [
      "conv2_d/w", "mlp/~/linear_0/w"]
  # A mask dict keyed by Haiku's module names covers the module's w and b (a path prefix).
  tx = wd_optax.add_l2(1.0, mask={"mlp/~/linear_0": True, "mlp/~/linear_1": False, "conv2_d": False,
                                  "batch_norm": False, "layer_norm": False})
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  assert [p for p, u in wd_optax._tree.named_leaves(updates) if np.any(np.asarray(u) != 0)] == [
      "mlp/~/linear_0/b", "mlp/~/linear_0/w"]


def test_kernels_still_selects_a_2d_leaf_named_b_or_scale():
  """The name exception is only for vectors stored with singleton axes; a real matrix named ``b`` is a
  kernel."""
  params = {"bilinear": {"b": jnp.ones((3, 4)), "scale": jnp.ones((2, 5))}, "gain": {"scale": jnp.ones((1, 4))}}
  assert flatten_by_path(wd_optax.masks.kernels()(params)) == {
      "bilinear/b": True, "bilinear/scale": True, "gain/scale": False}


def test_one_haiku_adamw_step_equals_the_hand_written_update():
  params = _haiku_params()
  x, y = _batch()
  loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(_haiku_apply(p, x), y).mean()
  tx = wd_optax.adam(LR, weight_decay=WD, mask=wd_optax.masks.kernels())  # decoupled, coupling "lr"
  state = tx.init(params)
  grads = jax.grad(loss)(params)
  updates, _ = jax.jit(tx.update)(grads, state, params)
  b1, b2, eps = 0.9, 0.999, 1e-8
  for module, leaves in params.items():
    for name, w in leaves.items():
      w64 = np.asarray(w, np.float64)
      g = np.asarray(grads[module][name], np.float64)
      m_hat = (1 - b1) * g / (1 - b1)
      v_hat = (1 - b2) * g ** 2 / (1 - b2)
      step = m_hat / (np.sqrt(v_hat) + eps)
      decay = WD * w64 if name == "w" else 0.0
      # Adam's first step is ±LR per element, g/(|g| + eps): the scale of the update is LR. c=64: the
      # conv bias before the batch norm has a gradient of round-off size (~1e-9, near eps), where
      # g/(|g| + eps) is computed in float32 with a few eps of relative error of its own.
      assert_close_scaled(updates[module][name], -LR * (step + decay), c=64, scale=LR,
                          err_msg=f"{module}/{name}")
