"""The training harness against independent references.

* one member's trajectory equals a hand-written flax NNX + optax loop (optax's own SGD + L2, not wd_optax);
* a vmapped population equals the same members trained one after another;
* data parallelism over 8 simulated CPU devices gives the loss curve of a 1-device mesh (within 1e-5), and
  the 8-device program really is data-parallel (its compiled HLO reduces across devices);
* a NaN stops training with a message naming the step, and the last good checkpoint stays restorable.

(The decay window is ``wd_optax.schedules.window`` with traced edges, tested in test_schedules_and_masks.py.)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from experiments import config as config_lib
from experiments import optimizers
from experiments.data import load
from experiments.models import build
from experiments.train import Hooks, Program, TrainingDiverged, make_groups
from experiments.train.checkpoint import Checkpointer
from _tol import assert_close_scaled

STEPS = 12
LR, MOMENTUM, WD = 0.05, 0.9, 1e-3


def tiny_config(**train) -> config_lib.ExperimentConfig:
  return config_lib.ExperimentConfig(
      name="tiny",
      data=config_lib.DataConfig(name="digits", n_train=256, n_test=64, label_noise=0.1),
      model=config_lib.ModelConfig(name="mlp", norm="batch_noaffine", kwargs={"hidden": [16]}),
      optim=optimizers.SGD(learning_rate=LR, momentum=MOMENTUM, weight_decay=WD, decay="l2"),
      train=config_lib.TrainConfig(**{"steps": STEPS, "batch_size": 32, "log_every": 4, "eval_every": 4,
                                      "checkpoint_every": 0, "eval_batch_size": 64, "num_devices": 1, **train}),
      seeds=2,
      arms=[config_lib.Arm("decay"), config_lib.Arm("none", {"weight_decay": 0.0})])


@pytest.fixture(scope="module")
def dataset():
  return load("digits", n_train=256, n_test=64, label_noise=0.1)


@pytest.fixture(scope="module")
def runs(dataset):
  """A 4-member population (2 arms x 2 seeds) on 1 and on 8 devices, and the members run one at a time."""
  config = tiny_config()
  (group,) = make_groups(config)
  population = Program(config, group, dataset)
  pop_out = population.train(progress=False)
  pop_params = [population.params(i) for i in range(len(group.members))]

  sequential = Program(config, dataclasses.replace(group, members=group.members[:1]), dataset)
  seq_params, seq_losses = [], []
  for member in group.members:
    sequential.reset([member])
    out = sequential.train(progress=False)
    seq_params.append(sequential.params(0))
    seq_losses.append(out["loss"][0])

  config8 = tiny_config(num_devices=8)
  sharded = Program(config8, group, dataset)
  sharded_out = sharded.train(progress=False)
  return dict(config=config, group=group, pop_out=pop_out, pop_params=pop_params, seq_params=seq_params,
              seq_losses=seq_losses, sharded=sharded, sharded_out=sharded_out,
              sharded_params=[sharded.params(i) for i in range(len(group.members))])


def reference_run(dataset, seed: int, weight_decay: float) -> tuple[dict, np.ndarray]:
  """Hand-written NNX loop with optax's own SGD; batches from the documented epoch-permutation order."""
  model = build("mlp", num_classes=dataset.num_classes, rngs=nnx.Rngs(jax.random.key(seed)),
                norm="batch_noaffine", in_features=64, hidden=[16])
  tx = optax.chain(optax.add_decayed_weights(weight_decay), optax.trace(decay=MOMENTUM), optax.scale(-LR))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, x, y):
    def loss_fn(model):
      logits = model(x, train=True)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  n, batch = len(dataset.y_train), 32
  key = jax.random.PRNGKey(seed)
  losses = []
  for t in range(STEPS):
    epoch, position = divmod(t, n // batch)
    order = np.asarray(jax.random.permutation(jax.random.fold_in(key, epoch), n))
    idx = order[position * batch:(position + 1) * batch]
    losses.append(float(step(model, optimizer, jnp.asarray(dataset.x_train[idx]), jnp.asarray(dataset.y_train[idx]))))
  return nnx.to_pure_dict(nnx.state(model, nnx.Param)), np.array(losses)


def assert_trees_close(a, b, c):
  """Per leaf: float32 round-off of the leaf's scale, c eps32 max|leaf| (two programs)."""
  flat_a = jax.tree_util.tree_flatten_with_path(a)[0]
  flat_b = dict(jax.tree_util.tree_flatten_with_path(b)[0])
  assert len(flat_a) == len(flat_b)
  for path, x in flat_a:
    assert_close_scaled(x, flat_b[path], c=c, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("member", [0, 3])
def test_member_matches_hand_written_optax_loop(runs, dataset, member):
  m = runs["group"].members[member]
  ref_params, ref_losses = reference_run(dataset, m.seed, m.hp["weight_decay"])
  # Our trainer vs a hand-written optax loop, 12 steps: round-off grows along the trajectory.
  assert_close_scaled(runs["pop_out"]["loss"][member], ref_losses, c=100)
  assert_trees_close(runs["pop_params"][member], ref_params, c=100)


def test_members_differ(runs):
  """The comparison above would be vacuous if decay or the seed did not change the trajectory."""
  members = runs["group"].members
  assert [m.label for m in members] == ["decay", "decay", "none", "none"]
  losses = runs["pop_out"]["loss"]
  assert not np.allclose(losses[0], losses[1])      # seeds differ
  assert not np.array_equal(losses[0], losses[2])   # decay vs none, same seed


def test_vmapped_population_equals_sequential_runs(runs):
  for i in range(len(runs["group"].members)):
    # vmapped vs not: the same steps in another compiled program, 12 steps.
    assert_close_scaled(runs["pop_out"]["loss"][i], runs["seq_losses"][i], c=32)
    assert_trees_close(runs["pop_params"][i], runs["seq_params"][i], c=32)


def test_eight_devices_match_one_device(runs):
  assert runs["sharded"].mesh.size == 8 and len(jax.devices()) == 8
  # 8 devices vs 1: all-reduced gradients and BN statistics sum in another order, 12 steps; c as before
  # (the loss had atol 1e-5 at a scale ~2.3, the params rtol 1e-4).
  assert_close_scaled(runs["sharded_out"]["loss"], runs["pop_out"]["loss"], c=64)
  for i in range(len(runs["group"].members)):
    assert_trees_close(runs["sharded_params"][i], runs["pop_params"][i], c=1000)


def test_eight_device_program_is_data_parallel(runs):
  program = runs["sharded"]
  hlo = program._chunk.lower(program.state, program.hp, program.x_train, program.y_train, 4).compile().as_text()
  assert "all-reduce" in hlo  # gradients / BN statistics are reduced over the sharded batch


def test_logged_records_carry_diagnostics(runs):
  records = runs["pop_out"]["records"]
  assert {r["step"] for r in records} == {4, 8, 12}
  last = [r for r in records if r["step"] == STEPS]
  for r in last:
    assert 0.0 <= r["test_accuracy"] <= 1.0
    assert r["norm/scale_invariant"] > 0 and r["angle/scale_invariant"] > 0
    assert any(k.startswith("eff_lr/") for k in r) and any(k.startswith("angle/layers") for k in r)
  # eff_lr = η / ‖w‖² for SGD on each scale-invariant kernel (Zhang et al. §4.1).
  r = last[0]
  path = next(k[len("eff_lr/"):] for k in r if k.startswith("eff_lr/"))
  np.testing.assert_allclose(r[f"eff_lr/{path}"], LR / r[f"norm/{path}"] ** 2, rtol=1e-5)


def test_nan_stops_with_clear_message_and_keeps_last_good_checkpoint(dataset, tmp_path):
  """Updates become NaN from the 11th update on (count 10), so the loss at step 11 is the first NaN."""

  def nan_after(count_from: int) -> optax.GradientTransformation:
    def init(params):
      return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))
    def update(updates, state, params=None):
      factor = jnp.where(state.count >= count_from, jnp.nan, 1.0)
      return jax.tree.map(lambda u: u * factor, updates), optax.ScaleByScheduleState(count=state.count + 1)
    return optax.GradientTransformation(init, update)

  hooks = Hooks(make_tx=lambda optim, rates: optax.chain(optim.build(rates), nan_after(10)))
  config = tiny_config(steps=20, log_every=5, eval_every=5, checkpoint_every=5)
  config.arms = config.arms[:1]
  (group,) = make_groups(config, seeds=[0])
  program = Program(config, group, dataset, hooks=hooks)
  with pytest.raises(TrainingDiverged, match=r"at step 11 \(arm 'decay', seed 0.*last good checkpoint \(step 10\)"):
    program.train(workdir=str(tmp_path), progress=False)
  ckpt = Checkpointer(str(tmp_path / "checkpoints" / group.name))
  assert ckpt.latest_step() == 10
  restored = ckpt.restore(10, program.state)
  ckpt.close()
  assert int(restored["step"][0]) == 10
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(restored["params"]))


def test_lr_norm_sq_scales_each_scale_invariant_step_by_its_squared_norm_ratio():
  """Z2's η_t ∝ ‖w_t‖²: plain SGD, the hidden kernel's step is scaled by ‖W_t‖²/‖W_0‖², the classifier's is not."""
  from experiments.train import step as step_lib

  def apply(params, model_state, x, train):
    h = x @ params["hidden"]
    h = (h - h.mean(0)) / jnp.sqrt(h.var(0) + 1e-5)
    return jax.nn.relu(h) @ params["classifier"], model_state

  optim = optimizers.SGD(learning_rate=0.1, momentum=0.0, weight_decay=0.0, lr_norm_sq=True)
  spec = step_lib.StepSpec(apply=apply, optim=optim, total_steps=10, batch_size=8, num_examples=8,
                           scale_invariant=frozenset({"hidden"}), measured=frozenset({"hidden", "classifier"}))
  rng = np.random.default_rng(0)
  w0 = {"hidden": jnp.asarray(rng.standard_normal((4, 3)), jnp.float32),
        "classifier": jnp.asarray(rng.standard_normal((3, 2)), jnp.float32)}
  params = {"hidden": 2.0 * w0["hidden"], "classifier": w0["classifier"]}   # ‖W_t‖² = 4 ‖W_0‖²
  x, y = jnp.asarray(rng.standard_normal((8, 4)), jnp.float32), jnp.asarray(rng.integers(0, 2, 8), jnp.int32)
  hp = {k: jnp.float32(getattr(optim, k)) for k in optim.TRACED}
  state = {"step": jnp.int32(0), "params": params, "model_state": {}, "key": jax.random.PRNGKey(0),
           "opt_state": spec.init_opt_state(params, hp), "init_sq_norm": spec.si_sq_norms(w0)}
  new, metrics = jax.jit(lambda s, h: step_lib.member_step(spec, s, h, x, y, diagnose=True))(state, hp)

  order = np.asarray(jax.random.permutation(jax.random.fold_in(jax.random.PRNGKey(0), 0), 8))
  grads = jax.grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(apply(p, {}, x[order], True)[0],
                                                                              y[order]).mean())(params)
  assert_close_scaled(new["params"]["hidden"], params["hidden"] - 0.1 * 4.0 * grads["hidden"], c=100)
  assert_close_scaled(new["params"]["classifier"], params["classifier"] - 0.1 * grads["classifier"], c=100)
  # The logged effective learning rate uses the layer's own step size, 0.1·4, over the new ‖W‖².
  np.testing.assert_allclose(metrics["eff_lr/hidden"], 0.4 / float(jnp.sum(new["params"]["hidden"] ** 2)),
                             rtol=1e-5)


def test_bad_batch_size_names_the_setting(dataset):
  config = tiny_config(batch_size=30, num_devices=8)
  (group,) = make_groups(config)
  with pytest.raises(ValueError, match=r"train.batch_size \(30\).*divisible"):
    Program(config, group, dataset)


class _ReversedSet(frozenset):
  """A frozenset that iterates in reverse sorted order, as a set of paths may under another PYTHONHASHSEED."""

  def __iter__(self):
    return iter(sorted(frozenset.__iter__(self), reverse=True))


class _SortedSet(frozenset):
  def __iter__(self):
    return iter(sorted(frozenset.__iter__(self)))


def test_diagnostics_concatenate_layers_in_sorted_path_order_whatever_the_set_order(monkeypatch):
  """``angle/scale_invariant`` concatenates the scale-invariant layers: in sorted path order, never in the
  frozenset's iteration order (which follows the string hash, so varies with PYTHONHASHSEED), so the logged
  metrics are bit-identical from one process to the next."""
  from experiments.train import step as step_lib

  rng = np.random.default_rng(0)
  shapes = {"b": (3, 3), "a": (2, 2), "c": (1, 5)}   # distinct sizes: the concatenation order is visible
  old = {k: jnp.asarray(rng.standard_normal(s), jnp.float32) for k, s in shapes.items()}
  new = {k: v + 0.1 * jnp.asarray(rng.standard_normal(v.shape), jnp.float32) for k, v in old.items()}
  rates = {"learning_rate": jnp.float32(0.1), "weight_decay": jnp.float32(0.0)}
  optim = optimizers.SGD(learning_rate=0.1)

  assert list(step_lib.select(new, _ReversedSet(shapes))) == ["a", "b", "c"]
  concatenated = []
  original = jnp.concatenate

  def spy(arrays, *args, **kwargs):
    concatenated.append([int(np.size(a)) for a in arrays])
    return original(arrays, *args, **kwargs)

  monkeypatch.setattr(jnp, "concatenate", spy)
  metrics = {}
  for name, kind in (("sorted", _SortedSet), ("reversed", _ReversedSet)):
    spec = step_lib.StepSpec(apply=None, optim=optim, total_steps=10, batch_size=8, num_examples=8,
                             scale_invariant=kind(shapes), measured=kind(shapes))
    metrics[name] = step_lib.diagnose_step(spec, old, new, rates)
  assert [4, 9, 5] in concatenated and [5, 9, 4] not in concatenated, concatenated   # a, b, c by path
  assert metrics["sorted"].keys() == metrics["reversed"].keys()
  for key, value in metrics["sorted"].items():
    np.testing.assert_array_equal(value, metrics["reversed"][key], err_msg=key)   # bit-identical
