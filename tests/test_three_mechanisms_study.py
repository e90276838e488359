"""The three_mechanisms study: its analysis on synthetic results with known answers, its gated model and
optimizer wrapper, and one tiny end-to-end run."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments import config as config_lib
from experiments.studies import three_mechanisms as study
from experiments.train import optim as optim_lib
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
          series[f"cos_f/{layer}"] = cos
          series[f"cos_g/{layer}"] = cos
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
  trained = {config.arm_optim(a).name for a in config.arms}
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


def test_each_optimizer_is_one_program_whose_members_carry_their_network_and_decay_placement():
  from experiments.train import make_groups
  config = study.make_config(True)
  groups = make_groups(config, seeds=[0])
  assert sorted(g.optim.name for g in groups) == sorted(study.QUICK_OPTIMIZERS)
  for group in groups:
    for member in group.members:
      _, decay, net = member.arm.split("_")
      assert member.hp["batch_norm"] == (1.0 if net == "bn" else 0.0), member.arm
      assert member.hp["decoupled_fraction"] == (1.0 if decay == "decoupled" else 0.0), member.arm
      assert (member.hp["weight_decay"] == 0.0) == (decay == "none"), member.arm
      assert member.hp["decoupled_decay"] == 0.0  # no longer a carrier
    assert len(group.members) == len(study.NETS) * len(study.DECAYS)


def test_gated_model():
  model = study.GatedMLP(5, 3, rngs=nnx.Rngs(0), hidden=(4,))
  x = jax.random.normal(jax.random.key(1), (16, 5))
  plain = model(x, train=True)
  # gate 0: a plain ReLU MLP
  h = nnx.relu(x @ model.layers[0].kernel[...] + model.layers[0].bias[...])
  assert_close_scaled(plain, h @ model.classifier.kernel[...] + model.classifier.bias[...], c=100)
  # gate 1: the hidden kernel is scale-invariant (BN without affine parameters cancels the bias and the scale)
  model.bn_gate[...] = jnp.ones(())
  before = model(x, train=True)
  model.layers[0].kernel[...] = 7.0 * model.layers[0].kernel[...]
  np.testing.assert_allclose(model(x, train=True), before, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("optimizer", ["sgd", "kfacf"])
def test_optimizer_wrapper_sets_the_gate_once_and_routes_the_decay(optimizer):
  config = study.make_config(True)
  config.model.kwargs = {"hidden": [4]}
  model = study._Model(config)
  params = nnx.to_pure_dict(nnx.split(model.build(nnx.Rngs(0)), nnx.Param, ...)[1])
  optim = config_lib.OptimConfig(name=optimizer, momentum=0.9)
  x = jax.random.normal(jax.random.key(2), (32, 40))
  y = jnp.arange(32) % 10
  zeros = jax.tree.map(jnp.zeros_like, params)

  @jax.jit
  def two_steps(hp):
    # The rates as the harness hands them to the hook, from a member's traced fields.
    tx = study.make_tx(model, optim, optim_lib.rates_at(optim, hp, jnp.int32(0), 100))
    state, p, out = tx.init(params), params, []
    for _ in range(2):
      updates, state = tx.update(zeros, state, p, batch=(x, y), key=jax.random.key(3))
      p = jax.tree.map(lambda a, u: a + u, p, updates)
      out.append(p)
    return out

  def run(decay, net, lam, steps=2):
    arm = config_lib.Arm("arm", {"learning_rate": 0.1, "weight_decay": lam, **study.arm_fields(decay, net)})
    arm_optim = config_lib.ExperimentConfig(optim=optim).arm_optim(arm)
    hp = {k: jnp.float32(getattr(arm_optim, k)) for k in config_lib.TRACED_FIELDS}
    return two_steps(hp)[:steps]

  on = run("decoupled", "bn", 0.0)
  assert float(on[0]["bn_gate"]) == 1.0 and float(on[1]["bn_gate"]) == 1.0
  assert float(run("none", "plain", 0.0)[1]["bn_gate"]) == 0.0
  # With zero gradients (zero preconditioned gradient for K-FAC) only the decay moves the weights.
  w0 = params["classifier"]["kernel"]
  decoupled = run("decoupled", "plain", 0.5, steps=1)[0]["classifier"]["kernel"]
  assert_close_scaled(decoupled, (1 - 0.1 * 0.5) * w0, c=100)  # w ← w − ηλw
  if optimizer == "sgd":  # coupled L2 with momentum: first step w ← w − η·λw as well, then momentum differs
    l2 = run("l2", "plain", 0.5)
    assert_close_scaled(l2[0]["classifier"]["kernel"], (1 - 0.1 * 0.5) * w0, c=100)
    # Second step: coupled L2 keeps the first step's decay in the momentum (μ = 0.9), decoupled does not.
    w1 = l2[0]["classifier"]["kernel"]
    assert_close_scaled(l2[1]["classifier"]["kernel"], w1 - 0.1 * (0.9 * 0.5 * w0 + 0.5 * w1), c=100)
    d = run("decoupled", "plain", 0.5)
    assert_close_scaled(d[1]["classifier"]["kernel"], (1 - 0.1 * 0.5) ** 2 * w0, c=100)


@pytest.mark.slow  # ~30-80 s (two programs to compile); its pieces are covered by the wrapper/analysis tests
def test_tiny_end_to_end_run(tmp_path):
  from experiments.cli import run_study
  section = run_study("three_mechanisms", str(tmp_path), quick=True, seeds=2,
                      overrides=["train.steps=20", "train.log_every=10", "train.eval_every=20",
                                 'model.kwargs={"hidden": [8, 8]}'], progress=False, log=lambda _: None)
  assert {c.id for c in section.claims} >= {"Z4a", "Z5a", "Z6a"}
  assert all(np.isfinite(c.effect.mean) for c in section.claims)
  assert (tmp_path / "REPORT.md").exists()


def test_damping_report_matches_effective_damping_of_the_library():
  """γ‖W‖² and cos(U, G) from the study's matmul-only inverses equal wd_optax.kfac.effective_damping after
  one scale_by_kfac update (LAPACK inverses) on the same curvature."""
  from wd_optax import kfac
  config = study.make_config(True)
  config.model.kwargs = {"hidden": [6, 5]}
  model = study._Model(config)
  params = nnx.to_pure_dict(nnx.split(model.build(nnx.Rngs(4)), nnx.Param, ...)[1])
  params["bn_gate"] = jnp.ones(())
  x = jax.random.normal(jax.random.key(5), (64, 40))
  y = jnp.arange(64) % 10

  @jax.jit
  def both(params):
    _, grads, curvature = model.curvature(params, (x, y), jax.random.key(6), "fisher")
    plain = study._strip(params)
    ours = study.damping_report(plain, grads, curvature, model.layers)
    tx = kfac.scale_by_kfac(study.DAMPING, layers=model.layers)
    _, state = tx.update(grads, tx.init(plain), plain, curvature=curvature)
    return ours, kfac.effective_damping(state, plain)

  ours, reference = both(params)
  assert set(reference) == set(model.layers) == {"layers/0", "layers/1", "classifier"}
  for layer, d in reference.items():
    np.testing.assert_allclose(ours[f"gamma_eff/{layer}"], d.effective_damping, rtol=1e-5)
    np.testing.assert_allclose(ours[f"cos/{layer}"], d.cosine, rtol=1e-3, atol=1e-4)
