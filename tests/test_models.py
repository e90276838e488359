"""Tests for experiments.models: shapes, train/eval behaviour of the norms, exact scale invariance of the layers
before BatchNorm/LayerNorm, the classifier path, and drop-in layer classes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments import models
from wd_optax._tree import named_leaves
from _tol import assert_close_scaled

NUM_CLASSES = 5
BATCH = 8
# Tiny, equal widths: eager initialisers and ops compile once per distinct shape, which dominates CPU time;
# the architecture (depth, strides, shortcuts) is the real one.
CONFIGS = {
    "mlp": (dict(in_features=4, hidden=(4, 4)), (BATCH, 2, 2)),
    "resnet1d": (dict(widths=(4, 4), kernel_size=3), (BATCH, 12, 1)),
    "resnet20": (dict(widths=(4, 4, 4)), (BATCH, 8, 8, 3)),
    "resnet32": (dict(widths=(4, 4, 4)), (BATCH, 8, 8, 3)),
    "vgg": (dict(widths=(4, 4)), (BATCH, 8, 8, 3)),
}


# The models over float images / vectors; the token-sequence transformer has its own tests (test_transformer.py).
VISION = tuple(n for n in models.NAMES if n not in models.SEQUENCE_MODELS)


def test_every_vision_model_has_a_test_config():
  assert set(CONFIGS) == set(VISION)


def _build(name, norm, seed=0, **extra):
  kwargs, shape = CONFIGS[name]
  model = models.build(name, num_classes=NUM_CLASSES, rngs=nnx.Rngs(seed), norm=norm, **kwargs, **extra)
  x = jax.random.normal(jax.random.key(seed + 1), shape)
  return model, x


def _hidden_layers(model):
  """Every Linear/Conv except the classifier, in definition order."""
  return [m for path, m in nnx.iter_modules(model)
          if isinstance(m, (nnx.Linear, nnx.Conv)) and "classifier" not in path]


def _batch_stats(model):
  return [np.asarray(v) for _, v in named_leaves(nnx.state(model, nnx.BatchStat))]


@pytest.mark.parametrize("norm", models.NORMS)
@pytest.mark.parametrize("name", VISION)
def test_forward_modes_scale_invariance_and_classifier(name, norm):
  """One model per case, several checks, so the (CPU-expensive) forward passes are shared."""
  model, x = _build(name, norm)
  stats_before = _batch_stats(model)
  eval_out = model(x, train=False)
  assert eval_out.shape == (BATCH, NUM_CLASSES) and eval_out.dtype == jnp.float32
  assert np.all(np.isfinite(eval_out))
  for before, after in zip(stats_before, _batch_stats(model)):
    np.testing.assert_array_equal(before, after)  # eval never updates running averages
  train_out = model(x, train=True)
  assert train_out.shape == (BATCH, NUM_CLASSES) and np.all(np.isfinite(train_out))
  if norm in ("batch", "batch_noaffine"):
    assert stats_before, "BatchNorm model without running statistics"
    assert any(not np.allclose(b, a) for b, a in zip(stats_before, _batch_stats(model)))
    # Fresh running averages (mean 0, var 1) are not this batch's statistics, so the modes must disagree.
    assert not np.allclose(train_out, eval_out, atol=1e-3)
  else:
    assert not stats_before
    assert_close_scaled(train_out, eval_out, c=16)   # two traces of the same function: round-off of the logits' scale

  # Scale invariance in train mode: every hidden kernel sits before its own norm, so scaling all of them by 3
  # leaves the logits unchanged up to the norms' epsilon inside sqrt(var + eps); without norm they change.
  for layer in _hidden_layers(model):
    layer.kernel[...] = layer.kernel[...] * 3.0
  scaled_out = model(x, train=True)
  if norm is None:
    assert not np.allclose(scaled_out, train_out, rtol=1e-2, atol=1e-3)
  else:
    np.testing.assert_allclose(scaled_out, train_out, rtol=2e-3, atol=2e-4)

  # The classifier is the last layer: with a zero kernel the logits are its bias.
  model.classifier.kernel[...] = jnp.zeros_like(model.classifier.kernel[...])
  model.classifier.bias[...] = jnp.arange(NUM_CLASSES, dtype=jnp.float32)
  np.testing.assert_array_equal(model(x, train=True), np.broadcast_to(np.arange(NUM_CLASSES), (BATCH, NUM_CLASSES)))


@pytest.mark.parametrize("name", VISION)
def test_single_kernel_before_batchnorm_noaffine_is_scale_invariant(name):
  model, x = _build(name, "batch_noaffine")
  reference = model(x, train=True)
  layers = _hidden_layers(model)
  middle = layers[len(layers) // 2]
  middle.kernel[...] = middle.kernel[...] * 3.0
  np.testing.assert_allclose(model(x, train=True), reference, rtol=2e-3, atol=2e-4)
  # The classifier is not followed by a norm: scaling it scales the logits.
  model.classifier.kernel[...] = model.classifier.kernel[...] * 3.0
  assert not np.allclose(model(x, train=True), reference, rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("norm", models.NORMS)
@pytest.mark.parametrize("name", VISION)
def test_bias_only_without_norm_and_affine_only_for_batch(name, norm):
  model, _ = _build(name, norm)
  layers = _hidden_layers(model)
  assert layers
  for layer in layers:
    assert (layer.bias is None) == (norm is not None)
  paths = [p for p, _ in named_leaves(nnx.state(model, nnx.Param))]
  assert "classifier/kernel" in paths and "classifier/bias" in paths
  norm_params = [p for p in paths if p.endswith("layer/scale") or p.endswith("layer/bias")]
  assert bool(norm_params) == (norm in ("batch", "layer"))


class _TaggedLinear(nnx.Linear):
  pass


class _TaggedConv(nnx.Conv):
  pass


@pytest.mark.parametrize("name", VISION)
def test_layer_classes_are_replaceable(name):
  model, x = _build(name, "batch", linear_cls=_TaggedLinear, conv_cls=_TaggedConv)
  layers = [m for _, m in nnx.iter_modules(model) if isinstance(m, (nnx.Linear, nnx.Conv))]
  assert layers and all(isinstance(m, (_TaggedLinear, _TaggedConv)) for m in layers)
  assert isinstance(model.classifier, _TaggedLinear)
  plain, _ = _build(name, "batch")
  plain_params = dict(named_leaves(nnx.state(plain, nnx.Param)))
  for path, value in named_leaves(nnx.state(model, nnx.Param)):
    np.testing.assert_array_equal(value, plain_params.pop(path))  # same layers, same initialisation
  assert not plain_params


def test_jitted_gradient_of_a_scale_invariant_kernel_is_orthogonal_to_it():
  model, x = _build("resnet1d", "batch_noaffine")
  labels = jnp.arange(BATCH) % NUM_CLASSES

  def loss_fn(m):
    logits = m(x, train=True)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))

  reference_loss = loss_fn(model)
  loss, grads = nnx.jit(nnx.value_and_grad(loss_fn))(model)
  np.testing.assert_allclose(loss, reference_loss, rtol=1e-5)
  grads = dict(named_leaves(grads))
  # L(c w) = L(w) for a kernel before a norm, so d/dc L(c w) at c = 1 is <grad, w> = 0 (Zhang et al. 2019).
  for path, kernel in [("stem/kernel", model.stem.kernel), ("blocks/1/conv2/kernel", model.blocks[1].conv2.kernel),
                       ("blocks/1/shortcut_conv/kernel", model.blocks[1].shortcut_conv.kernel)]:
    g = grads[path]
    assert float(jnp.linalg.norm(g)) > 1e-4
    np.testing.assert_allclose(jnp.vdot(g, kernel[...]) / (jnp.linalg.norm(g) * jnp.linalg.norm(kernel[...])),
                               0.0, atol=1e-3, err_msg=path)
  # The classifier is not scale-invariant.
  cls = grads["classifier/kernel"]
  assert abs(float(jnp.vdot(cls, model.classifier.kernel[...]))) > 1e-4


def test_build_rejects_bad_arguments():
  with pytest.raises(ValueError, match="name must be one of"):
    models.build("resnet18", num_classes=10, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="norm must be one of"):
    models.build("vgg", num_classes=10, rngs=nnx.Rngs(0), norm="group")
  with pytest.raises(ValueError, match="in_features"):
    models.build("mlp", num_classes=10, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="depth"):
    models.CifarResNet(10, rngs=nnx.Rngs(0), depth=21)
  model, _ = _build("mlp", None)
  with pytest.raises(ValueError, match="4 input features"):
    model(jnp.zeros((2, 5)), train=False)
