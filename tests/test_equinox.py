"""wd_optax on Equinox models: ``eqx.filter(model, eqx.is_array)`` trees, ``eqx.apply_updates``.

Equinox modules are dataclass pytrees: their key paths are attribute names (``GetAttrKey``) and list or
tuple indices, so wd_optax names ``model.mlp.layers[0].weight`` ``"mlp/layers/0/weight"``. Non-array
fields (the MLP's activation function) are ``None`` in the filtered tree, an empty subtree to JAX, and
must come back as ``None`` from every transform. Equinox stores weights output-channel first
(``Linear.weight`` is ``(out, in)``, ``Conv2d.weight`` ``(out, in, H, W)``, ``Conv2d.bias``
``(out, 1, 1)``), unlike flax (``(in, out)``).

References are written independently of wd_optax: masks are built with ``eqx.tree_at`` on the module's
attributes (not from path strings), updates with optax's own transforms or by hand in numpy.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import wd_optax
from wd_optax import diagnostics
from wd_optax.diagnostics import flatten_by_path
from _tol import assert_close_scaled

eqx = pytest.importorskip("equinox")

LR, WD = 0.1, 0.05


class Net(eqx.Module):
  conv: eqx.nn.Conv2d
  norm: eqx.nn.LayerNorm
  mlp: eqx.nn.MLP

  def __init__(self, key):
    k1, k2 = jax.random.split(key)
    self.conv = eqx.nn.Conv2d(1, 4, 3, key=k1)            # weight (4, 1, 3, 3), bias (4, 1, 1)
    self.norm = eqx.nn.LayerNorm(64)                      # weight (64,), bias (64,)
    self.mlp = eqx.nn.MLP(64, 3, 8, 1, key=k2)            # layers[0] (8, 64), layers[1] (3, 8)

  def __call__(self, x):
    h = jax.nn.relu(self.conv(x)).reshape(-1)
    return self.mlp(self.norm(h))


@functools.lru_cache(maxsize=None)
def _model():
  """The same model every call (Equinox modules are immutable, so sharing it is safe)."""
  model = Net(jax.random.key(0))
  # Non-zero biases and norm parameters, so that a wrong mask changes the numbers.
  leaves, treedef = jax.tree.flatten(model, is_leaf=lambda x: x is None)
  key = iter(jax.random.split(jax.random.key(1), len(leaves)))
  leaves = [x + 0.1 * jax.random.normal(next(key), x.shape) if eqx.is_inexact_array(x) else x
            for x in leaves]
  return jax.tree.unflatten(treedef, leaves)


def _batch():
  x = jax.random.normal(jax.random.key(2), (5, 1, 6, 6))
  return x, jnp.array([0, 1, 2, 0, 1])


def _loss(model, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(jax.vmap(model)(x), y).mean()


def _kernels_by_hand(params):
  """The weights of conv and both Linears True, everything else False: built on attributes, not paths."""
  mask = jax.tree.map(lambda _: False, params)
  return eqx.tree_at(lambda m: (m.conv.weight, m.mlp.layers[0].weight, m.mlp.layers[1].weight),
                     mask, (True, True, True))


KERNEL_PATHS = ["conv/weight", "mlp/layers/0/weight", "mlp/layers/1/weight"]
ALL_PATHS = ["conv/weight", "conv/bias", "norm/weight", "norm/bias", "mlp/layers/0/weight",
             "mlp/layers/0/bias", "mlp/layers/1/weight", "mlp/layers/1/bias"]


def _selected(mask_fn, params):
  return [p for p, on in flatten_by_path(mask_fn(params)).items() if on]


# --- paths and masks ---------------------------------------------------------------------------------


def test_paths_of_a_filtered_equinox_model_are_attribute_names_joined_by_slash():
  params = eqx.filter(_model(), eqx.is_array)
  assert params.mlp.activation is None and params.mlp.final_activation is None
  named = wd_optax._tree.named_leaves(params)
  assert [(p, tuple(x.shape)) for p, x in named] == [
      ("conv/weight", (4, 1, 3, 3)), ("conv/bias", (4, 1, 1)), ("norm/weight", (64,)),
      ("norm/bias", (64,)), ("mlp/layers/0/weight", (8, 64)), ("mlp/layers/0/bias", (8,)),
      ("mlp/layers/1/weight", (3, 8)), ("mlp/layers/1/bias", (3,))]


def test_kernels_selects_equinox_weights_and_not_the_conv_bias_of_shape_out_1_1():
  params = eqx.filter(_model(), eqx.is_array)
  # Before masks.kernels() knew bias names, conv/bias (4, 1, 1) was selected: ndim 3 >= 2.
  assert _selected(wd_optax.masks.kernels(), params) == KERNEL_PATHS
  assert jax.tree.structure(wd_optax.masks.kernels()(params)) == jax.tree.structure(
      _kernels_by_hand(params))


def test_kernels_on_other_equinox_layers():
  keys = jax.random.split(jax.random.key(3), 4)
  layers = {
      "conv1d": eqx.nn.Conv1d(2, 3, 3, key=keys[0]),              # weight (3, 2, 3), bias (3, 1)
      "deconv": eqx.nn.ConvTranspose2d(2, 3, 3, key=keys[1]),     # weight (3, 2, 3, 3), bias (3, 1, 1)
      "embed": eqx.nn.Embedding(10, 4, key=keys[2]),              # weight (10, 4)
      "head": eqx.nn.Linear(4, 1, key=keys[3]),                   # weight (1, 4): a 1-output kernel
      "bn": eqx.nn.GroupNorm(1, 3),                               # weight (3,), bias (3,)
  }
  params = eqx.filter(layers, eqx.is_array)
  shapes = {p: tuple(x.shape) for p, x in wd_optax._tree.named_leaves(params)}
  assert shapes["conv1d/bias"] == (3, 1) and shapes["deconv/bias"] == (3, 1, 1)
  assert shapes["head/weight"] == (1, 4)
  assert sorted(_selected(wd_optax.masks.kernels(), params)) == [
      "conv1d/weight", "deconv/weight", "embed/weight", "head/weight"]


def test_include_exclude_and_combinators_select_by_equinox_path():
  params = eqx.filter(_model(), eqx.is_array)
  masks = wd_optax.masks
  assert _selected(masks.include("^mlp/layers/1/"), params) == ["mlp/layers/1/weight", "mlp/layers/1/bias"]
  assert _selected(masks.exclude("bias$", "^norm/"), params) == KERNEL_PATHS
  assert _selected(masks.all_of(masks.kernels(), masks.exclude("^mlp/layers/1/")), params) == [
      "conv/weight", "mlp/layers/0/weight"]
  assert _selected(masks.any_of(masks.include("^conv/bias$"), masks.include("^norm/weight$")), params) == [
      "conv/bias", "norm/weight"]
  assert _selected(masks.negate(masks.kernels()), params) == [
      p for p in ALL_PATHS if p not in KERNEL_PATHS]
  # A nested-dict mask matches an Equinox tree by path (prefixes cover whole modules).
  dict_mask = {"conv": True, "norm": False, "mlp": {"layers": {"0": True, "1": False}}}
  tx = wd_optax.add_l2(1.0, mask=dict_mask)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  decayed = [p for p, u in wd_optax._tree.named_leaves(updates) if np.any(np.asarray(u) != 0)]
  assert decayed == ["conv/weight", "conv/bias", "mlp/layers/0/weight", "mlp/layers/0/bias"]
  with pytest.raises(ValueError, match="'mlp/layers/0/weight' has no entry"):
    wd_optax.add_l2(WD, mask={"conv": True, "norm": False}).init(params)


def test_scale_invariant_finds_the_bias_free_linear_before_a_layer_norm():
  keys = jax.random.split(jax.random.key(4), 2)

  class Invariant(eqx.Module):
    hidden: eqx.nn.Linear
    norm: eqx.nn.LayerNorm
    head: eqx.nn.Linear

    def __call__(self, x):
      return self.head(self.norm(self.hidden(x)))

  model = Invariant(eqx.nn.Linear(3, 6, use_bias=False, key=keys[0]),
                    eqx.nn.LayerNorm(6, use_weight=False, use_bias=False),
                    eqx.nn.Linear(6, 2, key=keys[1]))
  params, static = eqx.partition(model, eqx.is_array)
  apply_fn = lambda p, x: jax.vmap(eqx.combine(p, static))(x)
  x = jax.random.normal(jax.random.key(5), (7, 3))
  mask = wd_optax.masks.scale_invariant(apply_fn, params, x)
  assert flatten_by_path(mask(params)) == {
      "hidden/weight": True, "head/weight": False, "head/bias": False}


# --- transforms on the filtered tree -------------------------------------------------------------------


def _transforms():
  kernels = wd_optax.masks.kernels()
  txs = {
      "add_l2": wd_optax.add_l2(WD, mask=kernels),
      "scale_by_adam_l2": wd_optax.scale_by_adam_l2(WD, mask=kernels),
      "sgd_l2": wd_optax.sgd(LR, weight_decay=WD, mask=kernels),
      "sgd_decoupled": wd_optax.sgd(LR, weight_decay=WD, decay="decoupled", mask=kernels),
      "adam_decoupled": wd_optax.adam(LR, weight_decay=WD, mask=kernels),
      "adam_l2": wd_optax.adam(LR, weight_decay=WD, decay="l2", mask=kernels),
      "adam_l2_outside_momentum": wd_optax.adam(LR, weight_decay=WD, decay="l2_outside_momentum",
                                                mask=kernels),
      "fix_norm": optax.chain(optax.sgd(LR), wd_optax.fix_norm(mask=kernels)),
      "fix_norm_per_channel": optax.chain(
          optax.sgd(LR), wd_optax.fix_norm(per_channel=True, output_channel="first", mask=kernels)),
      "fixnorm": wd_optax.fixnorm(LR, classifier_norm=2.0, classifier_per_class=True,
                                  output_channel="first",
                                  classifier_mask=wd_optax.masks.include("^mlp/layers/1/weight$"),
                                  scale_invariant_mask=wd_optax.masks.include("^conv/weight$")),
      "monitor": optax.chain(optax.sgd(LR), wd_optax.monitor(kernels)),
      "monitor_packed": optax.chain(optax.sgd(LR), wd_optax.monitor(kernels, packed=True)),
  }
  for coupling in wd_optax.COUPLINGS:
    txs[f"decoupled_decay_{coupling}"] = optax.chain(
        optax.sgd(LR), wd_optax.decoupled_decay(WD, coupling=coupling, learning_rate=LR,
                                                peak_learning_rate=2 * LR, mask=kernels))
  return txs


TRANSFORMS = sorted(_transforms())


@pytest.mark.parametrize("name", TRANSFORMS)
def test_every_transform_keeps_the_none_leaves_and_steps_through_eqx_apply_updates(name):
  tx = _transforms()[name]
  model = _model()
  params = eqx.filter(model, eqx.is_array)
  grads = eqx.filter_grad(_loss)(model, *_batch())
  state = tx.init(params)
  updates, state = jax.jit(tx.update)(grads, state, params)
  # The activation functions are None in params and must be None in the updates (an empty subtree):
  # the same treedef, None positions included.
  assert jax.tree.structure(updates, is_leaf=lambda x: x is None) == jax.tree.structure(
      params, is_leaf=lambda x: x is None)
  assert updates.mlp.activation is None
  new_model = eqx.apply_updates(model, updates)
  assert new_model.mlp.activation is model.mlp.activation   # the static parts are untouched
  for (path, new), (_, old), (_, u) in zip(*(wd_optax._tree.named_leaves(eqx.filter(t, eqx.is_array))
                                            for t in (new_model, model, updates))):
    assert np.all(np.isfinite(np.asarray(u))), path
    assert_close_scaled(new, old + u, c=2, err_msg=path)
  # A second step from the state the first one returned.
  updates2, _ = jax.jit(tx.update)(grads, state, eqx.filter(new_model, eqx.is_array))
  assert jax.tree.structure(updates2) == jax.tree.structure(params)


@pytest.mark.parametrize("name", TRANSFORMS)
def test_every_transform_on_a_tree_with_a_frozen_submodule(name):
  """Freezing a layer the Equinox way (its arrays replaced by None in the trainable tree) leaves a whole
  None subtree: no path, no mask entry, and None again in the updates."""
  model = _model()
  params = eqx.tree_at(lambda m: m.norm, eqx.filter(model, eqx.is_array), replace=None)
  assert [p for p, _ in wd_optax._tree.named_leaves(params)] == [p for p in ALL_PATHS if not p.startswith("norm/")]
  grads = jax.tree.map(lambda w: 0.1 * jnp.ones_like(w), params)
  tx = _transforms()[name]
  updates, _ = tx.update(grads, tx.init(params), params)
  assert updates.norm is None and updates.mlp.activation is None
  assert jax.tree.structure(updates) == jax.tree.structure(params)


def test_add_l2_equals_optax_add_decayed_weights_with_the_mask_by_hand():
  model = _model()
  params = eqx.filter(model, eqx.is_array)
  grads = eqx.filter_grad(_loss)(model, *_batch())
  ours = wd_optax.add_l2(WD, mask=wd_optax.masks.kernels())
  theirs = optax.add_decayed_weights(WD, mask=_kernels_by_hand(params))
  u_ours, _ = ours.update(grads, ours.init(params), params)
  u_theirs, _ = theirs.update(grads, theirs.init(params), params)
  assert_close_scaled(u_ours, u_theirs, c=1)
  # and the unmasked leaves really are the plain gradients
  np.testing.assert_array_equal(u_ours.conv.bias, grads.conv.bias)
  # The mask may itself be an Equinox-shaped tree of bools (what eqx.tree_at builds).
  by_tree = wd_optax.add_l2(WD, mask=_kernels_by_hand(params))
  u_tree, _ = by_tree.update(grads, by_tree.init(params), params)
  assert_close_scaled(u_tree, u_theirs, c=1)


def test_masks_and_targets_shaped_like_the_module_are_read_not_called():
  """An Equinox module is callable (its forward pass), so a mask or target tree built from the model
  (eqx.tree_at, jax.tree.map) must be read as a pytree, as optax.masked does: a mask is a function only
  when every leaf is callable. Before, wd_optax called it on the params and the forward pass failed."""
  model = _model()
  params = eqx.filter(model, eqx.is_array)
  hand = _kernels_by_hand(params)
  assert callable(hand)
  masks = wd_optax.masks
  assert _selected(masks.all_of(hand, masks.exclude("^conv/")), params) == KERNEL_PATHS[1:]
  assert _selected(masks.negate(hand), params) == [p for p in ALL_PATHS if p not in KERNEL_PATHS]
  tx = optax.chain(optax.sgd(1.0), wd_optax.monitor(hand))
  _, state = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
  assert [p for p, _ in wd_optax._tree.named_leaves(optax.tree_utils.tree_get(state, "param_norm"))] == KERNEL_PATHS
  targets = jax.tree.map(lambda w: 2.0, params)           # a float per leaf, shaped like the model
  tx = optax.chain(optax.sgd(0.1), wd_optax.fix_norm(target=targets, mask=hand))
  updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
  new = eqx.apply_updates(model, updates)
  assert_close_scaled(jnp.linalg.norm(new.mlp.layers[0].weight), 2.0, c=16)


@pytest.mark.parametrize("decay", ["decoupled", "l2"])
def test_adam_equals_optax_on_the_equinox_tree(decay):
  model = _model()
  params = eqx.filter(model, eqx.is_array)
  hand = _kernels_by_hand(params)
  ours = wd_optax.adam(LR, weight_decay=WD, decay=decay, mask=wd_optax.masks.kernels())
  theirs = (optax.adamw(LR, weight_decay=WD, mask=hand) if decay == "decoupled" else
            optax.chain(optax.add_decayed_weights(WD, mask=hand), optax.adam(LR)))
  s_ours, s_theirs = ours.init(params), theirs.init(params)
  m_ours = m_theirs = model
  for _ in range(3):
    g = eqx.filter_grad(_loss)(m_ours, *_batch())
    u_ours, s_ours = ours.update(g, s_ours, eqx.filter(m_ours, eqx.is_array))
    u_theirs, s_theirs = theirs.update(g, s_theirs, eqx.filter(m_ours, eqx.is_array))
    assert_close_scaled(u_ours, u_theirs, c=8)
    m_ours = eqx.apply_updates(m_ours, u_ours)


def test_one_sgd_step_with_filter_value_and_grad_equals_the_hand_written_update():
  model = _model()
  x, y = _batch()
  tx = wd_optax.sgd(LR, momentum=0.9, weight_decay=WD, mask=wd_optax.masks.kernels())
  state = tx.init(eqx.filter(model, eqx.is_array))

  @eqx.filter_jit
  def step(model, state, x, y):
    loss, grads = eqx.filter_value_and_grad(_loss)(model, x, y)
    updates, state = tx.update(grads, state, eqx.filter(model, eqx.is_array))
    return eqx.apply_updates(model, updates), state, loss

  # Hand-written: two steps of heavy-ball SGD with L2 on the kernels, b = 0.9 b + g + λw.
  decayed = {id(model.conv.weight), id(model.mlp.layers[0].weight), id(model.mlp.layers[1].weight)}
  get = {
      "conv.weight": lambda m: m.conv.weight, "conv.bias": lambda m: m.conv.bias,
      "norm.weight": lambda m: m.norm.weight, "norm.bias": lambda m: m.norm.bias,
      "l0.weight": lambda m: m.mlp.layers[0].weight, "l0.bias": lambda m: m.mlp.layers[0].bias,
      "l1.weight": lambda m: m.mlp.layers[1].weight, "l1.bias": lambda m: m.mlp.layers[1].bias,
  }
  is_kernel = {name: id(f(model)) in decayed for name, f in get.items()}
  assert sum(is_kernel.values()) == 3
  w = {name: np.asarray(f(model), np.float64) for name, f in get.items()}
  buffer = {name: 0.0 for name in get}
  current = model
  for _ in range(2):
    grads = eqx.filter_grad(_loss)(current, x, y)
    for name, f in get.items():
      g = np.asarray(f(grads), np.float64) + (WD * w[name] if is_kernel[name] else 0.0)
      buffer[name] = 0.9 * buffer[name] + g
      w[name] = w[name] - LR * buffer[name]
    current, state, loss = step(current, state, x, y)
    assert np.isfinite(float(loss))
    for name, f in get.items():
      assert_close_scaled(f(current), w[name], c=8, err_msg=name)


def test_decoupled_decay_every_coupling_by_hand():
  model = _model()
  params = eqx.filter(model, eqx.is_array)
  grads = eqx.filter_grad(_loss)(model, *_batch())
  peak = 2 * LR
  factor = {"lr": LR, "schedule": LR / peak, "independent": 1.0, "corrected": LR ** 2 / peak}
  assert set(factor) == set(wd_optax.COUPLINGS)
  hand = _kernels_by_hand(params)
  for coupling, c in factor.items():
    tx = optax.chain(optax.sgd(LR), wd_optax.decoupled_decay(
        WD, coupling=coupling, learning_rate=LR, peak_learning_rate=peak, mask=wd_optax.masks.kernels()))
    updates, _ = tx.update(grads, tx.init(params), params)
    expected = jax.tree.map(lambda g, w, on: -LR * np.asarray(g, np.float64) - (c * WD * np.asarray(w, np.float64)
                                                                              if on else 0.0),
                            grads, params, hand)
    assert_close_scaled(updates, expected, c=4, err_msg=coupling)


# --- output channel first: fix_norm and the diagnostics ------------------------------------------------


def _row_norms(w):
  w = np.asarray(w, np.float64)
  return np.linalg.norm(w.reshape(w.shape[0], -1), axis=1)


def test_fix_norm_per_channel_with_output_channel_first_keeps_each_equinox_row_norm():
  model = _model()
  params = eqx.filter(model, eqx.is_array)
  grads = eqx.filter_grad(_loss)(model, *_batch())
  tx = optax.chain(optax.sgd(1.0), wd_optax.fix_norm(per_channel=True, output_channel="first",
                                                     mask=wd_optax.masks.kernels()))
  updates, _ = tx.update(grads, tx.init(params), params)
  new = eqx.apply_updates(model, updates)
  for get in (lambda m: m.conv.weight, lambda m: m.mlp.layers[0].weight, lambda m: m.mlp.layers[1].weight):
    assert_close_scaled(_row_norms(get(new)), _row_norms(get(model)), c=8)
    assert not np.allclose(np.asarray(get(new)), np.asarray(get(model)))  # it did move
  # unmasked leaves follow plain SGD
  assert_close_scaled(new.conv.bias, model.conv.bias - grads.conv.bias, c=2)


def test_fix_norm_per_channel_default_fixes_the_last_axis_which_is_equinox_input():
  """Documented behaviour: with the default output_channel="last" an Equinox (out, in) weight gets one
  norm per input column, not per output row."""
  model = _model()
  params = eqx.filter(model, eqx.is_array)
  grads = eqx.filter_grad(_loss)(model, *_batch())
  tx = optax.chain(optax.sgd(1.0), wd_optax.fix_norm(per_channel=True,
                                                     mask=wd_optax.masks.include("^mlp/layers/1/weight$")))
  state = tx.init(params)
  assert state[1].init_norms["mlp/layers/1/weight"].shape == (8,)   # in_features, not out (3)
  updates, _ = tx.update(grads, state, params)
  old, new = np.asarray(model.mlp.layers[1].weight), np.asarray(eqx.apply_updates(model, updates).mlp.layers[1].weight)
  assert_close_scaled(np.linalg.norm(new, axis=0), np.linalg.norm(old, axis=0), c=8)
  assert not np.allclose(np.linalg.norm(new, axis=1), np.linalg.norm(old, axis=1), rtol=1e-3)


def test_fixnorm_classifier_per_class_with_output_channel_first_fixes_each_class_row():
  model = _model()
  params = eqx.filter(model, eqx.is_array)
  tx = wd_optax.fixnorm(LR, classifier_norm=2.0, classifier_per_class=True, output_channel="first",
                        classifier_mask=wd_optax.masks.include("^mlp/layers/1/weight$"),
                        scale_invariant_mask=wd_optax.masks.include("^conv/weight$"))
  state = tx.init(params)
  current = model
  for _ in range(2):
    grads = eqx.filter_grad(_loss)(current, *_batch())
    updates, state = tx.update(grads, state, eqx.filter(current, eqx.is_array))
    current = eqx.apply_updates(current, updates)
  assert_close_scaled(_row_norms(current.mlp.layers[1].weight), np.full(3, 2.0), c=8)
  assert_close_scaled(np.linalg.norm(np.asarray(current.conv.weight)),
                      np.linalg.norm(np.asarray(model.conv.weight)), c=8)


def test_fix_norm_per_row_targets_with_output_channel_first():
  model = _model()
  params = eqx.filter(model, eqx.is_array)
  rows = jnp.arange(1.0, 9.0)                                   # one target per output row of (8, 64)
  mask = wd_optax.masks.include("^mlp/layers/0/weight$")
  tx = optax.chain(optax.sgd(0.1), wd_optax.fix_norm(
      target={"mlp": {"layers": {"0": {"weight": rows}}}}, per_channel=True, output_channel="first",
      mask=mask))
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  assert_close_scaled(_row_norms(eqx.apply_updates(model, updates).mlp.layers[0].weight), rows, c=16)
  wrong = wd_optax.fix_norm(target={"mlp/layers/0/weight": jnp.ones(64)}, per_channel=True,
                            output_channel="first", mask=mask)
  with pytest.raises(ValueError, match=r"'mlp/layers/0/weight' has shape \(64,\); expected a scalar or an "
                                       r"array of shape \(8,\), one per output channel"):
    wrong.init(params)


def test_output_channel_must_be_last_or_first():
  with pytest.raises(ValueError, match=r"output_channel must be one of \('last', 'first'\), got 0"):
    wd_optax.fix_norm(per_channel=True, output_channel=0)
  with pytest.raises(ValueError, match="output_channel must be one of"):
    diagnostics.weight_norms({"w": jnp.ones((2, 2))}, per_output_channel=True, output_channel="out")


def test_output_channel_is_static_under_inject_hyperparams_and_jit():
  params = eqx.filter(_model(), eqx.is_array)
  tx = optax.inject_hyperparams(wd_optax.fix_norm, static_args=("mask",))(
      target=1.5, per_channel=True, output_channel="first", mask=wd_optax.masks.kernels())
  state = tx.init(params)
  assert "output_channel" not in state.hyperparams
  updates, _ = jax.jit(tx.update)(jax.tree.map(jnp.ones_like, params), state, params)
  new = optax.apply_updates(params, updates)
  assert_close_scaled(_row_norms(new.mlp.layers[0].weight), np.full(8, 1.5), c=8)


def test_diagnostics_on_the_equinox_tree_against_numpy():
  model = _model()
  params = eqx.filter(model, eqx.is_array)
  kernels = wd_optax.masks.kernels()
  conv = np.asarray(model.conv.weight, np.float64)

  norms = diagnostics.weight_norms(params, kernels)
  assert norms.conv.bias is None and norms.mlp.activation is None
  assert_close_scaled(norms.conv.weight, np.linalg.norm(conv), c=4)
  per_out = diagnostics.weight_norms(params, kernels, per_output_channel=True, output_channel="first")
  assert_close_scaled(per_out.conv.weight, _row_norms(conv), c=4)
  assert per_out.mlp.layers[1].weight.shape == (3,)
  # The default reduces to the last axis: for Equinox that is one value per kernel column (3 here).
  assert diagnostics.weight_norms(params, kernels, per_output_channel=True).conv.weight.shape == (3,)

  eff = diagnostics.effective_learning_rate(LR, params, mask=kernels, per_output_channel=True,
                                            output_channel="first")
  assert_close_scaled(eff.mlp.layers[0].weight, LR / _row_norms(model.mlp.layers[0].weight) ** 2, c=8)

  grads = eqx.filter_grad(_loss)(model, *_batch())
  new = eqx.filter(eqx.apply_updates(model, jax.tree.map(lambda g: -g, grads)), eqx.is_array)
  angles = diagnostics.angular_update(params, new, kernels, per_output_channel=True, output_channel="first")
  a = np.asarray(params.mlp.layers[0].weight, np.float64)
  b = np.asarray(new.mlp.layers[0].weight, np.float64)
  cos = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
  np.testing.assert_allclose(angles.mlp.layers[0].weight, np.arccos(cos), rtol=1e-4, atol=1e-6)

  # σ_max of the patch-to-channel matrix: the conv weight as (out, in·H·W).
  sigma_conv = np.linalg.svd(conv.reshape(4, -1), compute_uv=False)[0]
  sigmas = [np.linalg.svd(np.asarray(w, np.float64), compute_uv=False)[0]
            for w in (model.mlp.layers[0].weight, model.mlp.layers[1].weight)]
  product = diagnostics.spectral_norm_product(params, kernels, output_channel="first", num_iterations=500)
  np.testing.assert_allclose(float(product), sigma_conv * sigmas[0] * sigmas[1], rtol=1e-4)
  assert_close_scaled(diagnostics.sum_of_squared_norms(params, kernels),
                      sum(float(np.sum(np.asarray(w, np.float64) ** 2)) for w in
                          (model.conv.weight, model.mlp.layers[0].weight, model.mlp.layers[1].weight)), c=8)


def test_per_channel_sharpness_is_invariant_to_rescaling_single_equinox_rows():
  """A loss that normalises each output row is invariant to per-row scaling; with output_channel="first"
  the per-channel sharpness is too (the perturbation follows each row's norm)."""
  layer = eqx.nn.Linear(4, 3, use_bias=False, key=jax.random.key(6))
  params = eqx.filter(layer, eqx.is_array)
  x = jax.random.normal(jax.random.key(7), (6, 4))

  def loss(p, x):
    w = p.weight / jnp.linalg.norm(p.weight, axis=1, keepdims=True)
    return jnp.mean((x @ w.T - 1.0) ** 2)

  scaled = eqx.tree_at(lambda p: p.weight, params, params.weight * jnp.array([[0.5], [3.0], [1.0]]))
  key = jax.random.key(8)
  a = diagnostics.scale_invariant_sharpness(loss, params, x, key, per_output_channel=True,
                                            output_channel="first")
  b = diagnostics.scale_invariant_sharpness(loss, scaled, x, key, per_output_channel=True,
                                            output_channel="first")
  assert float(a.value) > 0
  np.testing.assert_allclose(float(b.value), float(a.value), rtol=1e-3)
  # The default (last axis: Equinox's input features) does not follow the rows, so it changes.
  c = diagnostics.scale_invariant_sharpness(loss, scaled, x, key, per_output_channel=True)
  assert abs(float(c.value) - float(a.value)) > 1e-2 * abs(float(a.value))


def test_monitor_records_norms_and_angles_of_the_equinox_step():
  model = _model()
  params = eqx.filter(model, eqx.is_array)
  grads = eqx.filter_grad(_loss)(model, *_batch())
  tx = optax.chain(optax.sgd(LR), wd_optax.monitor(wd_optax.masks.kernels()))
  updates, state = tx.update(grads, tx.init(params), params)
  new = eqx.apply_updates(model, updates)
  angle = optax.tree_utils.tree_get(state, "angular_update")
  norm = optax.tree_utils.tree_get(state, "param_norm")
  assert angle.conv.bias is None and norm.norm.weight is None
  a, b = np.asarray(model.conv.weight, np.float64).ravel(), np.asarray(new.conv.weight, np.float64).ravel()
  np.testing.assert_allclose(float(angle.conv.weight),
                             math.acos(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))), rtol=1e-3)
  assert_close_scaled(norm.mlp.layers[1].weight, np.linalg.norm(np.asarray(new.mlp.layers[1].weight)), c=4)
