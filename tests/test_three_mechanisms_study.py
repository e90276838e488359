"""The three_mechanisms study: its analysis on synthetic results with known answers, its arms (one program per
optimizer and network), the K-FAC family's one-pass curvature and decay routing, and one tiny end-to-end run."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments.studies import three_mechanisms as study
from experiments.train.metrics import ArmResult
from _tol import assert_close_scaled

SEEDS = 6
STEPS = np.arange(100, 700, 100)
LAYERS = ("layers/0", "layers/1", "classifier")


def _world(*, accuracy, jacobian, gamma_growth, final_cosine, seed=0):
  """ArmResults for every arm of the quick config.

  accuracy(optimizer, decay, net) -> final test accuracy; jacobian(optimizer, decay) -> final E‖J‖²;
  gamma_growth(optimizer, decay) -> factor by which γ_eff grows from the first to the last evaluation;
  final_cosine(optimizer, decay) -> last cosine (the first is 0.3). Small per-seed noise on everything.
  """
  rng = np.random.default_rng(seed)
  config = study.make_config(True)
  config.seeds = SEEDS
  results = {}
  n = len(STEPS)
  for optimizer in study.OPTIMIZERS:
    for net in study.NETS:
      for decay in study.DECAYS:
        label = study.arm_name(optimizer, decay, net)
        test = np.full((SEEDS, n), np.nan)
        test[:, -1] = accuracy(optimizer, decay, net) + 0.001 * rng.standard_normal(SEEDS)
        series = {"test_accuracy": test, "train_accuracy": np.ones((SEEDS, n))}
        jac = np.full((SEEDS, n), np.nan)
        jac[:, -1] = jacobian(optimizer, decay) * np.exp(0.01 * rng.standard_normal(SEEDS))
        series["jacobian_norm"] = jac
        ramp = np.linspace(0.0, 1.0, n)
        for layer in LAYERS:
          growth = gamma_growth(optimizer, decay) if net == "bn" else 1.0
          gamma = 1e-3 * growth**ramp * np.exp(0.01 * rng.standard_normal((SEEDS, n)))
          series[f"gamma_eff/{layer}"] = gamma
          cos = 0.3 + (final_cosine(optimizer, decay) - 0.3) * ramp + 0.002 * rng.standard_normal((SEEDS, n))
          series[f"cos/{layer}"] = cos
        results[label] = ArmResult(label=label, arm=label, seeds=list(range(SEEDS)), swept={}, steps=STEPS,
                                   series=series)
  return results, config


def _paper_accuracy(optimizer, decay, net):
  base = 0.60
  if decay == "none":
    return base
  if optimizer.startswith("kfac"):
    return base + (0.03 if decay == "decoupled" else 0.005)
  return base + 0.01


def _paper_world():
  return _world(accuracy=_paper_accuracy,
                jacobian=lambda o, d: 10.0 if d == "none" else 5.0,
                gamma_growth=lambda o, d: 300.0 if d == "none" else 1.3,
                final_cosine=lambda o, d: 0.99 if d == "none" else 0.6)


def test_analysis_reproduces_every_claim_in_a_world_where_the_paper_is_right():
  results, config = _paper_world()
  claims, table = study.analyze(results, config)
  verdicts = {c.id: c.verdict for c in claims}
  assert set(verdicts) == {"Z4a", "Z4b", "Z4c", "Z4d", "Z5a", "Z5b", "Z5c", "Z5d", "Z5e", "Z5f",
                           "Z6a", "Z6a-bn", "Z6b", "Z6b-bn"}
  assert all(v == "reproduced" for v in verdicts.values()), verdicts
  by_id = {c.id: c for c in claims}
  assert by_id["Z4a"].effect.mean == pytest.approx(2.0, abs=0.2)  # 3 pt K-FAC gain − 1 pt SGD gain (0.1 pt noise)
  assert by_id["Z4c"].effect.mean == pytest.approx(math.log(2.0), abs=0.02)
  assert by_id["Z5a"].effect.mean == pytest.approx(math.log(300.0), abs=0.05)
  assert by_id["Z5c"].effect.mean == pytest.approx(0.39, abs=0.01)
  assert by_id["Z6a"].effect.mean == pytest.approx(2.5, abs=0.05)
  assert "kfacf_decoupled_bn" in table
  assert all(c.compared and c.reason == "" for c in claims)
  assert [h.name for h in by_id["Z6a"].compared] == ["kfacf_decoupled_plain", "kfacf_l2_plain"]


def test_z4c_note_counts_the_probes_the_code_uses(monkeypatch):
  results, config = _paper_world()
  note = lambda: next(c for c in study.analyze(results, config)[0] if c.id == "Z4c").notes
  assert f"{study.JACOBIAN_PROBES} Gaussian probes" in note()
  monkeypatch.setattr(study, "JACOBIAN_PROBES", 7)
  monkeypatch.setattr(study, "JACOBIAN_EXAMPLES", 48)
  assert "48 test inputs, inference mode, 7 Gaussian probes" in note()
  assert "(7 Gaussian probes)" in study.setting(config) and "E‖J_x‖²_F on 48 test inputs" in study.setting(config)


@pytest.mark.parametrize("quick", [True, False])
def test_setting_lists_exactly_the_trained_arms(quick):
  config = study.make_config(quick)
  trained = {study.optimizer_of(config.arm_optim(a)) for a in config.arms}
  text = study.STUDY.setting_text(config)
  arms = text.split("Arms: {", 1)[1].split("}", 1)[0]           # the optimizer factor of the arm product
  settings = text.split("decoupled arm (", 1)[1].split(")", 1)[0]  # η and λ per optimizer
  for optimizer in study.OPTIMIZERS:
    pretty = study.PRETTY[optimizer]
    listed = [part.split(" (")[0] for part in arms.split(", ")]
    assert (pretty in listed) == (optimizer in trained), (optimizer, arms)
    assert (f"{pretty}: η=" in settings) == (optimizer in trained), (optimizer, settings)
  for optimizer in trained:
    s = study.SETTINGS[optimizer]
    assert f"{study.PRETTY[optimizer]}: η={s['learning_rate']:g}, λ={s['weight_decay']:g}" in settings
  assert (f"batch {config.train.batch_size}" in text) and f"inverses every {study.INVERSE_EVERY} steps" in text


def test_analysis_rejects_the_claims_in_a_world_where_the_paper_is_wrong():
  def flat_accuracy(optimizer, decay, net):  # decay helps every optimizer by 1 pt, L2 as much as decoupled
    return 0.60 + (0.0 if decay == "none" else 0.01)

  results, config = _world(accuracy=flat_accuracy, jacobian=lambda o, d: 10.0,
                           gamma_growth=lambda o, d: 1.5, final_cosine=lambda o, d: 0.5)
  verdicts = {c.id: c.verdict for c in study.analyze(results, config)[0]}
  assert all(v == "not reproduced" for v in verdicts.values()), verdicts


def test_analysis_is_inconclusive_when_seeds_disagree():
  results, config = _paper_world()
  # Half the seeds see K-FAC's decoupled gain reversed: the interval straddles zero.
  for net in study.NETS:
    r = results[study.arm_name("kfacf", "decoupled", net)]
    r.series["test_accuracy"][::2, -1] -= 0.06
  verdicts = {c.id: c.verdict for c in study.analyze(results, config)[0]}
  assert verdicts["Z4a"] == "inconclusive" and verdicts["Z6a"] == "inconclusive"
  assert verdicts["Z4b"] == "reproduced"


def test_each_optimizer_and_network_is_one_program_whose_members_carry_their_decay_placement():
  from experiments.train import make_groups
  config = study.make_config(True)
  groups = make_groups(config, seeds=[0])
  assert len(groups) == len(study.QUICK_OPTIMIZERS) * len(study.NETS)
  for group in groups:
    assert group.optim.decay == "l2+decoupled"
    assert len(group.members) == len(study.DECAYS)
    for member in group.members:
      optimizer, decay, net = member.arm.split("_")
      assert study.optimizer_of(group.optim) == optimizer
      assert group.model.norm == ("batch_noaffine" if net == "bn" else None), member.arm
      assert group.model.registered_layers
      lam = study.SETTINGS[optimizer]["weight_decay"]
      assert member.hp["weight_decay"] == (lam if decay == "l2" else 0.0), member.arm
      assert member.hp["decoupled_weight_decay"] == (lam if decay == "decoupled" else 0.0), member.arm


def _tiny_model(norm):
  from experiments import models
  from wd_optax import kfac
  return models.build("mlp", num_classes=3, norm=norm, in_features=5, hidden=[4], linear_cls=kfac.Linear,
                      rngs=nnx.Rngs(0))


@pytest.mark.parametrize("mode", ["fisher", "ggn"])
def test_kfac_family_takes_loss_gradients_and_curvature_from_one_pass_of_the_members_model(mode):
  """The family's value_and_grad (what the harness's step calls with the member's model) against plain
  autodiff of the loss for the gradients, and against value_grad_and_curvature called directly."""
  from experiments import optimizers
  from experiments.train import step as step_lib
  from wd_optax import kfac
  module = _tiny_model("batch_noaffine")
  graphdef, params, rest = nnx.split(module, nnx.Param, ...)
  params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
  x = jax.random.normal(jax.random.key(1), (16, 5))
  y = jnp.arange(16) % 3
  key = jax.random.key(2)

  def module_loss(m, batch):
    logits = m(batch[0], train=True)
    return step_lib.cross_entropy(logits, batch[1]), logits

  model = step_lib.MemberModel(module=lambda p: nnx.merge(graphdef, p, rest),
                               state=lambda m: nnx.to_pure_dict(nnx.split(m, nnx.Param, ...)[2]), loss=module_loss)

  def loss_fn(p):
    m = nnx.merge(graphdef, p, rest)
    loss, logits = module_loss(m, (x, y))
    return loss, (logits, model.state(m))

  spec = optimizers.KFAC(curvature=mode).bind(module)
  assert sorted(spec.layers) == ["classifier", "layers/0"]
  result = jax.jit(lambda p: spec.value_and_grad(loss_fn, p, (x, y), key, model))(params)
  (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  assert_close_scaled(result.loss, loss, c=100)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    got = jax.tree_util.tree_leaves_with_path(result.grads)
    assert_close_scaled(dict(got)[path], g, c=100, scale="tree")
  _, _, direct = kfac.value_grad_and_curvature(module_loss, nnx.merge(graphdef, params, rest), (x, y), mode=mode,
                                               key=key)
  for layer in spec.layers:
    assert_close_scaled(result.extra["curvature"][layer].a, direct[layer].a, c=100, scale="tree")
    assert_close_scaled(result.extra["curvature"][layer].s, direct[layer].s, c=100, scale="tree")
  # The diagnostics it logs are the library's effective damping of its own state after an update.
  tx = spec.build({"learning_rate": 0.1, "weight_decay": 0.0, "decoupled_weight_decay": 0.0,
                   "peak_learning_rate": 0.1})
  _, state = tx.update(result.grads, tx.init(params), params, **result.extra)
  logged = spec.diagnostics(state, params)
  for layer, d in kfac.effective_damping(state, params).items():
    assert float(logged[f"gamma_eff/{layer}"]) == float(d.effective_damping)
    assert float(logged[f"cos/{layer}"]) == float(d.cosine)
  assert 0.0 < float(logged["cos/layers/0"]) <= 1.0 + 1e-6


@pytest.mark.parametrize("decay", ["l2", "decoupled"])
def test_l2_plus_decoupled_with_one_rate_zero_is_the_librarys_kfac_with_that_placement(decay):
  from experiments import optimizers
  from wd_optax import kfac
  module = _tiny_model(None)
  params = nnx.to_pure_dict(nnx.split(module, nnx.Param, ...)[1])
  spec = optimizers.KFAC(decay="l2+decoupled", damping=1e-2, inverse_every=1).bind(module)
  lam = 0.3
  traced = {"learning_rate": jnp.float32(0.1), "weight_decay": jnp.float32(lam if decay == "l2" else 0.0),
            "decoupled_weight_decay": jnp.float32(lam if decay == "decoupled" else 0.0),
            "peak_learning_rate": jnp.float32(0.1)}
  reference = kfac.kfac(0.1, damping=1e-2, weight_decay=lam, decay=decay, momentum=0.9, ema=0.95, inverse_every=1,
                        layers=list(spec.layers))
  x = jax.random.normal(jax.random.key(3), (16, 5))
  y = jnp.arange(16) % 3

  def loss(m, batch):
    logits = m(batch[0], train=True)
    return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, batch[1][:, None], 1)[:, 0]), logits

  _, grads, curvature = kfac.value_grad_and_curvature(loss, module, (x, y), mode="fisher", key=jax.random.key(4))
  grads = nnx.to_pure_dict(grads)
  outs = []
  for tx in (spec.build(traced), reference):
    state, p = tx.init(params), params
    for _ in range(2):
      updates, state = tx.update(grads, state, p, curvature=curvature)
      p = jax.tree.map(lambda a, u: a + u, p, updates)
    outs.append(p)
  for got, want in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(outs[1])):
    assert_close_scaled(got, want, c=100, scale="tree")


@pytest.mark.slow  # ~30-80 s (two programs to compile); its pieces are covered by the wrapper/analysis tests
def test_tiny_end_to_end_run(tmp_path):
  from experiments.runner import run_study
  section = run_study("three_mechanisms", str(tmp_path), quick=True, seeds=2,
                      overrides=["train.steps=20", "train.log_every=10", "train.eval_every=20",
                                 'model.kwargs={"hidden": [8, 8]}'], progress=False, log=lambda _: None)
  assert {c.id for c in section.claims} >= {"Z4a", "Z5a", "Z6a"}
  assert all(np.isfinite(c.effect.mean) for c in section.claims)
  assert (tmp_path / "REPORT.md").exists()
