"""``train.feed``: batches gathered on the host (:mod:`experiments.train.feed`) instead of drawn on device.

* the chunk's host indices are those of :func:`experiments.train.step.batch_indices` at every step (epochs
  crossed, sampling without replacement within an epoch);
* one process, 1 device (a population of one: the unbatched step, crop + flip augmentation) and 8
  simulated CPU devices (mesh 4 members × 2 data, 6 members padded to 8): host and device feed give
  bit-identical losses, parameters and records (evaluation and diagnostics included), also when a chunk
  is split into pieces to bound the memory of its batches (on 1 device);
* each device's block of the fed batch is its members-slice × data-slice and holds exactly the examples
  ``batch_indices`` names, and the host gathered each block once (the multi-process share, 2 processes ×
  4 devices, is checked in tests/test_multiprocess.py);
* the field: ``auto`` is ``device`` on one process (how every published result ran), a bad value is one
  error line naming it.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from experiments import config as config_lib
from experiments import optimizers
from experiments.data import load
from experiments.train import Program, make_groups
from experiments.train import feed as feed_lib
from experiments.train import sharding as sharding_lib
from experiments.train import step as step_lib

STEPS = 8
BATCH_INDICES = jax.jit(step_lib.batch_indices, static_argnums=(2, 3))  # the reference, compiled once


def feed_config(feed: str = "auto", augment: bool = False, **train) -> config_lib.ExperimentConfig:
  # 256 examples in batches of 48: 5 steps an epoch (the last 16 dropped), so the second chunk of 4 and its
  # first piece of 2 cross an epoch.
  return config_lib.ExperimentConfig(
      name="feed",
      data=config_lib.DataConfig(name="digits", n_train=256, n_test=64, label_noise=0.1, augment=augment),
      model=config_lib.ModelConfig(name="mlp", norm="batch_noaffine", kwargs={"hidden": [16]}),
      optim=optimizers.SGD(learning_rate=0.05, momentum=0.9, decay="l2"),
      train=config_lib.TrainConfig(**{"steps": STEPS, "batch_size": 48, "log_every": 4, "eval_every": 8,
                                      "eval_batch_size": 64, "num_devices": 1, "feed": feed, **train}),
      seeds=3, arms=[config_lib.Arm("sgd", sweep={"weight_decay": [0.0, 1e-2]})])


@pytest.fixture(scope="module")
def dataset():
  return load("digits", n_train=256, n_test=64, label_noise=0.1)


def _train(config, dataset, members: int, model=None):
  (group,) = make_groups(config)
  group.members = group.members[:members]
  return _run(Program(config, group, dataset, model=model))


def _run(program):
  out = program.train(progress=False)
  return program, out, [program.params(i) for i in range(program.num_members)]


def _assert_identical(a, b):
  (_, out_a, params_a), (_, out_b, params_b) = a, b
  np.testing.assert_array_equal(out_a["loss"], out_b["loss"])
  # The same examples through the same step: bit-identical (on XLA:CPU; were a compiler to fuse the
  # on-device gather differently, compare with _tol.assert_close_scaled instead).
  assert out_a["records"] == out_b["records"]
  for pa, pb in zip(params_a, params_b):
    jax.tree.map(np.testing.assert_array_equal, pa, pb)


def test_chunk_indices_are_the_batches_of_every_step():
  keys = jax.vmap(jax.random.PRNGKey)(np.array([0, 7, 3], np.uint32))
  n, batch, first, steps = 40, 8, 3, 13   # 5 steps an epoch: the chunk spans epochs 0 to 3
  got = np.asarray(jax.jit(step_lib.chunk_indices, static_argnums=(2, 3, 4))(keys, np.int32(first), steps, n,
                                                                             batch))
  assert got.shape == (steps, 3, batch)
  for s in range(steps):
    for m in range(3):
      np.testing.assert_array_equal(got[s, m], BATCH_INDICES(keys[m], first + s, n, batch))
  # Epoch 1 (steps 5..9) of member 0: all 40 examples once, its permutation differs from member 1's.
  assert sorted(got[5 - first: 10 - first, 0].ravel()) == list(range(n))
  assert not np.array_equal(got[5 - first:10 - first, 0], got[5 - first:10 - first, 1])


@pytest.mark.parametrize("num_devices, mesh_members, members, augment", [
    (1, 0, 1, True),      # one member: the unbatched step; augmented
    (8, 4, 6, False),     # 4 x 2 mesh, padded to 8 members
], ids=["1-device", "8-devices"])
def test_host_feed_equals_device_feed(dataset, num_devices, mesh_members, members, augment):
  train = dict(num_devices=num_devices, mesh_members=mesh_members)
  device = _train(feed_config("device", augment, **train), dataset, members)
  model = device[0].model   # built and probed once
  host = _train(feed_config("host", augment, **train), dataset, members, model=model)
  assert device[0].feed == "device" and host[0].feed == "host"
  assert host[0].x_train is None and host[0].y_train is None   # no training set on any device
  _assert_identical(host, device)
  if num_devices == 1:
    # Chunks of 4 steps as pieces of 2 (the memory bound, HostFeed.piece_steps): the same numbers.
    row = dataset.x_train[0].nbytes + dataset.y_train[0].nbytes
    program = host[0]
    program._feed.max_bytes = 2 * 48 * row + row
    assert program._feed.piece_steps(1) == 2
    program.reset(program.group.members)   # from step 0 again, the compiled programs reused
    _assert_identical(_run(program), device)


def test_each_device_gets_its_members_and_batch_slice(dataset, monkeypatch):
  mesh = sharding_lib.make_mesh(8, 4)   # 4 members x 2 data
  feed = feed_lib.HostFeed(mesh, dataset.x_train, dataset.y_train, batch_size=32)
  keys = np.asarray(jax.vmap(jax.random.PRNGKey)(np.arange(8, dtype=np.uint32)))
  gathered = []
  take = feed_lib._take
  monkeypatch.setattr(feed_lib, "_take", lambda array, rows: gathered.append(rows.shape) or take(array, rows))
  xs, ys = feed.batches(keys, first_step=6, num_steps=3)
  assert xs.shape == (3, 8, 32, 8, 8, 1) and ys.shape == (3, 8, 32)
  # Each of the 8 blocks gathered once (inputs and labels), a quarter of the members and half the batch.
  assert gathered == [(3, 2, 16)] * 16
  n = len(dataset.y_train)
  whole = np.array([[BATCH_INDICES(keys[m], 6 + s, n, 32) for m in range(8)] for s in range(3)])
  for x, y in zip(xs.addressable_shards, ys.addressable_shards):
    _, members, rows = x.index[:3]
    i, j = np.argwhere(mesh.devices == x.device)[0]
    assert (members, rows) == (slice(2 * i, 2 * i + 2), slice(16 * j, 16 * j + 16)) and y.index == x.index[:3]
    assert x.data.shape == (3, 2, 16, 8, 8, 1) and y.data.shape == (3, 2, 16)
    np.testing.assert_array_equal(np.asarray(x.data), dataset.x_train[whole[:, members, rows]])
    np.testing.assert_array_equal(np.asarray(y.data), dataset.y_train[whole[:, members, rows]])


def test_auto_is_the_device_feed_on_one_process():
  assert feed_config().train.feed == "auto"
  assert feed_lib.resolve("auto") == "device" and feed_lib.resolve("host") == "host"


def test_bad_feed_names_the_setting():
  assert config_lib.apply_override(feed_config(), "train.feed=host").train.feed == "host"
  message = r"^train.feed must be one of \('auto', 'device', 'host'\), got 'cpu'\.$"
  with pytest.raises(ValueError, match=message):
    config_lib.validate(feed_config("cpu"))
  with pytest.raises(ValueError, match=message):
    feed_lib.resolve("cpu")
