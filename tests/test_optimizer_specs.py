"""The per-optimizer specs of the harness (``experiments.optimizers``) against independent references.

* each family's ``build`` takes the same steps as the optax / wd_optax transform written out by hand with the
  same arguments (a few steps, with the harness's per-step rebuild from ``rates_at``);
* ``static_key``: arms that differ only in traced fields share one program, any static field splits them;
* an arm that switches family keeps the fields both families have; an unknown field is one error listing the
  family's fields; a sweep of a static field is refused naming the traced ones;
* a config with every family round-trips through ``config.json``; ``--set optim.name=...`` and
  ``--set arms.A.model.norm=...`` reach the spec and the arm's model;
* ``decay="l2+decoupled"`` with one of its two rates 0 is ``decay="l2"`` / ``decay="decoupled"`` (sgd, adam), and
  ``decoupled_weight_decay`` with another decay is refused.
"""

from __future__ import annotations

import dataclasses
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import wd_optax
from _tol import assert_close_scaled
from experiments import config as config_lib
from experiments import optimizers
from experiments.train import make_groups

STEPS, TOTAL = 3, 10


def _params():
  rng = np.random.default_rng(0)
  f = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
  return {"layers": {"0": {"kernel": f(4, 3), "bias": f(3)}}, "classifier": {"kernel": f(3, 2), "bias": f(2)}}


def _grads():
  rng = np.random.default_rng(1)
  return [jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), jnp.float32), _params())
          for _ in range(STEPS)]


KERNELS = {"layers": {"0": {"kernel": True, "bias": False}}, "classifier": {"kernel": True, "bias": False}}


def _harness_steps(spec, params, grads, extra=None, jit=False):
  """What the harness's step does: the traced values at each step through ``rates_at``, ``build`` each step
  (``jit``: as one program, for K-FAC, whose inverses dispatched op by op take a minute on 2 cores; the
  first-order families are quicker eager than compiled)."""
  def run(params, grads, extra):
    hp = {k: jnp.float32(getattr(spec, k)) for k in spec.TRACED}
    state = spec.build(spec.rates_at(hp, jnp.int32(0), TOTAL)).init(params)
    for t, g in enumerate(grads):
      tx = spec.build(spec.rates_at(hp, jnp.int32(t), TOTAL))
      updates, state = tx.update(g, state, params, **extra)
      params = optax.apply_updates(params, updates)
    return params
  return (jax.jit(run) if jit else run)(params, grads, extra or {})


def _reference_steps(tx, params, grads, extra=None, jit=False):
  def run(params, grads, extra):
    state = tx.init(params)
    for g in grads:
      updates, state = tx.update(g, state, params, **extra)
      params = optax.apply_updates(params, updates)
    return params
  return (jax.jit(run) if jit else run)(params, grads, extra or {})


def _assert_same_steps(spec, reference, c=16):
  params, grads = _params(), _grads()
  got, want = _harness_steps(spec, params, grads), _reference_steps(reference, params, grads)
  jax.tree.map(lambda a, b: assert_close_scaled(a, b, c=c), got, want)
  moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), got, params)
  assert all(v > 1e-3 for v in jax.tree.leaves(moved))   # every leaf moved: the comparison says something


LR, WD, WD2, MU = 0.1, 0.05, 0.03, 0.9

BUILD_CASES = {
    # Coupled L2 enters the momentum buffer: momentum of (g + λw), on the kernels only.
    "sgd_l2_kernels": (optimizers.SGD(learning_rate=LR, momentum=MU, weight_decay=WD, decay="l2",
                                      decay_mask="kernels"),
                       optax.chain(optax.add_decayed_weights(WD, mask=KERNELS), optax.sgd(LR, momentum=MU))),
    # Decoupled: w ← w − η·m − ηλw.
    "sgd_decoupled": (optimizers.SGD(learning_rate=LR, momentum=MU, weight_decay=WD, decay="decoupled"),
                      optax.chain(optax.trace(MU), optax.add_decayed_weights(WD), optax.scale(-LR))),
    "sgd_nesterov_l2": (optimizers.SGD(learning_rate=LR, momentum=MU, nesterov=True, weight_decay=WD),
                        optax.chain(optax.add_decayed_weights(WD), optax.sgd(LR, momentum=MU, nesterov=True))),
    "adam_l2": (optimizers.Adam(learning_rate=1e-2, b1=0.8, b2=0.99, eps=1e-6, weight_decay=WD, decay="l2"),
                optax.chain(optax.add_decayed_weights(WD), optax.adam(1e-2, b1=0.8, b2=0.99, eps=1e-6))),
    "adamw": (optimizers.Adam(learning_rate=1e-2, b1=0.8, b2=0.99, eps=1e-6, weight_decay=WD, decay="decoupled"),
              optax.adamw(1e-2, b1=0.8, b2=0.99, eps=1e-6, weight_decay=WD)),
    # Switches (1, 1, 0): Adam on g + λw; then decoupled λ' after the step.
    "adam_buffers_l2_then_decoupled": (
        optimizers.AdamBuffers(learning_rate=1e-2, weight_decay=WD, l2_in_first_moment=True,
                               l2_in_second_moment=True, l2_preconditioned=False, decay="decoupled",
                               decoupled_weight_decay=WD2),
        optax.chain(optax.add_decayed_weights(WD), optax.scale_by_adam(), optax.add_decayed_weights(WD2),
                    optax.scale(-1e-2))),
    # Switches (0, 0, 0): λ enters nowhere; with decoupled λ' it is AdamW.
    "adam_buffers_off_is_adamw": (
        optimizers.AdamBuffers(learning_rate=1e-2, weight_decay=WD, l2_in_first_moment=False,
                               l2_in_second_moment=False, l2_preconditioned=False, decay="decoupled",
                               decoupled_weight_decay=WD2),
        optax.adamw(1e-2, weight_decay=WD2)),
    # FixNorm with coupled L2 on the kernels in front; the regex masks are these explicit trees.
    "fixnorm_l2": (optimizers.FixNorm(learning_rate=LR, momentum=MU, classifier_norm=2.0, weight_decay=WD,
                                      decay_mask="kernels"),
                   optax.chain(optax.add_decayed_weights(WD, mask=KERNELS),
                               wd_optax.fixnorm(LR, classifier_norm=2.0, momentum=MU,
                                                classifier_mask={"layers": {"0": {"kernel": False, "bias": False}},
                                                                 "classifier": {"kernel": True, "bias": False}},
                                                scale_invariant_mask={"layers": {"0": {"kernel": True,
                                                                                       "bias": False}},
                                                                      "classifier": {"kernel": False,
                                                                                     "bias": False}}))),
    # The weight-decay zoo's families (decay_zoo): each is the library's factory called directly.
    "adam_cautious": (optimizers.Adam(learning_rate=1e-2, weight_decay=WD, decay="decoupled", cautious=True,
                                      decay_mask="kernels"),
                      optax.chain(optax.scale_by_adam(), optax.scale_by_learning_rate(1e-2),
                                  wd_optax.decoupled_decay(WD, learning_rate=1e-2, mask=KERNELS, cautious=True))),
    "sgd_cautious": (optimizers.SGD(learning_rate=LR, momentum=MU, weight_decay=WD, decay="decoupled", cautious=True),
                     optax.chain(optax.trace(MU), optax.scale_by_learning_rate(LR),
                                 wd_optax.decoupled_decay(WD, learning_rate=LR, cautious=True))),
    "adamp": (optimizers.AdamP(learning_rate=1e-2, weight_decay=WD, delta=0.5, wd_ratio=0.2, decay_mask="kernels"),
              wd_optax.adamp(1e-2, weight_decay=WD, delta=0.5, wd_ratio=0.2, mask=KERNELS)),
    "sgdp": (optimizers.SGDP(learning_rate=LR, momentum=MU, weight_decay=WD, delta=0.5),
             wd_optax.sgdp(LR, momentum=MU, weight_decay=WD, delta=0.5)),
    "adams": (optimizers.AdamS(learning_rate=1e-2, b1=0.8, weight_decay=WD, decay_mask="kernels"),
              wd_optax.adams(1e-2, b1=0.8, weight_decay=WD, mask=KERNELS)),
    "sgds": (optimizers.SGDS(learning_rate=LR, momentum=MU, weight_decay=WD),
             wd_optax.sgds(LR, momentum=MU, weight_decay=WD)),
    "rotational_adamw": (optimizers.RotationalAdamW(learning_rate=1e-2, weight_decay=WD, update_norm_decay=0.5),
                         wd_optax.rotational_adamw(1e-2, WD, update_norm_decay=0.5)),
    "rotational_sgd": (optimizers.RotationalSGD(learning_rate=LR, weight_decay=WD, momentum=MU, per_channel=False),
                       wd_optax.rotational_sgd(LR, WD, momentum=MU, per_channel=False)),
    "adamh": (optimizers.AdamH(learning_rate=5e-2, b2=0.99), wd_optax.adamh(5e-2, b2=0.99)),
}


@pytest.mark.parametrize("case", sorted(BUILD_CASES))
def test_build_takes_the_steps_of_the_transform_written_by_hand(case):
  spec, reference = BUILD_CASES[case]
  config_lib.validate(config_lib.ExperimentConfig(optim=spec))
  _assert_same_steps(spec, reference)


def test_fixnorm_build_holds_the_classifier_at_its_norm():
  spec = BUILD_CASES["fixnorm_l2"][0]
  params = _params()
  new = _harness_steps(spec, params, _grads())
  np.testing.assert_allclose(float(jnp.linalg.norm(new["classifier"]["kernel"])), 2.0, rtol=1e-5)
  np.testing.assert_allclose(float(jnp.linalg.norm(new["layers"]["0"]["kernel"])),
                             float(jnp.linalg.norm(params["layers"]["0"]["kernel"])), rtol=1e-5)


def test_kfac_build_binds_the_models_layers_and_takes_the_steps_of_wd_optax_kfac():
  from flax import nnx
  from wd_optax import kfac

  class Net(nnx.Module):
    def __init__(self, rngs):
      self.hidden = kfac.Linear(4, 3, rngs=rngs)
      self.classifier = kfac.Linear(3, 2, rngs=rngs)

    def __call__(self, x):
      return self.classifier(jnp.tanh(self.hidden(x)))

  model = Net(nnx.Rngs(0))
  rng = np.random.default_rng(0)
  batch = (jnp.asarray(rng.standard_normal((16, 4)), jnp.float32), jnp.asarray(rng.integers(0, 2, 16), jnp.int32))

  def loss(m, b):
    logits = m(b[0])
    return optax.softmax_cross_entropy_with_integer_labels(logits, b[1]).mean(), logits

  _, grads, curvature = nnx.jit(lambda m, b: kfac.value_grad_and_curvature(loss, m, b, mode="empirical"))(
      model, batch)
  params, grads = nnx.to_pure_dict(nnx.state(model, nnx.Param)), nnx.to_pure_dict(grads)

  spec = optimizers.KFAC(learning_rate=0.05, damping=1e-2, weight_decay=WD, decay="decoupled", momentum=MU,
                         kl_clip=0.0, inverse_every=1).bind(model)
  assert sorted(spec.layers) == ["classifier", "hidden"]
  reference = kfac.kfac(0.05, damping=1e-2, weight_decay=WD, decay="decoupled", momentum=MU, kl_clip=None,
                        ema=0.95, inverse_every=1, inverse="cholesky", layers=list(spec.layers))
  extra = {"curvature": curvature}
  got = _harness_steps(spec, params, [grads] * STEPS, extra, jit=True)
  want = _reference_steps(reference, params, [grads] * STEPS, extra, jit=True)
  jax.tree.map(lambda a, b: assert_close_scaled(a, b, c=64), got, want)   # damped float32 inverses

  plain = nnx.Linear(4, 2, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"needs registered layers .* set model\.registered_layers=true"):
    optimizers.KFAC().bind(plain)


# ------------------------------------------------------------------- l2+decoupled: both placements, one program


@pytest.mark.parametrize("family", [optimizers.SGD, optimizers.Adam])
@pytest.mark.parametrize("placement", ["l2", "decoupled"])
def test_l2_and_decoupled_with_one_rate_zero_is_that_placement(family, placement):
  lr = 0.1 if family is optimizers.SGD else 1e-2
  mixed = family(learning_rate=lr, decay="l2+decoupled", weight_decay=WD if placement == "l2" else 0.0,
                 decoupled_weight_decay=WD if placement == "decoupled" else 0.0)
  single = family(learning_rate=lr, decay=placement, weight_decay=WD)
  for spec in (mixed, single):
    config_lib.validate(config_lib.ExperimentConfig(optim=spec))
  params, grads = _params(), _grads()
  got, want = _harness_steps(mixed, params, grads), _harness_steps(single, params, grads)
  jax.tree.map(lambda a, b: assert_close_scaled(a, b, c=8), got, want)
  # ... and the three decay arms of one optimizer (none, l2, decoupled) are one program.
  none = dataclasses.replace(mixed, weight_decay=0.0, decoupled_weight_decay=0.0)
  other = dataclasses.replace(mixed, weight_decay=mixed.decoupled_weight_decay,
                              decoupled_weight_decay=mixed.weight_decay)
  assert mixed.static_key() == none.static_key() == other.static_key()


@pytest.mark.parametrize("family,other", [(optimizers.SGD, "l2"), (optimizers.Adam, "l2"), (optimizers.KFAC, "l2"),
                                          (optimizers.AdamBuffers, "l2")])
def test_decoupled_weight_decay_with_another_decay_is_refused(family, other):
  needs = "decoupled" if family is optimizers.AdamBuffers else "l2+decoupled"
  config = config_lib.ExperimentConfig(optim=family(decay=other, decoupled_weight_decay=0.1))
  expected = re.escape(f"decoupled_weight_decay (0.1) is read only with decay={needs!r}; optim.decay is 'l2'.")
  with pytest.raises(ValueError, match=rf"^optim\.{expected}$"):
    config_lib.validate(config)
  config = config_lib.ExperimentConfig(optim=family(decay=other), arms=[
      config_lib.Arm("a", {"decoupled_weight_decay": 0.1})])
  with pytest.raises(ValueError, match=rf"^arms\.a\.{expected}$"):
    config_lib.validate(config)


def test_a_swept_decoupled_weight_decay_with_another_decay_is_refused():
  config = config_lib.ExperimentConfig(optim=optimizers.SGD(decay="l2"), arms=[
      config_lib.Arm("a", sweep={"decoupled_weight_decay": [0.0, 0.1]})])
  with pytest.raises(ValueError, match=r"^arms\.a\.decoupled_weight_decay \(0\.1\) is read only with "
                                       r"decay='l2\+decoupled'"):
    config_lib.validate(config)


# ------------------------------------------------------------------- static vs traced fields


def _another_value(spec, field):
  value = getattr(spec, field.name)
  if "choices" in field.metadata:
    return next(c for c in field.metadata["choices"] if c != value)
  if field.metadata.get("mask"):
    return "none" if value != "none" else "all"
  if isinstance(value, bool):
    return not value
  if isinstance(value, int):
    return value + 1
  if isinstance(value, float):
    return value / 2 + 0.01
  assert value is None, (spec.NAME, field.name, value)
  return ["hidden"]


@pytest.mark.parametrize("name", sorted(optimizers.FAMILIES))
def test_static_key_is_shared_across_traced_fields_and_split_by_every_static_one(name):
  spec = optimizers.FAMILIES[name]()
  assert set(spec.TRACED) <= set(spec.field_names())
  for field in dataclasses.fields(spec):
    changed = dataclasses.replace(spec, **{field.name: _another_value(spec, field)})
    if field.name in spec.TRACED:
      assert changed.static_key() == spec.static_key(), field.name
    else:
      assert changed.static_key() != spec.static_key(), field.name
  assert optimizers.Adam().static_key() != optimizers.SGD().static_key()


def test_arms_differing_only_in_traced_fields_train_as_one_program():
  config = config_lib.ExperimentConfig(
      data=config_lib.DataConfig(name="digits"), optim=optimizers.SGD(learning_rate=0.1, weight_decay=1e-3),
      seeds=1, arms=[config_lib.Arm("base"), config_lib.Arm("late", {"decay_start": 0.5, "learning_rate": 0.2}),
                     config_lib.Arm("swept", sweep={"weight_decay": [0.0, 1e-2]}),
                     config_lib.Arm("slow_momentum", {"momentum": 0.5}),
                     config_lib.Arm("adam", {"name": "adam"}), config_lib.Arm("plain", model={"norm": None})])
  groups = {tuple(sorted({m.arm for m in g.members})) for g in make_groups(config)}
  assert groups == {("base", "late", "swept"), ("slow_momentum",), ("adam",), ("plain",)}


# ------------------------------------------------------------------- arm overrides and their errors


def test_an_arm_switching_family_keeps_the_shared_fields():
  base = optimizers.SGD(learning_rate=0.2, lr_schedule="cosine", warmup_steps=3, weight_decay=1e-3,
                        decay_mask="kernels", decay_start=0.25, decay_end=0.75, momentum=0.8, nesterov=True)
  config = config_lib.ExperimentConfig(optim=base, arms=[config_lib.Arm("fix", {"name": "fixnorm",
                                                                               "classifier_norm": 3.0}),
                                                         config_lib.Arm("adam", {"name": "adam", "b1": 0.5})])
  fix, adam = (config.arm_optim(a) for a in config.arms)
  assert type(fix) is optimizers.FixNorm and type(adam) is optimizers.Adam
  for spec in (fix, adam):
    for key in ("learning_rate", "lr_schedule", "warmup_steps", "weight_decay", "decay_mask", "decay_start",
                "decay_end"):
      assert getattr(spec, key) == getattr(base, key), (spec.name, key)
  assert (fix.momentum, fix.nesterov, fix.classifier_norm) == (0.8, True, 3.0)
  assert (adam.decay, adam.b1, adam.b2) == ("l2", 0.5, optimizers.Adam().b2)   # b2: adam's own default
  config_lib.validate(config)


def test_an_unknown_field_is_one_error_listing_the_familys_fields():
  config = config_lib.ExperimentConfig(arms=[config_lib.Arm("a", {"name": "adam", "momentum": 0.9})])
  fields = sorted(["name"] + optimizers.Adam.field_names())
  with pytest.raises(KeyError) as e:
    config_lib.validate(config)
  assert e.value.args[0] == f"arms.a: optimizer 'adam' has no field 'momentum'; its fields: {fields}."
  with pytest.raises(KeyError) as e:
    config_lib.apply_override(config, "arms.a.nesterov=true")
  assert e.value.args[0] == f"--set arms.a.nesterov: optimizer 'adam' has no field 'nesterov'; its fields: {fields}."
  with pytest.raises(KeyError, match=r"optimizer 'sgd' has no field 'b1'"):
    config_lib.apply_override(config, "optim.b1=0.5")
  with pytest.raises(KeyError) as e:
    optimizers.from_dict({"name": "sgd", "wd": 1.0})
  assert e.value.args[0].startswith("optim: optimizer 'sgd' has no field 'wd'; its fields: ['cautious', 'coupling', ")


def test_a_sweep_of_a_static_field_is_refused_naming_the_traced_fields():
  config = config_lib.ExperimentConfig(arms=[config_lib.Arm("a", sweep={"momentum": [0.5, 0.9]})])
  with pytest.raises(ValueError, match=r"^arms\.a\.sweep: 'momentum' cannot be swept inside one program; the traced "
                                       r"fields of optimizer 'sgd': \('learning_rate', 'weight_decay', "
                                       r"'decay_start', 'decay_end', 'decoupled_weight_decay'\)\.$"):
    config_lib.validate(config)


# ------------------------------------------------------------------- config.json and --set


def test_a_config_with_every_family_round_trips_through_json():
  arms = [config_lib.Arm(name, {"name": name}) for name in optimizers.names()]
  arms.append(config_lib.Arm("masked", {"name": "fixnorm", "classifier": {"include": ["^classifier/"]}},
                             sweep={"classifier_norm": [1.0, 2.0]}, model={"norm": "layer"}))
  for name, cls in optimizers.FAMILIES.items():
    config = config_lib.ExperimentConfig(optim=cls(weight_decay=1e-3, decay_mask={"exclude": ["bias$"]}),
                                         arms=arms)
    text = json.dumps(config_lib.to_dict(config))
    assert json.loads(text)["optim"]["name"] == name
    back = config_lib.from_dict(json.loads(text))
    assert back == config and type(back.optim) is cls
    assert [back.arm_optim(a) for a in back.arms] == [config.arm_optim(a) for a in config.arms]


def test_set_optim_name_switches_the_family_keeping_the_shared_fields():
  config = config_lib.ExperimentConfig(optim=optimizers.SGD(learning_rate=0.2, weight_decay=1e-3, momentum=0.5))
  config_lib.apply_override(config, "optim.name=adam")
  assert config.optim == optimizers.Adam(learning_rate=0.2, weight_decay=1e-3)
  config_lib.apply_override(config, "optim.b1=0.7")
  assert config.optim.b1 == 0.7
  # Every registered family (docs/examples registers "lion" where its test is collected in the same process).
  families = re.escape(repr(tuple(optimizers.FAMILIES)))
  with pytest.raises(ValueError, match=rf"^optim\.name must be one of {families}, got 'lamb'\.$"):
    config_lib.apply_override(config, "optim.name=lamb")


def test_set_an_arms_model_field_reaches_only_that_arm():
  config = config_lib.ExperimentConfig(arms=[config_lib.Arm("A"), config_lib.Arm("B")])
  config_lib.apply_override(config, "arms.A.model.norm=none")
  config_lib.apply_override(config, "arms.B.model.registered_layers=true")
  assert config.arms[0].model == {"norm": None} and config.arms[1].model == {"registered_layers": True}
  assert config.arm_model(config.arms[0]).norm is None
  assert config.arm_model(config.arms[1]) == dataclasses.replace(config.model, registered_layers=True)
  assert config.model == config_lib.ModelConfig()   # the base is untouched
  config_lib.validate(config)
  with pytest.raises(KeyError, match=r"--set arms\.A\.model\.depth: unknown model key 'depth'; known keys: "):
    config_lib.apply_override(config, "arms.A.model.depth=3")


# ------------------------------------------------------------------- the zoo's switches and checks


def test_cautious_switch_reaches_the_transform_and_is_refused_without_decoupled_decay():
  params, grads = _params(), _grads()
  plain = optimizers.Adam(learning_rate=1e-2, weight_decay=0.5, decay="decoupled")
  cautious = dataclasses.replace(plain, cautious=True)
  assert plain.static_key() != cautious.static_key()   # another program
  got, want = _harness_steps(cautious, params, grads), _harness_steps(plain, params, grads)
  assert max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want))) > 1e-4
  for family in (optimizers.SGD, optimizers.Adam):
    with pytest.raises(ValueError, match=r"optim\.cautious is read only with decay='decoupled'.*; optim\.decay is 'l2'"):
      config_lib.validate(config_lib.ExperimentConfig(optim=family(decay="l2", cautious=True)))


def test_adamh_refuses_a_weight_decay_and_sweeps_its_learning_rate_in_one_program():
  with pytest.raises(ValueError, match=r"optim\.weight_decay \(0\.1\) must be 0: adamh"):
    config_lib.validate(config_lib.ExperimentConfig(optim=optimizers.AdamH(weight_decay=0.1)))
  config = config_lib.ExperimentConfig(optim=optimizers.AdamH(), seeds=2, arms=[
      config_lib.Arm("adamh", sweep={"learning_rate": [1e-3, 1e-2]})])
  config_lib.validate(config)
  (group,) = make_groups(config)
  assert len(group.members) == 4


def test_adam_mixed_program_with_only_its_cautious_rate_is_cautious_adamw():
  mixed = optimizers.Adam(learning_rate=1e-2, decay="l2+decoupled", cautious=True, cautious_weight_decay=0.5,
                          decay_mask="kernels")
  config_lib.validate(config_lib.ExperimentConfig(optim=mixed))
  reference = optax.chain(optax.scale_by_adam(), optax.scale_by_learning_rate(1e-2),
                          wd_optax.decoupled_decay(0.5, learning_rate=1e-2, mask=KERNELS, cautious=True))
  _assert_same_steps(mixed, reference)
  # Adam + L2, AdamW, cautious AdamW and no decay: one program.
  others = [dataclasses.replace(mixed, cautious_weight_decay=0.0, **rates)
            for rates in ({"weight_decay": 0.1}, {"decoupled_weight_decay": 0.1}, {})]
  assert len({s.static_key() for s in [mixed] + others}) == 1
  # Without cautious=True the mixed program is the two-rate one of the other studies, unchanged.
  assert dataclasses.replace(mixed, cautious=False, cautious_weight_decay=0.0).static_key() != mixed.static_key()
  with pytest.raises(ValueError, match=r"optim\.cautious_weight_decay \(0\.5\) is read only with "
                                       r"decay='l2\+decoupled' and cautious=true"):
    config_lib.validate(config_lib.ExperimentConfig(optim=optimizers.Adam(decay="decoupled",
                                                                          cautious_weight_decay=0.5)))
