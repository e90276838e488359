"""Population sharding on a 2-D mesh ``members`` × ``data`` (8 simulated CPU devices, tests/conftest.py).

* members split over devices (``members=8, data=1``): every member's losses and parameters equal its run in
  the one-device population (float32 round-off of the arrays' scale), and the compiled step has no
  cross-device collective at all (no all-reduce, all-gather, collective-permute, all-to-all, reduce-scatter);
* a 2-D mesh (``members=4, data=2``): the same numbers, and the step all-reduces (over ``data``);
* a population that is not a multiple of the members axis (6 members on 4): padded, the copies dropped;
* the mesh shape: validation errors name the field; the automatic shape (1 × devices on CPU, members first
  on accelerators).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from experiments import config as config_lib
from experiments import optimizers
from experiments.data import load
from experiments.train import Program, make_groups
from experiments.train import sharding as sharding_lib
from _tol import assert_close_scaled

STEPS = 8
COLLECTIVES = ("all-reduce", "all-gather", "collective-permute", "all-to-all", "reduce-scatter",
               "collective-broadcast")


def sweep_config(seeds: int = 4, **train) -> config_lib.ExperimentConfig:
  return config_lib.ExperimentConfig(
      name="popshard",
      data=config_lib.DataConfig(name="digits", n_train=256, n_test=64, label_noise=0.1),
      model=config_lib.ModelConfig(name="mlp", norm="batch_noaffine", kwargs={"hidden": [16]}),
      optim=optimizers.SGD(learning_rate=0.05, momentum=0.9, decay="l2"),
      train=config_lib.TrainConfig(**{"steps": STEPS, "batch_size": 32, "log_every": 4, "eval_every": 4,
                                      "checkpoint_every": 0, "eval_batch_size": 64, "num_devices": 1, **train}),
      seeds=seeds, arms=[config_lib.Arm("sgd", sweep={"weight_decay": [0.0, 1e-3, 1e-2, 1e-1]})])


@pytest.fixture(scope="module")
def dataset():
  return load("digits", n_train=256, n_test=64, label_noise=0.1)


def _train(config, dataset, members=None):
  (group,) = make_groups(config)
  if members is not None:
    group.members = group.members[:members]
  program = Program(config, group, dataset)
  out = program.train(progress=False)
  params = [program.params(i) for i in range(len(group.members))]
  return program, out, params


@pytest.fixture(scope="module")
def reference(dataset):
  """The 16-member sweep as one population on one device."""
  return _train(sweep_config(), dataset)


def _compare(out, params, ref_out, ref_params, count):
  ref_loss = ref_out["loss"][:count]
  assert out["loss"].shape == ref_loss.shape
  # Another compiled program (member-sharded, or its batch split over 2 devices), 8 steps: round-off only.
  assert_close_scaled(out["loss"], ref_loss, c=64)
  for i in range(count):
    assert_close_scaled(params[i], ref_params[i], c=1000, err_msg=f"member {i}")
  # The records are those of the real members, in order, none of the padding.
  labels = [(r["label"], r["seed"]) for r in out["records"] if r["step"] == STEPS]
  ref_labels = [(r["label"], r["seed"]) for r in ref_out["records"] if r["step"] == STEPS][:count]
  assert labels == ref_labels
  finals = {(r["label"], r["seed"]): r["test_accuracy"] for r in out["records"] if r["step"] == STEPS}
  ref_finals = {(r["label"], r["seed"]): r["test_accuracy"] for r in ref_out["records"] if r["step"] == STEPS}
  for key, value in finals.items():
    assert abs(value - ref_finals[key]) <= 1 / 64 + 1e-6  # at most one test example flips on round-off


def _step_hlo(program) -> str:
  first = sharding_lib.global_array(np.asarray(program.step, np.int32), sharding_lib.replicated(program.mesh))
  return program._chunk.lower(program.state, program.hp, program.x_train, program.y_train, 4,
                              first).compile().as_text()


def test_members_split_over_devices_match_one_device_without_collectives(dataset, reference):
  _, ref_out, ref_params = reference
  program, out, params = _train(sweep_config(num_devices=8, mesh_members=8), dataset)
  assert dict(program.mesh.shape) == {"members": 8, "data": 1}
  leaf = program.state["params"]["layers"][0]["kernel"] if "layers" in program.state["params"] else \
      jax.tree.leaves(program.state["params"])[0]
  assert leaf.sharding.shard_shape(leaf.shape)[0] == 2  # 16 members, 2 per device
  _compare(out, params, ref_out, ref_params, 16)
  hlo = _step_hlo(program)
  found = [c for c in COLLECTIVES if f"{c}(" in hlo or f"{c}-start(" in hlo]
  assert not found, f"the member-sharded step communicates across devices: {found}"


def test_two_d_mesh_splits_members_and_their_batch(dataset, reference):
  _, ref_out, ref_params = reference
  program, out, params = _train(sweep_config(num_devices=8, mesh_members=4), dataset)
  assert dict(program.mesh.shape) == {"members": 4, "data": 2}
  _compare(out, params, ref_out, ref_params, 16)
  assert "all-reduce" in _step_hlo(program)  # each member's gradients and BN statistics over its 2 devices


def test_population_padded_to_the_members_axis(dataset, reference):
  _, ref_out, ref_params = reference
  program, out, params = _train(sweep_config(num_devices=8, mesh_members=4), dataset, members=6)
  assert program.num_members == 6 and jax.tree.leaves(program.state["params"])[0].shape[0] == 8
  assert out["loss"].shape == (6, STEPS) and len({(r["label"], r["seed"]) for r in out["records"]}) == 6
  _compare(out, params, ref_out, ref_params, 6)
  with pytest.raises(IndexError, match="member index 6 out of range for a population of 6"):
    program.params(6)


def test_automatic_mesh_shape():
  # CPU: one members slot, the batch over every device (as before this field existed).
  assert sharding_lib.mesh_shape(8, 0, 16, 32, platform="cpu") == (1, 8)
  # Accelerators: members first; the batch split only where members are fewer than devices.
  assert sharding_lib.mesh_shape(8, 0, 16, 32, platform="gpu") == (8, 1)
  assert sharding_lib.mesh_shape(8, 0, 5, 32, platform="tpu") == (4, 2)
  assert sharding_lib.mesh_shape(8, 0, 1, 32, platform="gpu") == (1, 8)
  assert sharding_lib.mesh_shape(8, 0, 1, 3, platform="gpu") == (8, 1)  # batch 3: no data split fits
  assert sharding_lib.mesh_shape(8, 2, 16, 32, platform="gpu") == (2, 4)


@pytest.mark.parametrize("setting, message", [
    (dict(mesh_members=-1), r"^train\.mesh_members must be an int >= 0 \(0: automatic\), got -1\.$"),
    (dict(mesh_members=1.5), r"^train\.mesh_members must be an int >= 0 \(0: automatic\), got 1\.5\.$"),
    (dict(mesh_members=3, num_devices=8), r"^train\.mesh_members \(3\) must divide train\.num_devices \(8\)\.$"),
])
def test_config_validation_names_the_field(setting, message):
  with pytest.raises(ValueError, match=message):
    config_lib.validate(sweep_config(**setting))


def test_mesh_errors_name_the_field():
  with pytest.raises(ValueError, match=r"^train\.mesh_members \(3\) must divide the number of devices \(8\)"):
    sharding_lib.mesh_shape(8, 3, 16, 32)
  with pytest.raises(ValueError, match=r"^train\.batch_size \(30\) must be divisible by the data axis of the mesh "
                                       r"\(8 devices / train\.mesh_members 2 = 4\)"):
    sharding_lib.mesh_shape(8, 2, 16, 30)


def test_harness_kfac_family_splits_its_inverses_over_the_data_axis():
  """The ``kfac`` family on a 1 × 8 mesh (two members, each member's batch over 8 devices) binds the data
  axis, inverts 2 of its 10-factor stack per device, and trains to the same numbers as with
  ``distributed_inverses=false``. Newton-Schulz: a vmapped LAPACK inverse in the scanned step deadlocks
  XLA:CPU (see the ``kfac`` family's ``inverse``)."""
  from jax.sharding import PartitionSpec
  from test_kfac_sharding import _inversion_shapes  # the HLO reader of the library's sharding tests
  if len(jax.devices()) < 8:
    pytest.skip("needs 8 devices: XLA_FLAGS=--xla_force_host_platform_device_count=8 (tests/conftest.py)")
  from experiments import config as config_lib
  from experiments import optimizers
  from experiments.data import load
  from experiments.train import Program, make_groups
  from experiments.train import sharding as sharding_lib

  dataset = load("digits", n_train=256, n_test=64, label_noise=0.1)

  def train(distributed):
    config = config_lib.ExperimentConfig(
        name="kfacdist", data=config_lib.DataConfig(name="digits", n_train=256, n_test=64, label_noise=0.1),
        model=config_lib.ModelConfig(name="mlp", norm="batch_noaffine", kwargs={"hidden": [16] * 5},
                                     registered_layers=True),
        optim=optimizers.KFAC(learning_rate=0.03, damping=1e-2, inverse_every=2, inverse="newton_schulz",
                              distributed_inverses=distributed),
        train=config_lib.TrainConfig(steps=3, batch_size=32, log_every=3, eval_every=3, checkpoint_every=0,
                                     eval_batch_size=64, num_devices=8, mesh_members=1),
        seeds=2, arms=[config_lib.Arm("kfac")])
    (group,) = make_groups(config)
    program = Program(config, group, dataset)
    first = sharding_lib.global_array(np.asarray(0, np.int32), sharding_lib.replicated(program.mesh))
    hlo = program._chunk.lower(program.state, program.hp, program.x_train, program.y_train, 3,
                               first).compile().as_text()
    out = program.train(progress=False)
    return program, hlo, out, [program.params(i) for i in range(2)]

  plain, plain_hlo, plain_out, plain_params = train(False)
  split, split_hlo, split_out, split_params = train(True)
  assert dict(split.mesh.shape) == {"members": 1, "data": 8}
  assert plain.group.optim.inverse_sharding is None
  assert split.group.optim.inverse_sharding.spec == PartitionSpec("data")
  # Per device and member (2 members, not split: the members axis has one device): the 10 factors of size
  # 16-17 (5 input, 5 output), or ceil(10 / 8) = 2 of them.
  plain_shapes, split_shapes = _inversion_shapes(plain_hlo, "newton_schulz"), _inversion_shapes(split_hlo, "newton_schulz")
  assert (2, 10) in plain_shapes and (2, 2) not in plain_shapes
  assert (2, 2) in split_shapes and (2, 10) not in split_shapes
  # 3 steps through damped inverses computed in another program: round-off (as 8 vs 1 devices above).
  assert_close_scaled(split_out["loss"], plain_out["loss"], c=64)
  assert_close_scaled(split_params, plain_params, c=1000)
