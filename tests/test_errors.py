"""Bad input gets an error that names the argument or the parameter path."""

import math

import jax.numpy as jnp
import optax
import pytest

import wd_optax

PARAMS = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}
GRADS = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}

WEIGHT_DECAY_FACTORIES = {
    "add_l2": lambda wd: wd_optax.add_l2(wd),
    "decoupled_decay": lambda wd: wd_optax.decoupled_decay(wd, learning_rate=0.1),
    "scale_by_adam_l2": lambda wd: wd_optax.scale_by_adam_l2(wd),
    "sgd": lambda wd: wd_optax.sgd(0.1, weight_decay=wd),
    "adam": lambda wd: wd_optax.adam(0.1, weight_decay=wd),
}


@pytest.mark.parametrize("name", WEIGHT_DECAY_FACTORIES)
@pytest.mark.parametrize("bad", [-1e-3, math.nan, math.inf, jnp.asarray(-1.0)], ids=["negative", "nan", "inf", "array"])
def test_bad_weight_decay_names_the_argument(name, bad):
  with pytest.raises(ValueError, match="weight_decay"):
    WEIGHT_DECAY_FACTORIES[name](bad)


def test_non_numeric_weight_decay_is_a_type_error():
  with pytest.raises(TypeError, match="weight_decay"):
    wd_optax.add_l2("0.1")


def test_unknown_names():
  with pytest.raises(ValueError, match=r"decay must be one of \('l2', 'decoupled'\), got 'adamw'"):
    wd_optax.sgd(0.1, decay="adamw")
  with pytest.raises(ValueError, match="decay must be one of"):
    wd_optax.adam(0.1, decay="L2")
  with pytest.raises(ValueError, match="coupling must be one of"):
    wd_optax.decoupled_decay(0.1, coupling="peak", learning_rate=0.1)
  with pytest.raises(ValueError, match="coupling must be one of"):
    wd_optax.adam(0.1, coupling="lr_peak")


def test_coupling_needs_what_it_reads():
  with pytest.raises(ValueError, match="needs learning_rate"):
    wd_optax.decoupled_decay(0.1, coupling="lr")
  schedule = optax.cosine_decay_schedule(0.1, 100)
  for coupling in ("schedule", "corrected"):
    with pytest.raises(ValueError, match="peak_learning_rate"):
      wd_optax.decoupled_decay(0.1, coupling=coupling, learning_rate=schedule)
    with pytest.raises(ValueError, match="peak_learning_rate"):
      wd_optax.adam(schedule, weight_decay=0.1, coupling=coupling)
  with pytest.raises(ValueError, match="must be > 0"):
    wd_optax.decoupled_decay(0.1, coupling="schedule", learning_rate=0.0)
  with pytest.raises(ValueError, match="peak_learning_rate must be > 0"):
    wd_optax.decoupled_decay(0.1, coupling="schedule", learning_rate=schedule, peak_learning_rate=0.0)
  # "independent" reads no learning rate.
  wd_optax.decoupled_decay(0.1, coupling="independent")


def test_coupling_with_l2_is_an_error_not_silently_ignored():
  with pytest.raises(ValueError, match="only apply to decay='decoupled'"):
    wd_optax.sgd(0.1, weight_decay=0.1, decay="l2", coupling="independent")
  with pytest.raises(ValueError, match="only apply to decay='decoupled'"):
    wd_optax.adam(0.1, weight_decay=0.1, decay="l2", peak_learning_rate=0.1)


@pytest.mark.parametrize("factory", [
    lambda m: wd_optax.add_l2(0.1, mask=m),
    lambda m: wd_optax.decoupled_decay(0.1, learning_rate=0.1, mask=m),
    lambda m: wd_optax.scale_by_adam_l2(0.1, mask=m),
    lambda m: wd_optax.sgd(0.1, weight_decay=0.1, mask=m),
    lambda m: wd_optax.adam(0.1, weight_decay=0.1, decay="l2", mask=m),
], ids=["add_l2", "decoupled_decay", "scale_by_adam_l2", "sgd", "adam"])
def test_mismatched_mask_names_the_leaf_at_init(factory):
  bad_mask = {"dense": {"kernel": True}, "head": {"kernel": True}}
  with pytest.raises(ValueError, match="'dense/bias' has no entry"):
    factory(bad_mask).init(PARAMS)
  with pytest.raises(ValueError, match="'\\^head/' matches no parameter"):
    factory(wd_optax.masks.include("^head/")).init(PARAMS)


@pytest.mark.parametrize("tx,name", [
    (wd_optax.add_l2(0.1), "add_l2"),
    (wd_optax.decoupled_decay(0.1, learning_rate=0.1), "decoupled_decay"),
    (wd_optax.scale_by_adam_l2(0.1), "scale_by_adam_l2"),
])
def test_missing_params_is_named(tx, name):
  with pytest.raises(ValueError, match=f"{name} needs the current parameters"):
    tx.update(GRADS, tx.init(PARAMS))


def test_bad_adam_and_momentum_constants():
  with pytest.raises(ValueError, match="b1"):
    wd_optax.scale_by_adam_l2(0.1, b1=1.0)
  with pytest.raises(ValueError, match="momentum"):
    wd_optax.sgd(0.1, momentum=1.5)
  with pytest.raises(ValueError, match="learning_rate"):
    wd_optax.sgd(-0.1)


# --- experiment configs: experiments.config.validate names the key that holds a bad value -------------------

def _fixnorm_config():
  from experiments import studies
  return studies.get("fixnorm").make_config(True)


def _arm(config, name):
  return next(a for a in config.arms if a.name == name)


def _set(config, **fields):
  """The base optimizer spec (frozen) with ``fields`` replaced, as ``--set optim.FIELD=...`` would."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  config.optim = dataclasses.replace(config.optim, **fields)


@pytest.mark.parametrize("mutate,pattern", [
    (lambda c: _set(c, learning_rate=-1.0),
     r"^optim\.learning_rate must be a finite number >= 0, got -1\.0"),
    (lambda c: _set(c, weight_decay=-1.0), r"^optim\.weight_decay must be a finite number >= 0, got -1\.0"),
    (lambda c: _arm(c, "sgd").sweep.__setitem__("weight_decay", [1e-3, -1e-3]),
     r"^arms\.sgd\.sweep\.weight_decay must be a finite number >= 0, got -0\.001"),
    (lambda c: _arm(c, "sgd").sweep.__setitem__("learning_rate", [0.1, math.nan]),
     r"^arms\.sgd\.sweep\.learning_rate must be a finite number >= 0, got nan"),
    (lambda c: _arm(c, "fixnorm_decay").optim.__setitem__("weight_decay", math.inf),
     r"^arms\.fixnorm_decay\.weight_decay must be a finite number >= 0, got inf"),
    (lambda c: _set(c, decoupled_weight_decay=-0.1),
     r"^optim\.decoupled_weight_decay must be a finite number >= 0"),
    (lambda c: _set(c, decoupled_weight_decay=0.1),   # with decay="l2" it would be ignored
     r"^optim\.decoupled_weight_decay \(0\.1\) is read only with decay='l2\+decoupled'; optim\.decay is 'l2'"),
    (lambda c: _arm(c, "sgd").optim.update(name="adam", eps=0.0), r"^arms\.sgd\.eps must be a finite number > 0, "
                                                                  r"got 0\.0"),
    (lambda c: _arm(c, "sgd").optim.update(name="adam", b2=1.0), r"^arms\.sgd\.b2 must be a number in \[0, 1\), "
                                                                 r"got 1\.0"),
    (lambda c: _arm(c, "fixnorm_c0p5").sweep.__setitem__("momentum", [0.0, 0.9]),
     r"^arms\.fixnorm_c0p5\.sweep: 'momentum' cannot be swept inside one program; the traced fields of optimizer "
     r"'fixnorm': \('learning_rate', 'weight_decay', 'decay_start', 'decay_end', 'classifier_norm'\)"),
    (lambda c: _arm(c, "sgd").optim.__setitem__("name", "lamb"),   # tuple: every registered family
     r"^arms\.sgd\.name must be one of \('sgd', 'adam', 'adam_buffers', 'fixnorm', 'kfac'.*\), got 'lamb'"),
    (lambda c: _set(c, warmup_steps=-5), r"^optim\.warmup_steps must be an int >= 0, got -5"),
    (lambda c: _set(c, nesterov="yes"), r"^optim\.nesterov must be true or false, got 'yes'"),
    (lambda c: _set(c, decay_start=1.5), r"^optim\.decay_start must be a fraction of train\.steps"),
    (lambda c: setattr(c.train, "num_devices", -1), r"^train\.num_devices must be an int >= 0"),
    (lambda c: setattr(c.train, "label_smoothing", 1.0), r"^train\.label_smoothing must be a number in \[0, 1\)"),
    (lambda c: setattr(c.data, "n_test", 0), r"^data\.n_test must be a positive int or none, got 0"),
    (lambda c: setattr(c.data, "augment", True), r"^data\.augment crops and flips images; data\.name='mnist1d'"),
    (lambda c: setattr(c.model, "kwargs", [64]), r"^model\.kwargs must be a dict"),
    (lambda c: _arm(c, "sgd").optim.__setitem__("decay", "adamw"),
     r"^arms\.sgd\.decay must be one of \('l2', 'decoupled', 'l2\+decoupled'\), got 'adamw'"),
    (lambda c: _arm(c, "sgd").optim.__setitem__("name", "adam"),  # optim.decay (l2) is fine for adam too
     None),
])
def test_experiment_config_errors_name_the_key(mutate, pattern):
  from experiments import config as config_lib
  config = _fixnorm_config()
  mutate(config)
  if pattern is None:
    config_lib.validate(config)
    return
  with pytest.raises(ValueError, match=pattern):
    config_lib.validate(config)


def test_experiment_config_optimizer_names_are_those_given():
  from experiments import config as config_lib
  config = _fixnorm_config()
  config_lib.validate(config, allowed=("fixnorm", "sgd"))
  with pytest.raises(ValueError, match=r"^arms\.fixnorm_c0p5\.name must be one of \('sgd', 'adam', "
                                       r"'adam_buffers'\), got 'fixnorm'"):
    config_lib.validate(config, allowed=("sgd", "adam", "adam_buffers"))
  config_lib.validate(config)  # None: every registered family
