"""The harness's optimizer specs (shared machinery of experiments.optimizers) against independent references.

* ``lr_schedule`` (optax schedules) equals the schedule's formula written out in numpy float64;
* the decay window rounds its fractions of the run as the formula says, per vmapped member;
* the ``decay_mask`` presets and explicit regex specs select the expected parameter paths of the harness's
  models, and the ``kernels`` preset is exactly ``wd_optax.masks.kernels()`` on every model;
* a bad ``decay_mask`` spec is one error naming the config key;
* ``experiments/`` imports nothing private from ``wd_optax``.
"""

from __future__ import annotations

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import wd_optax
from _tol import assert_close_scaled
from experiments import config as config_lib
from experiments import models
from experiments import optimizers

ROOT = pathlib.Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- learning-rate schedule


def _lr_reference(kind: str, warmup: int, total: int, t: np.ndarray) -> np.ndarray:
  """The documented shape, in float64: a linear warm-up (t + 1)/W, then constant 1 or a cosine to 0 at T."""
  t = t.astype(np.float64)
  if kind == "constant":
    main = np.ones_like(t)
  else:
    progress = np.clip((t - warmup) / max(total - warmup, 1), 0.0, 1.0)
    main = 0.5 * (1.0 + np.cos(np.pi * progress))
  if warmup == 0:
    return main
  return np.where(t < warmup, (t + 1.0) / warmup, main)


@pytest.mark.parametrize("kind", ["constant", "cosine"])
@pytest.mark.parametrize("warmup", [0, 1, 2, 7, 40, 45])
def test_lr_schedule_matches_the_formula(kind, warmup):
  total = 40
  optim = optimizers.SGD(lr_schedule=kind, warmup_steps=warmup)
  steps = np.arange(0, total + 10)
  schedule = optim.lr_shape(total)
  got = jax.jit(jax.vmap(lambda t: schedule(t) * jnp.ones([], jnp.float32)))(jnp.asarray(steps, jnp.int32))
  assert_close_scaled(got, _lr_reference(kind, warmup, total, steps), c=4)   # a few float32 roundings vs float64


# ---------------------------------------------------------------- decay window


def test_decay_window_rounds_fractions_of_the_run_per_member():
  total = 40
  starts = np.array([0.0, 0.0, 0.5, 0.3, 0.1], np.float32)
  ends = np.array([1.0, 0.25, 1.0, 0.3, 0.62], np.float32)   # no ties at .5 steps: 0.62·40 = 24.8 -> 25
  steps = np.arange(0, total + 5)

  def gates(s, e):
    window = optimizers.OptimizerSpec.decay_window({"decay_start": s, "decay_end": e}, total)
    return jax.vmap(window)(jnp.asarray(steps))

  got = jax.jit(jax.vmap(gates))(jnp.asarray(starts), jnp.asarray(ends))
  first, stop = np.rint(starts.astype(np.float64) * total), np.rint(ends.astype(np.float64) * total)
  expected = (steps[None] >= first[:, None]) & (steps[None] < stop[:, None])
  np.testing.assert_array_equal(np.asarray(got), expected.astype(np.float32))


# ---------------------------------------------------------------- decay masks


def _abstract_params(name, norm):
  kwargs = {"in_features": 40} if name == "mlp" else ({"in_channels": 1} if name == "resnet1d" else {})
  model = nnx.eval_shape(lambda: models.build(name, num_classes=10, rngs=nnx.Rngs(0), norm=norm, **kwargs))
  _, params, _ = nnx.split(model, nnx.Param, ...)
  return nnx.to_pure_dict(params)


def _decayed(spec, params):
  return sorted(p for p, keep in wd_optax.masks.resolve(optimizers.decay_mask(spec), params).items() if keep)


MLP_PATHS = ["classifier/bias", "classifier/kernel", "layers/0/kernel", "layers/1/kernel", "norms/0/layer/bias",
             "norms/0/layer/scale", "norms/1/layer/bias", "norms/1/layer/scale"]   # BatchNorm: no layer biases


@pytest.mark.parametrize("spec,expected", [
    ("all", MLP_PATHS),
    ("kernels", ["classifier/kernel", "layers/0/kernel", "layers/1/kernel"]),
    ("conv", [p for p in MLP_PATHS if not p.startswith("classifier/")]),
    ("classifier", ["classifier/bias", "classifier/kernel"]),
    ("none", []),
    ([".*kernel$"], ["classifier/kernel", "layers/0/kernel", "layers/1/kernel"]),
    (["^layers/0/", "scale$"], ["layers/0/kernel", "norms/0/layer/scale", "norms/1/layer/scale"]),
    ({"include": ["kernel$"], "exclude": ["classifier"]}, ["layers/0/kernel", "layers/1/kernel"]),
    ({"exclude": ["bias$", "scale$"]}, ["classifier/kernel", "layers/0/kernel", "layers/1/kernel"]),
    ({"include": ["^norms/"], "exclude": ["^norms/1/"]}, ["norms/0/layer/bias", "norms/0/layer/scale"]),
    ({}, MLP_PATHS),
])
def test_decay_mask_specs_select_the_expected_paths(spec, expected):
  params = _abstract_params("mlp", "batch")
  assert sorted(p for p, _ in wd_optax.masks.resolve(None, params).items()) == MLP_PATHS   # the model's paths
  assert _decayed(spec, params) == expected


def test_all_is_no_mask_at_all():
  assert optimizers.decay_mask("all") is None   # the transforms' unmasked program, as before presets were regexes


# The sequence models' token and position embeddings are matrices that are not kernels.
@pytest.mark.parametrize("name", [n for n in models.NAMES if n not in models.SEQUENCE_MODELS])
@pytest.mark.parametrize("norm", models.NORMS)
def test_kernels_preset_is_exactly_the_leaves_with_ndim_2_or_more(name, norm):
  params = _abstract_params(name, norm)
  by_ndim = sorted(p for p, leaf in wd_optax.diagnostics.flatten_by_path(params).items() if len(leaf.shape) >= 2)
  assert _decayed("kernels", params) == by_ndim
  assert any(p.startswith("classifier/") for p in by_ndim)   # the conv / classifier presets have something to name


@pytest.mark.parametrize("spec,pattern", [
    ("foo", r"^optim\.decay_mask must be a preset name \('all', 'kernels', 'conv', 'classifier', 'none'\), a list "
            r"of include regexes or a dict \{\"include\": \[\.\.\.\], \"exclude\": \[\.\.\.\]\}, got 'foo'\.$"),
    (7, r"^optim\.decay_mask must be a preset name .*, got 7\.$"),
    (None, r"^optim\.decay_mask must be a preset name .*, got None\.$"),
    ([], r"^optim\.decay_mask\.include must be a non-empty list of regex strings, got \[\]\.$"),
    (["kernel$", 3], r"^optim\.decay_mask\.include must be a non-empty list of regex strings, got \['kernel\$', 3\]"),
    ({"exclude": "bias"}, r"^optim\.decay_mask\.exclude must be a list of regex strings, got 'bias'\.$"),
    ({"includes": ["a"]}, r"^optim\.decay_mask: unknown key \['includes'\]; expected a preset name"),
    (["("], r"^optim\.decay_mask\.include: invalid regex '\(' \(missing \), unterminated subpattern"),
])
def test_bad_decay_mask_spec_is_one_error_naming_the_key(spec, pattern):
  config = config_lib.ExperimentConfig(optim=optimizers.SGD(decay_mask=spec))
  with pytest.raises(ValueError, match=pattern):
    config_lib.validate(config)


def test_bad_decay_mask_in_an_arm_names_the_arm():
  config = config_lib.ExperimentConfig(arms=[config_lib.Arm("a"), config_lib.Arm("b", {"decay_mask": ["("]})])
  with pytest.raises(ValueError, match=r"^arms\.b\.decay_mask\.include: invalid regex"):
    config_lib.validate(config)


def test_decay_mask_is_set_from_the_command_line_as_json():
  config = config_lib.ExperimentConfig(arms=[config_lib.Arm("a")])
  config_lib.apply_override(config, 'optim.decay_mask={"include": [".*kernel$"], "exclude": ["classifier"]}')
  assert config.optim.decay_mask == {"include": [".*kernel$"], "exclude": ["classifier"]}
  config_lib.apply_override(config, 'arms.a.decay_mask=["^layers/"]')
  assert config.arms[0].optim["decay_mask"] == ["^layers/"]
  config_lib.apply_override(config, "optim.decay_mask=none")   # the preset, not JSON null
  assert config.optim.decay_mask == "none"
  config_lib.validate(config)


# ---------------------------------------------------------------- no private imports


# wd_optax._x anywhere (import wd_optax._x, from wd_optax._x import y, wd_optax._x.f), and _x among the names of
# a ``from wd_optax import ...``.
_PRIVATE = re.compile(r"\bwd_optax\._\w|\bfrom\s+wd_optax\s+import\s+(?:[\w\s,(]*[\s,(])?_\w")


def test_private_import_pattern_catches_every_form():
  for line in ("from wd_optax import _tree", "from wd_optax._tree import named_leaves", "import wd_optax._checks",
               "x = wd_optax._tree.path_str(p)", "from wd_optax import masks, _tree"):
    assert _PRIVATE.search(line), line
  for line in ("from wd_optax import masks", "import wd_optax", "wd_optax.masks.resolve(m, p)",
               "from wd_optax import scale_by_adam_l2, masks"):
    assert not _PRIVATE.search(line), line


def test_experiments_import_nothing_private_from_wd_optax():
  offending = [f"{path.relative_to(ROOT)}:{i}: {line.strip()}"
               for path in sorted((ROOT / "experiments").rglob("*.py"))
               for i, line in enumerate(path.read_text().splitlines(), 1)
               if _PRIVATE.search(line)]
  assert not offending, "experiments/ uses private wd_optax modules:\n" + "\n".join(offending)
