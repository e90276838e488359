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


# --- distributed inverses -----------------------------------------------------------------------------------
# A model with 7 factors of size 16-17 (one padded stack: 4 input factors of 16 + bias, 3 output factors of 16)
# and one of size 3 (the head's output factor, a stack of its own).
STACK, SIZE = 7, 17


class Deep(nnx.Module):
  def __init__(self, rngs):
    self.hidden = nnx.List([kfac.Linear(16, 16, rngs=rngs) for _ in range(3)])
    self.head = kfac.Linear(16, 3, rngs=rngs)

  def __call__(self, x):
    for layer in self.hidden:
      x = jnp.tanh(layer(x))
    return self.head(x)


def _deep_problem(members=None):
  model = Deep(nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  params = nnx.to_pure_dict(params)
  rng = np.random.default_rng(1)
  shape = (32,) if members is None else (members, 32)
  batch = {"x": jnp.asarray(rng.normal(size=shape + (16,)), jnp.float32),
           "y": jnp.asarray(rng.integers(0, 3, size=shape), jnp.int32)}
  if members is not None:
    params = jax.tree.map(lambda p: jnp.stack([p * (1 + 0.1 * i) for i in range(members)]), params)
  return graphdef, params, batch, kfac.registered_layers(model)


def _step_fn(graphdef, tx):
  def step(params, state, batch):
    model = nnx.merge(graphdef, params)
    _, grads, curvature = kfac.value_grad_and_curvature(ce_loss, model, batch, mode="empirical")
    return tx.update(nnx.to_pure_dict(grads), state, params, curvature=curvature)
  return step


# What each ``inverse=`` method runs per matrix: LAPACK/cuSOLVER custom calls or XLA's own ops; Newton-Schulz
# runs batched matmuls.
_INVERSION_OPS = {
    "cholesky": r"(custom-call\(.*custom_call_target=\"[a-z_]*(potrf|trsm)[a-z_]*\"|cholesky\(|triangular-solve\()",
    "newton_schulz": r" dot\(.*lhs_batch_dims=\{0[,\d]*\}",
}


def _inversion_shapes(hlo, inverse):
  """The result shapes ``[..., k, k]`` of the compiled program's inversion ops on the matrices of size SIZE."""
  import re
  shapes = set()
  for line in hlo.splitlines():
    if re.search(_INVERSION_OPS[inverse], line):
      for dims in re.findall(r"f32\[([\d,]+)\]", line.split("=", 1)[1].split("(", 1)[0]):
        dims = tuple(int(d) for d in dims.split(","))
        if dims[-2:] == (SIZE, SIZE):
          shapes.add(dims[:-2])
  return shapes


def _groups(line):
  """The device groups (partition ids) of one collective's ``replica_groups``, in the formats XLA prints."""
  import itertools
  import re
  if m := re.search(r"replica_groups=\{(\{[\d,{}]*\})\}", line):
    return [set(map(int, g.split(","))) for g in re.findall(r"\{([\d,]+)\}", m.group(1))]
  if m := re.search(r"replica_groups=\[(\d+),(\d+)\]<=\[(\d+)\](?![T\d])", line):
    count, size = int(m.group(1)), int(m.group(2))
    return [set(range(g * size, (g + 1) * size)) for g in range(count)]
  if m := re.search(r"replica_groups=mesh\[([^\]]*)\] \{([^}]*)\}", line):
    axes = [(name, int(size)) for name, size in re.findall(r"'(\w+)'=(\d+)", m.group(1))]
    reduced = set(re.findall(r"'(\w+)'", m.group(2)))
    sizes = [size for _, size in axes]
    groups = {}
    for index in itertools.product(*(range(s) for s in sizes)):
      pid = int(np.ravel_multi_index(index, sizes))
      key = tuple(i for i, (name, _) in zip(index, axes) if name not in reduced)
      groups.setdefault(key, set()).add(pid)
    return list(groups.values())
  raise AssertionError(f"unrecognised replica_groups: {line[:300]}")


# Newton-Schulz on 4 devices: with one matrix per device XLA drops the batch dimension of its matmuls.
@pytest.mark.parametrize("inverse, count", [("cholesky", 8), ("newton_schulz", 4)])
def test_distributed_inverses_each_device_inverts_its_share(inverse, count):
  """Batch split over ``data``: the stack of 7 factors is inverted ceil(7 / devices) per device instead of 7
  on each, under the ``lax.cond`` of ``inverse_every``, and the inverses equal a float64 reference."""
  devices = jax.devices()
  if len(devices) < 8:
    pytest.skip("needs 8 devices: XLA_FLAGS=--xla_force_host_platform_device_count=8 (tests/conftest.py)")
  mesh = Mesh(np.asarray(devices[:count]), ("data",))
  graphdef, params, batch, layers = _deep_problem()
  batch = jax.device_put(batch, NamedSharding(mesh, PartitionSpec("data")))
  params = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))
  results = {}
  for name, sharding in (("plain", None), ("split", NamedSharding(mesh, PartitionSpec("data")))):
    tx = kfac.scale_by_kfac(1e-2, layers=layers, inverse=inverse, inverse_every=2, inverse_sharding=sharding)
    state = tx.init(params)
    step = jax.jit(_step_fn(graphdef, tx))
    hlo = step.lower(params, state, batch).compile().as_text()
    assert "conditional(" in hlo   # the inverse update stays under inverse_every's lax.cond
    # Per device: every matrix of the stack without the split, ceil(7 / devices) with it.
    assert _inversion_shapes(hlo, inverse) == ({(STACK,)} if sharding is None else {(-(-STACK // count),)})
    assert ("all-gather" in hlo) == (sharding is not None)   # the broadcast of the inverses
    assert "collective-permute" not in hlo
    updates, state = step(params, state, batch)
    updates, state = step(params, state, batch)   # a step that reuses the inverses (count 1 of 2)
    results[name] = (updates, state)
  plain, split = results["plain"], results["split"]
  # Same factors, inverted by the same method in another program: round-off of a damped inverse.
  assert_close_scaled(split[1].inverses, plain[1].inverses, c=100)
  assert_close_scaled(split[0], plain[0], c=100)
  assert_close_scaled(split[1].factors, plain[1].factors, c=10)
  for layer, f in split[1].factors.items():   # float64 reference: the π-split damped inverses of the factors
    a, s = np.asarray(f.a, np.float64), np.asarray(f.s, np.float64)
    pi = np.sqrt((np.trace(a) / len(a)) / (np.trace(s) / len(s)))
    root = np.sqrt(1e-2)
    assert_close_scaled(split[1].inverses[layer].a, np.linalg.inv(a + pi * root * np.eye(len(a))), c=1000,
                        err_msg=f"{layer}.a")
    assert_close_scaled(split[1].inverses[layer].s, np.linalg.inv(s + root / pi * np.eye(len(s))), c=1000,
                        err_msg=f"{layer}.s")


def test_distributed_inverses_in_a_member_vmapped_population():
  """The harness's layout: members × data = 2 × 4, ``vmap(spmd_axis_name="members")``. The factor statistics
  are all-reduced over ``data`` only; each device inverts ceil(7 / 4) = 2 of its member's stack; the result
  equals the undistributed program's."""
  devices = jax.devices()
  if len(devices) < 8:
    pytest.skip("needs 8 devices: XLA_FLAGS=--xla_force_host_platform_device_count=8 (tests/conftest.py)")
  mesh = Mesh(np.asarray(devices[:8]).reshape(2, 4), ("members", "data"))
  graphdef, params, batch, layers = _deep_problem(members=2)
  batch = jax.device_put(batch, NamedSharding(mesh, PartitionSpec("members", "data")))
  params = jax.device_put(params, NamedSharding(mesh, PartitionSpec("members")))
  rows = [set(range(r * 4, (r + 1) * 4)) for r in range(2)]   # partition ids of each member's data devices
  results = {}
  for name, sharding in (("plain", None), ("split", NamedSharding(mesh, PartitionSpec("data")))):
    tx = kfac.scale_by_kfac(1e-2, layers=layers, inverse_sharding=sharding)
    state = jax.jit(jax.vmap(tx.init), out_shardings=NamedSharding(mesh, PartitionSpec("members")))(params)
    step = jax.jit(jax.vmap(_step_fn(graphdef, tx), spmd_axis_name="members"))
    hlo = step.lower(params, state, batch).compile().as_text()
    assert _inversion_shapes(hlo, "cholesky") == ({(1, STACK)} if sharding is None else {(1, 2)})
    collectives = [line for line in hlo.splitlines()
                   if any(f"{c}(" in line for c in ("all-reduce", "all-gather", "reduce-scatter", "all-to-all"))]
    assert collectives and "collective-permute" not in hlo
    for line in collectives:   # within a member's data devices, never across members
      assert all(any(group <= row for row in rows) for group in _groups(line)), line[:300]
    results[name] = step(params, state, batch)
  (u_plain, s_plain), (u_split, s_split) = results["plain"], results["split"]
  assert s_split.inverses["head"].a.sharding.spec == PartitionSpec("members")
  assert_close_scaled(s_split.inverses, s_plain.inverses, c=100)
  assert_close_scaled(u_split, u_plain, c=100)


def test_inverse_sharding_errors():
  mesh = Mesh(np.asarray(jax.devices()[:1]), ("data",))
  with pytest.raises(TypeError, match=r"inverse_sharding must be a jax\.sharding\.NamedSharding .* got Mesh"):
    kfac.scale_by_kfac(1e-2, inverse_sharding=mesh)
  with pytest.raises(ValueError, match=r"inverse_sharding must split the leading \(layer\) axis only"):
    kfac.kfac(0.1, damping=1e-2, inverse_sharding=NamedSharding(mesh, PartitionSpec(None, "data")))
