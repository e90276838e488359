"""The command line and config overrides: ``list``, ``--set`` parsing and its errors, and a tiny
``reproduce`` that writes REPORT.md with claims and verdicts (through the documented way to add a study)."""

from __future__ import annotations

import os
import subprocess
import sys
import types

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import __main__ as cli
from experiments import config as config_lib
from experiments import report, runner, studies
from experiments.train import Hooks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_list_subprocess_names_every_registered_study():
  env = dict(os.environ, PYTHONPATH=ROOT)
  out = subprocess.run([sys.executable, "-m", "experiments", "list"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  listed = [line.split()[0] for line in out.stdout.splitlines() if line.strip()]
  assert listed == studies.names()
  assert {"early_decay", "decay_placement", "adam_buffers"} <= set(listed)


@pytest.mark.parametrize("argv,fragment", [
    (["early_decay", "--set", "train.stepz=3"], "'stepz'"),
    (["early_decay", "--set", "optimizer.learning_rate=3"], "'optimizer'"),
    (["early_decay", "--set", "train.steps=many"], "cannot parse as int"),
    (["early_decay", "--set", "arms.sometimes.weight_decay=1"], "unknown arm 'sometimes'"),
    (["early_decay", "--set", "arms.always.wd=1"], "unknown optimizer key 'wd'"),
    (["early_decay", "--set", "train.steps"], "expected key=value"),
    (["early_decay", "--set", "train.eval_every=7"], "train.eval_every (7) must be a multiple"),
    (["no_such_study"], "unknown study 'no_such_study'"),
    (["reproduce", "--set", "train.bogus=1"], "'bogus'"),
    (["fixnorm", "--set", "arms.fixnorm_c1p5.classifier_norm=-1.5"],
     "arms.fixnorm_c1p5.classifier_norm must be a finite number > 0, got -1.5"),
    (["fixnorm", "--set", "arms.fixnorm_c1p5.classifer_norm=2"], "'classifier_norm'"),  # listed as known
    (["three_mechanisms", "--set", "arms.sgd_l2_bn.decoupled_fraction=2"],
     "arms.sgd_l2_bn.decoupled_fraction must be a number in [0, 1], got 2.0"),
    (["three_mechanisms", "--set", "arms.sgd_l2_bn.batch_norm=0.5"], "cannot parse as bool"),
])
def test_bad_arguments_exit_2_naming_the_problem(argv, fragment, capsys):
  assert cli.main(argv) == 2
  assert fragment in capsys.readouterr().err


def test_overrides_parse_with_field_types():
  config = studies.get("early_decay").make_config(True)
  for assignment in ["train.steps=77", "optim.learning_rate=0.02", "optim.nesterov=true", "data.n_train=none",
                     "model.kwargs.hidden=[8, 8]", "arms.always.weight_decay=0.01", "seeds=4",
                     "data.label_noise=0.35", "model.norm=none"]:
    config_lib.apply_override(config, assignment)
  assert config.train.steps == 77 and isinstance(config.train.steps, int)
  assert config.optim.learning_rate == 0.02 and config.optim.nesterov is True
  assert config.data.n_train is None and config.model.norm is None
  assert config.model.kwargs["hidden"] == [8, 8]
  assert config.seeds == 4 and config.data.label_noise == 0.35
  always = next(a for a in config.arms if a.name == "always")
  assert config.arm_optim(always).weight_decay == 0.01
  none = next(a for a in config.arms if a.name == "none")
  assert config.arm_optim(none).weight_decay == 0.0  # an arm's own setting wins over the base


@pytest.mark.parametrize("study,arm,assignment,field,value", [
    ("fixnorm", "fixnorm_c1p5", "classifier_norm=2.5", "classifier_norm", 2.5),
    ("three_mechanisms", "sgd_l2_bn", "batch_norm=false", "batch_norm", 0.0),
    ("three_mechanisms", "sgd_l2_plain", "decoupled_fraction=0.25", "decoupled_fraction", 0.25),
])
def test_study_fields_set_from_the_command_line_reach_only_that_arms_members(study, arm, assignment, field,
                                                                             value):
  from experiments.train import make_groups
  config = studies.get(study).make_config(True)
  before = {m.label: m.hp[field] for g in make_groups(config, seeds=[0]) for m in g.members}
  config_lib.apply_override(config, f"arms.{arm}.{assignment}")
  after = {m.label: m.hp[field] for g in make_groups(config, seeds=[0]) for m in g.members}
  changed = {label for label in after if after[label] != before[label]}
  assert changed == {label for label in after if label.split("[")[0] == arm}
  assert all(after[label] == value for label in changed)


def test_study_field_sweeps_are_checked_value_by_value():
  config = studies.get("fixnorm").make_config(True)
  arm = next(a for a in config.arms if a.name == "fixnorm_c1p5")
  arm.sweep["classifier_norm"] = [1.0, 0.0]
  with pytest.raises(ValueError, match=r"arms\.fixnorm_c1p5\.sweep\.classifier_norm must be a finite number > 0, "
                                       r"got 0\.0"):
    config_lib.validate(config)
  arm.sweep["classifier_norm"] = [1.0, 3.0]
  config_lib.validate(config)


def test_config_round_trips_through_json():
  config = studies.get("adam_buffers").make_config(False)
  assert config_lib.from_dict(config_lib.to_dict(config)) == config


# A study added the documented way: a module with STUDY, one registry line. Its optimizer comes from a
# make_tx hook (plain optax SGD), as a K-FAC or FixNorm study would provide its own.
def _tiny_config(quick):
  return config_lib.ExperimentConfig(
      name="tiny_custom",
      data=config_lib.DataConfig(name="digits", n_train=128, n_test=64),
      model=config_lib.ModelConfig(name="mlp", norm="batch_noaffine", kwargs={"hidden": [8]}),
      optim=config_lib.OptimConfig(learning_rate=0.1),
      train=config_lib.TrainConfig(steps=8, batch_size=32, log_every=4, eval_every=4, eval_batch_size=64),
      seeds=3,
      arms=[config_lib.Arm("slow", {"learning_rate": 0.01}), config_lib.Arm("fast")])


def _tiny_analyze(results, config):
  fast = 100 * results["fast"].final("test_accuracy")
  slow = 100 * results["slow"].final("test_accuracy")
  # compared=(): this harness test checks the interval's verdict; the validity checks are tests/test_report.py's.
  claim = report.directional_claim("T1", "A larger step learns faster.", "acc(fast) − acc(slow)",
                                   report.paired_ci(fast, slow), min_effect=1.0, unit=" pt", compared=())
  return [claim], "| arm |\n|---|\n| fast |"


def _logit_scale(apply, params, model_state, x, y):
  logits, _ = apply(params, model_state, x, False)
  return {"mean_abs_logit": jnp.mean(jnp.abs(logits))}


def _tiny_hooks(config):
  return Hooks(make_tx=lambda optim, rates: optax.sgd(rates["learning_rate"], momentum=0.9),
               eval_metrics=_logit_scale)


def test_reproduce_writes_report_with_claims_verdicts_and_plots(tmp_path, monkeypatch):
  module = types.ModuleType("tiny_custom_study")
  module.STUDY = studies.Study(name="tiny_custom", title="tiny custom study", setting="A test setting.",
                               make_config=_tiny_config, analyze=_tiny_analyze, hooks=_tiny_hooks)
  monkeypatch.setitem(sys.modules, "tiny_custom_study", module)
  monkeypatch.setitem(studies.REGISTRY, "tiny_custom", "tiny_custom_study")

  path = runner.reproduce(str(tmp_path), quick=True, names=["tiny_custom"], progress=False, log=lambda _: None)
  text = open(path).read()
  assert "| tiny_custom | T1 |" in text
  verdict = text.split("| tiny_custom | T1 |")[1].split("|")[0].strip()
  assert verdict in (report.REPRODUCED, report.NOT_REPRODUCED, report.INCONCLUSIVE)
  assert "Verdict rules" in text and "A test setting." in text
  for png in ("accuracy.png", "norms.png"):
    assert f"(tiny_custom/{png})" in text
    assert os.path.getsize(tmp_path / "tiny_custom" / png) > 1000
  assert (tmp_path / "tiny_custom" / "REPORT.md").exists()
  assert (tmp_path / "tiny_custom" / "config.json").exists()

  # The verdict in the report is the one the rule gives on the logged accuracies.
  from experiments.train import load_results
  results = load_results(str(tmp_path / "tiny_custom" / "metrics.jsonl"))
  assert sorted(results) == ["fast", "slow"] and len(results["fast"].seeds) == 3
  # The eval_metrics hook's measurement is logged at every evaluation step (4 and 8).
  logged = results["fast"].series["mean_abs_logit"]
  assert logged.shape == (3, 2) and np.all(np.isfinite(logged)) and np.all(logged > 0)
  ci = report.paired_ci(100 * results["fast"].final("test_accuracy"), 100 * results["slow"].final("test_accuracy"))
  assert verdict == report.directional_verdict(ci, 1.0)


def test_a_failing_study_is_reported_and_does_not_stop_the_others(tmp_path, monkeypatch):
  def broken(quick):
    raise RuntimeError("this study is broken on purpose")
  module = types.ModuleType("broken_study")
  module.STUDY = studies.Study(name="broken", title="broken", setting="", make_config=broken,
                               analyze=_tiny_analyze)
  monkeypatch.setitem(sys.modules, "broken_study", module)
  monkeypatch.setitem(studies.REGISTRY, "broken", "broken_study")
  path = runner.reproduce(str(tmp_path), names=["broken"], log=lambda _: None)
  text = open(path).read()
  assert "this study is broken on purpose" in text and "| broken | — | failed" in text
