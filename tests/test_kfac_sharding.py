"""K-FAC with a batch sharded over 8 (simulated) devices equals the single-device computation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from wd_optax import kfac
from _tol import assert_close_scaled


class Net(nnx.Module):
  def __init__(self, rngs):
    self.conv = kfac.Conv(2, 4, kernel_size=(3, 3), rngs=rngs)
    self.head = kfac.Linear(4 * 4 * 4, 3, rngs=rngs)

  def __call__(self, x):
    return self.head(jax.nn.relu(self.conv(x)).reshape(x.shape[0], -1))


def ce_loss(model, batch):
  logits = model(batch["x"])
  return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean(), logits


def test_sharded_batch_gives_the_global_batch_statistics_and_update():
  """True-Fisher mode: the sampled targets, too, do not depend on how the batch is split."""
  mode = "fisher"
  devices = jax.devices()
  if len(devices) < 8:
    pytest.skip("needs 8 devices: XLA_FLAGS=--xla_force_host_platform_device_count=8 (tests/conftest.py)")
  rng = np.random.default_rng(0)
  batch = {"x": jnp.asarray(rng.normal(size=(32, 4, 4, 2)), jnp.float32),
           "y": jnp.asarray(rng.integers(0, 3, size=32), jnp.int32)}
  key = jax.random.key(3)

  def run(batch):
    model = Net(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, kfac.kfac(0.1, damping=1e-2, weight_decay=1e-3), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, batch):
      (loss, _), grads, curvature = kfac.value_grad_and_curvature(ce_loss, model, batch, mode=mode, key=key)
      optimizer.update(model, grads, curvature=curvature)
      return loss, curvature

    loss, curvature = step(model, optimizer, batch)
    return loss, curvature, nnx.to_pure_dict(nnx.state(model, nnx.Param))

  mesh = Mesh(np.asarray(devices[:8]), ("data",))
  sharded = jax.device_put(batch, NamedSharding(mesh, PartitionSpec("data")))
  assert len(sharded["x"].sharding.device_set) == 8
  single = jax.device_put(batch, devices[0])
  loss8, curvature8, params8 = run(sharded)
  loss1, curvature1, params1 = run(single)
  # 8 devices vs 1: cross-device sums in another order. c = 1000 (1.2e-4 of each array's scale, as before for
  # the largest entries) for the factors and the params after a step through their damped inverses.
  assert_close_scaled(loss8, loss1, c=100)
  for layer in curvature1:
    for field in ("a", "s", "locations"):
      assert_close_scaled(getattr(curvature8[layer], field), getattr(curvature1[layer], field), c=1000,
                          err_msg=f"{layer}.{field}")
  assert_close_scaled(params8, params1, c=1000)
