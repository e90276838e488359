"""The token-sequence setting: the decoder (shapes, causality, K-FAC registration), the modular-arithmetic data
(determinism, labels by an independent computation, disjoint splits) and the ``transformer`` study's analysis on
synthetic results."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from experiments import data, models, report
from experiments import optimizers
from experiments.studies import transformer as study
from experiments.train import make_groups
from experiments.train.metrics import ArmResult
import wd_optax
from _tol import assert_close_scaled
from wd_optax import kfac
from _tol import assert_close_scaled

VOCAB, SEQ, CLASSES = 11, 4, 7


def _model(seed=0, **kwargs):
  kwargs = {"dim": 8, "heads": 2, "depth": 2, **kwargs}
  return models.build("transformer", num_classes=CLASSES, rngs=nnx.Rngs(seed), norm="layer", vocab_size=VOCAB,
                      seq_len=SEQ, **kwargs)


def _tokens(n=5, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, VOCAB, size=(n, SEQ)), jnp.int32)


# --- the model ------------------------------------------------------------------------------------------------

def test_logits_shape_and_float_ids_are_read_as_tokens():
  model, x = _model(), _tokens()
  logits = model(x, train=True)
  assert logits.shape == (5, CLASSES)
  np.testing.assert_array_equal(model(x.astype(jnp.float32), train=False), model(x, train=False))
  assert model.hidden(x).shape == (5, SEQ, 8)


def test_a_later_token_never_changes_an_earlier_position():
  model, x = _model(), _tokens()
  changed = x.at[:, 2].set((x[:, 2] + 1) % VOCAB)
  before, after = np.asarray(model.hidden(x)), np.asarray(model.hidden(changed))
  np.testing.assert_array_equal(before[:, :2], after[:, :2])  # positions 0, 1 cannot see token 2
  assert np.abs(before[:, 2:] - after[:, 2:]).max() > 1e-4  # positions 2, 3 do


def test_attention_matches_a_hand_written_causal_softmax():
  attn = models.CausalSelfAttention(4, 2, rngs=nnx.Rngs(0))
  x = np.random.default_rng(1).normal(size=(2, 3, 4)).astype(np.float32)
  q, k, v, o = (np.asarray(layer.kernel[...], np.float64) for layer in (attn.query, attn.key, attn.value, attn.out))
  out = np.zeros((2, 3, 4))
  for n in range(2):
    for h in range(2):
      cols = slice(2 * h, 2 * h + 2)
      qh, kh, vh = x[n] @ q[:, cols], x[n] @ k[:, cols], x[n] @ v[:, cols]
      for t in range(3):
        s = qh[t] @ kh[:t + 1].T / np.sqrt(2.0)
        w = np.exp(s - s.max())
        out[n, t, cols] = (w / w.sum()) @ vh[:t + 1]
  np.testing.assert_allclose(attn(jnp.asarray(x)), out @ o, atol=1e-5)


def test_every_dense_layer_is_registered_for_kfac_and_its_gradients_are_the_plain_ones():
  model = _model(depth=1, linear_cls=kfac.Linear)
  assert set(kfac.registered_layers(model)) == {
      "blocks/0/attention/query", "blocks/0/attention/key", "blocks/0/attention/value", "blocks/0/attention/out",
      "blocks/0/mlp_in", "blocks/0/mlp_out", "classifier"}
  batch = {"x": _tokens(6), "y": jnp.asarray(np.arange(6) % CLASSES, jnp.int32)}

  def loss_fn(m, b):
    logits = m(b["x"], train=True)
    return optax.softmax_cross_entropy_with_integer_labels(logits, b["y"]).mean(), logits

  (loss, _), grads, curvature = nnx.jit(lambda m, b: kfac.value_grad_and_curvature(
      loss_fn, m, b, mode="empirical"))(model, batch)
  assert curvature["blocks/0/attention/query"].a.shape == (8, 8)
  assert curvature["blocks/0/mlp_in"].a.shape == (9, 9)  # with the bias' homogeneous coordinate
  assert curvature["classifier"].s.shape == (CLASSES, CLASSES)
  # Independent reference: autodiff of the same loss through the plain model (nnx.Linear layers, same init).
  plain = _model(depth=1)
  ref_loss, ref = nnx.value_and_grad(lambda m: loss_fn(m, batch)[0])(plain)
  assert_close_scaled(loss, ref_loss, c=8)
  flat = lambda state: wd_optax.diagnostics.flatten_by_path(nnx.to_pure_dict(state))
  got, want = flat(grads), flat(ref)
  assert set(got) == set(want)
  for path in want:
    assert_close_scaled(got[path], want[path], c=64, scale=np.abs(want[path]).max())


def test_transformer_rejects_bad_arguments():
  with pytest.raises(ValueError, match="vocab_size=... and seq_len=..."):
    models.build("transformer", num_classes=3, rngs=nnx.Rngs(0), norm="layer")
  with pytest.raises(ValueError, match="norm must be 'layer' or None"):
    models.build("transformer", num_classes=3, rngs=nnx.Rngs(0), norm="batch", vocab_size=5, seq_len=2)
  with pytest.raises(ValueError, match="dim \\(6\\) must be a multiple of heads \\(4\\)"):
    _model(dim=6, heads=4)
  with pytest.raises(ValueError, match="at most seq_len=4 tokens, got 5"):
    _model()(jnp.zeros((1, 5), jnp.int32), train=False)
  with pytest.raises(ValueError, match="expects \\(N, T\\) token ids"):
    _model()(jnp.zeros((1, 4, 1), jnp.int32), train=False)


# --- the data -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,op", [("mod_add", lambda a, b: (a + b) % 97), ("mod_sub", lambda a, b: (a - b) % 97)])
def test_modular_data_labels_tokens_and_disjoint_splits(name, op):
  ds = data.load(name, n_train=3000, seed=3)
  assert ds.x_train.dtype == np.int32 and ds.x_train.shape == (3000, 4) and ds.x_test.shape == (97 * 97 - 3000, 4)
  assert ds.num_classes == data.NUM_CLASSES[name] == 97 and data.vocab_size(name) == 99
  for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
    assert (x[:, 1] == 97).all() and (x[:, 3] == 98).all()
    assert [int(v) for v in y] == [op(int(a), int(b)) for a, _, b, _ in x.tolist()]
  train = {(a, b) for a, _, b, _ in ds.x_train.tolist()}
  test = {(a, b) for a, _, b, _ in ds.x_test.tolist()}
  assert len(train) == 3000 and not train & test and len(train | test) == 97 * 97


def test_modular_split_is_fixed_by_the_seed():
  a, b, c = (data.load("mod_add", n_train=500, n_test=200, seed=s) for s in (1, 1, 2))
  np.testing.assert_array_equal(a.x_train, b.x_train)
  np.testing.assert_array_equal(a.x_test, b.x_test)
  assert not np.array_equal(a.x_train, c.x_train)
  assert data.check("mod_add") == (97 * 97 // 2, 97 * 97 - 97 * 97 // 2)
  assert data.input_shape("mod_sub") == (4,)


def test_modular_data_rejects_impossible_sizes():
  with pytest.raises(ValueError, match="n_test=9000 exceeds the 8409 examples 'mod_add'"):
    data.check("mod_add", n_train=1000, n_test=9000)
  with pytest.raises(ValueError, match="vocab_size is defined for the token tasks"):
    data.vocab_size("digits")


# --- the study's analysis on synthetic results ----------------------------------------------------------------

STEPS = np.arange(50, 550, 50)
SEEDS = 4


def _curve(cross: float | None, final: float, rng) -> np.ndarray:
  """Test accuracy per step: 0.1 until ``cross`` (None: never), then a jump to ``final``."""
  acc = np.full(len(STEPS), 0.1)
  if cross is not None:
    acc[STEPS >= cross] = final
  else:
    acc[-1] = final
  return acc + 0.0005 * rng.standard_normal(len(STEPS))


def _world(spec: dict) -> dict:
  """``spec``: label -> (arm, swept λ or None, step it crosses 95% per seed (None: never), final accuracy)."""
  rng = np.random.default_rng(0)
  results = {}
  for label, (arm, lam, cross, final) in spec.items():
    acc = np.stack([_curve(c, final, rng) for c in cross])
    norm = np.tile(np.linspace(10, 5 if lam else 20, len(STEPS)), (SEEDS, 1))
    series = {"test_accuracy": acc, "train_accuracy": np.ones_like(acc), "train_loss": np.full_like(acc, 0.1),
              "lr": np.full_like(acc, 3e-3), "norm/classifier/kernel": norm, "angle/classifier/kernel": 1e-3 / norm}
    results[label] = ArmResult(label=label, arm=arm, seeds=list(range(SEEDS)),
                               swept={} if lam is None else {"weight_decay": lam}, steps=STEPS, series=series)
  return results


def _sweep(arm, grid, best_cross, best_final, other_final=0.5):
  """An arm whose middle λ generalises (crossing at ``best_cross``), the edges stay at ``other_final``."""
  out = {}
  for i, lam in enumerate(grid):
    middle = i == 1
    out[f"{arm}[weight_decay={lam:g}]"] = (arm, lam, best_cross if middle else [None] * SEEDS,
                                           best_final if middle else other_final)
  return out


def test_transformer_analysis_where_bjorck_is_right():
  config = study.make_config(False)
  config.train.steps = int(STEPS[-1])
  spec = {"none": ("none", None, [None] * SEEDS, 0.5)}
  spec.update(_sweep("adam_l2", study.L2_GRID, [450, 450, 450, 450], 0.96))
  spec.update(_sweep("adamw", study.DECOUPLED_GRID, [150, 200, 150, 200], 1.0))
  spec.update(_sweep("adamw_early", study.DECOUPLED_GRID, [150, 200, 150, 200], 0.998))
  spec.update(_sweep("l2_0_1_1", study.L2_GRID, [200, 200, 150, 200], 0.998))
  spec.update(_sweep("l2_1_0_0", study.L2_GRID, [450, 450, 450, 450], 0.955))
  results = _world(spec)
  claims, table = study.analyze(results, config)
  verdicts = {c.id: c.verdict for c in claims}
  assert verdicts == {"N1": report.REPRODUCED, "N2": report.REPRODUCED, "N3": report.REPRODUCED,
                      "N4": report.REPRODUCED, "N5a": report.REPRODUCED, "N5b": report.REPRODUCED,
                      "N5c": report.REPRODUCED}
  n3 = next(c for c in claims if c.id == "N3")
  # adam_l2 crosses at 450 on every seed, adamw at 150/200: 275 steps on average (paired).
  assert n3.effect.mean == pytest.approx(275.0)
  n1 = next(c for c in claims if c.id == "N1")
  assert n1.effect.mean == pytest.approx(50.0, abs=0.5)
  assert "| adamw | 1 |" in table and "| none | — |" in table


def test_transformer_analysis_censors_runs_that_never_generalise_and_flags_grid_edges():
  config = study.make_config(True)
  config.train.steps = int(STEPS[-1])
  spec = {"none": ("none", None, [None] * SEEDS, 0.3)}
  for arm, grid in (("adam_l2", study.L2_GRID), ("adamw", study.DECOUPLED_GRID),
                    ("adamw_early", study.DECOUPLED_GRID), ("l2_0_1_1", study.L2_GRID)):
    for i, lam in enumerate(grid):
      # Accuracy grows with λ up to the top of the grid: every pick is on its edge.
      spec[f"{arm}[weight_decay={lam:g}]"] = (arm, lam, [None] * SEEDS, 0.3 + 0.1 * i)
  results = _world(spec)
  claims, _ = study.analyze(results, config)
  assert "N5b" not in {c.id for c in claims}  # the quick form has no (1,0,0) arm
  for claim in claims:
    if claim.id != "N1" or claim.edges:
      assert claim.verdict == report.INCONCLUSIVE, claim.id
  assert np.all(study.steps_to_target(results["none"], config.train.steps) == config.train.steps)


def test_matrix_dynamics_forms_adams_effective_learning_rate_from_the_logged_norms():
  results = _world({"none": ("none", None, [None] * SEEDS, 0.5)})
  dyn = study.matrix_dynamics(results["none"])
  assert list(dyn) == ["classifier/kernel"]
  np.testing.assert_allclose(dyn["classifier/kernel"]["eff_lr"],
                             3e-3 / results["none"].series["norm/classifier/kernel"])


def test_quick_config_is_one_program_per_optimizer_structure():
  groups = make_groups(study.make_config(True))
  assert [sorted({m.arm for m in g.members}) for g in groups] == [
      ["adamw", "adamw_early", "none"], ["adam_l2"], ["l2_0_1_1"]]


def test_the_harness_logs_the_angular_update_of_a_matrix_that_is_not_scale_invariant():
  from experiments import config as config_lib
  from experiments.train import step as step_lib
  rng = np.random.default_rng(0)
  old = {"w": jnp.asarray(rng.standard_normal((3, 4)), jnp.float32)}
  new = {"w": old["w"] + 0.1 * jnp.asarray(rng.standard_normal((3, 4)), jnp.float32)}
  spec = step_lib.StepSpec(apply=None, optim=optimizers.Adam(), total_steps=10, batch_size=8,
                           num_examples=8, scale_invariant=frozenset(), measured=frozenset({"w"}))
  metrics = step_lib.diagnose_step(spec, old, new, {"learning_rate": jnp.float32(1e-3),
                                                    "weight_decay": jnp.float32(0.0)})
  a, b = (np.asarray(t["w"], np.float64).ravel() for t in (old, new))
  expected = np.arccos(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
  np.testing.assert_allclose(metrics["angle/w"], expected, rtol=1e-3)
  assert "eff_lr/w" not in metrics  # η_eff stays defined for scale-invariant leaves only
