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

from experiments import checks, cli
from experiments import config as config_lib
from experiments import optimizers
from experiments import report, studies
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
    (["early_decay", "--set", "arms.always.wd=1"], "optimizer 'sgd' has no field 'wd'; its fields: ["),
    (["early_decay", "--set", "train.steps"], "expected key=value"),
    (["early_decay", "--set", "train.eval_every=7"], "train.eval_every (7) must be a multiple"),
    (["no_such_study"], "unknown study 'no_such_study'"),
    (["reproduce", "--set", "train.bogus=1"], "'bogus'"),
    (["fixnorm", "--set", "arms.fixnorm_c1p5.classifier_norm=-1.5"],
     "arms.fixnorm_c1p5.classifier_norm must be a finite number > 0, got -1.5"),
    (["fixnorm", "--set", "arms.fixnorm_c1p5.classifer_norm=2"], "'classifier_norm'"),  # listed as known
    (["three_mechanisms", "--set", "arms.sgd_l2_bn.decoupled_weight_decay=-2"],
     "arms.sgd_l2_bn.decoupled_weight_decay must be a finite number >= 0, got -2.0"),
    (["three_mechanisms", "--set", "arms.sgd_l2_bn.model.registered_layers=0.5"], "cannot parse as bool"),
    (["three_mechanisms", "--set", "arms.sgd_l2_bn.model.norm=group"],
     "arms.sgd_l2_bn.model.norm must be one of"),
    (["three_mechanisms", "--set", "arms.sgd_l2_bn.model.depth=3"], "unknown model key 'depth'"),
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
    ("three_mechanisms", "sgd_l2_bn", "model.norm=none", "model.norm", None),
    ("three_mechanisms", "sgd_l2_plain", "decoupled_weight_decay=0.25", "decoupled_weight_decay", 0.25),
])
def test_study_fields_set_from_the_command_line_reach_only_that_arms_members(study, arm, assignment, field,
                                                                             value):
  from experiments.train import make_groups

  def read(group, member):   # a traced field of the member (None where its family lacks it), or its model's
    return getattr(group.model, field.split(".")[1]) if field.startswith("model.") else member.hp.get(field)

  config = studies.get(study).make_config(True)
  before = {m.label: read(g, m) for g in make_groups(config, seeds=[0]) for m in g.members}
  config_lib.apply_override(config, f"arms.{arm}.{assignment}")
  after = {m.label: read(g, m) for g in make_groups(config, seeds=[0]) for m in g.members}
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
      optim=optimizers.SGD(learning_rate=0.1),
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

  path = cli.reproduce(str(tmp_path), quick=True, names=["tiny_custom"], progress=False, log=lambda _: None)
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
  path = cli.reproduce(str(tmp_path), names=["broken"], log=lambda _: None)
  text = open(path).read()
  assert "this study is broken on purpose" in text and "| broken | — | failed" in text


# ----------------------------------------------------------------------------------------------------------
# Every bad input is one `error:` line on stderr, exit code 2, before any data is read or program compiled.

from experiments.data import _sources  # noqa: E402
from experiments.train import workdir as workdir_lib  # noqa: E402

CIFAR_RECORD = {"cifar10": 3073, "cifar100": 3074}
OFFICIAL_RECORDS = {  # the CIFAR pages: 5 train batches of 10,000 + a 10,000 test batch; 50,000 + 10,000
    "cifar10": {**{f"data_batch_{i}.bin": 10000 for i in range(1, 6)}, "test_batch.bin": 10000},
    "cifar100": {"train.bin": 50000, "test.bin": 10000},
}


def _sparse_cifar(directory, name, records=None, label=None):
  """Official-size all-zero CIFAR files (sparse, via truncate); ``label=(file, record, value)`` sets one label."""
  os.makedirs(directory, exist_ok=True)
  for filename, count in dict(OFFICIAL_RECORDS[name], **(records or {})).items():
    with open(os.path.join(directory, filename), "wb") as f:
      f.truncate(count * CIFAR_RECORD[name])
  if label is not None:
    filename, record, value = label
    with open(os.path.join(directory, filename), "r+b") as f:
      f.seek(record * CIFAR_RECORD[name] + CIFAR_RECORD[name] - 3073)  # CIFAR-100: the fine label byte
      f.write(bytes([value]))
  return str(directory)


class _WorkStarted(Exception):
  pass


@pytest.fixture
def no_work(monkeypatch):
  """Makes reading a data set, building a training program or starting a run raise _WorkStarted."""
  def refuse(*args, **kwargs):
    raise _WorkStarted("work started before the input was validated")
  for module, name in [(_sources, "read_cifar"), (_sources, "read_mnist1d"), (_sources, "read_digits"),
                       (cli, "run_experiment"), (workdir_lib, "Program")]:
    monkeypatch.setattr(module, name, refuse)
  return refuse


def _assert_refused(argv, fragment, tmp_path, capsys):
  workdir = tmp_path / "work"
  code = cli.main([*argv, "--workdir", str(workdir)])
  out = capsys.readouterr()
  lines = out.err.splitlines()
  assert code == 2, out.err
  assert len(lines) == 1 and lines[0].startswith("error: "), out.err
  assert "Traceback" not in out.err and fragment in lines[0], lines[0]
  assert not list(workdir.rglob("config.json")) if workdir.exists() else True
  return lines[0]


BAD_SETTINGS = [
    (["early_decay", "--set", "optim.name=foo"], "optim.name must be one of ('sgd', 'adam', 'adam_buffers', "
                                                 "'fixnorm', 'kfac'"),   # every registered family
    (["early_decay", "--set", "optim.decay=foo"], "optim.decay must be one of ('l2', 'decoupled', 'l2+decoupled'), "
                                                  "got 'foo'"),
    (["early_decay", "--set", "model.name=foo"], "model.name must be one of ('mlp', "),
    (["early_decay", "--set", "model.norm=group"], "model.norm must be one of"),
    (["early_decay", "--set", "model.kwargs.width=3"], "unexpected keyword argument 'width'"),
    (["early_decay", "--set", "data.name=imagenet"], "data.name must be one of ('mnist1d', 'digits', 'cifar10', "
                                                     "'cifar100', 'mod_add', 'mod_sub'), got 'imagenet'"),
    (["early_decay", "--set", "data.label_noise=2"], "data.label_noise must be a fraction in [0, 1], got 2.0"),
    (["early_decay", "--set", "data.n_train=10"], "data.n_train (10) must be at least train.batch_size (128)"),
    (["early_decay", "--set", "data.name=digits", "--set", "data.n_train=5000"],
     "data.n_train=5000 exceeds the 1437 examples"),
    (["early_decay", "--set", "train.num_devices=99"], "train.num_devices must be between 0 and"),
    (["early_decay", "--set", "optim.learning_rate=-1"], "optim.learning_rate must be a finite number >= 0, "
                                                         "got -1.0"),
    (["early_decay", "--set", "optim.weight_decay=-1"], "optim.weight_decay must be a finite number >= 0, got -1.0"),
    (["early_decay", "--set", "arms.always.weight_decay=-1"], "arms.always.weight_decay must be a finite number"),
    (["early_decay", "--set", "optim.momentum=1.5"], "optim.momentum must be a number in [0, 1), got 1.5"),
    (["early_decay", "--set", "arms.late50.decay_end=0.25"], "arms.late50.decay_start (0.5) must be <= "
                                                             "arms.late50.decay_end (0.25)"),
    (["early_decay", "--set", "optim.lr_schedule=linear"], "optim.lr_schedule must be one of"),
    (["early_decay", "--set", "optim.decay_mask=foo"], "optim.decay_mask must be a preset name ('all', 'kernels', "
                                                       "'conv', 'classifier', 'none'), a list of include regexes or a "
                                                       "dict"),
    (["early_decay", "--set", 'optim.decay_mask=["kernl$"]'],
     "optim.decay_mask=[\"kernl$\"]: include: regex 'kernl$' matches no parameter path. Paths: ['classifier/bias', "),
    (["early_decay", "--set", 'optim.decay_mask={"include": ["kernel$"], "exclude": ["classifer"]}'],
     "exclude: regex 'classifer' matches no parameter path"),
    (["early_decay", "--set", 'optim.decay_mask={"include": ["("]}'], "optim.decay_mask.include: invalid regex '('"),
    (["decay_placement", "--set", 'arms.conv.decay_mask={"exclude": "classifier"}'],
     "arms.conv.decay_mask.exclude must be a list of regex strings, got 'classifier'"),
    (["early_decay", "--set", "three_mechanisms.train.steps=3"], "scoped to study 'three_mechanisms'"),
    (["early_decay", "--set", "foo.train.steps=3"], "'foo' is neither a config key"),
    (["early_decay", "--seeds", "x"], "argument --seeds: invalid int value: 'x'"),
    (["early_decay", "--seeds", "0"], "--seeds must be >= 1, got 0"),
    (["early_decay", "--bogus"], "unrecognized arguments: --bogus"),
    (["fixnorm", "--set", "arms.sgd.name=foo"], "arms.sgd.name must be one of ('sgd', 'adam', 'adam_buffers', "
                                                "'fixnorm', 'kfac'"),
    (["three_mechanisms", "--set", "arms.sgd_l2_bn.name=adam_buffers"],   # registered, not one of the study's
     "arms.sgd_l2_bn.name must be one of ('sgd', 'adam', 'kfac'), got 'adam_buffers'"),
    (["three_mechanisms", "--set", "optim.learning_rate=1e4"],
     "--set optim.learning_rate: every arm of study 'three_mechanisms' sets its own learning_rate (sgd_none_plain, "),
    (["fixnorm", "--set", "arms.sgd.weight_decay=-0.5"], "arms.sgd.weight_decay must be a finite number >= 0"),
    (["reproduce", "--set", "optim.learning_rate=1e4"], "every arm of study 'fixnorm' sets its own learning_rate"),
    (["reproduce", "--set", "optim.weight_decay=-1"], "early_decay: optim.weight_decay must be a finite number"),
    (["reproduce", "--set", "fixnorm.arms.sgd.weight_decay=-1"],
     "fixnorm: arms.sgd.weight_decay must be a finite number >= 0, got -1.0"),
    (["reproduce", "--set", "arms.sometimes.weight_decay=1e-3"],
     "no study has an arm 'sometimes' (arms by study: early_decay: none, always, "),
]


@pytest.mark.parametrize("argv,fragment", BAD_SETTINGS, ids=[" ".join(a[1:]) or a[0] for a, _ in BAD_SETTINGS])
def test_every_bad_setting_is_one_error_line_before_any_work(argv, fragment, tmp_path, capsys, no_work):
  _assert_refused([*argv, "--quick"], fragment, tmp_path, capsys)


def _records_of_size(filenames, count, size):
  """Damage: ``filenames`` rewritten as ``count`` records of ``size`` bytes (the other dataset's record size)."""
  def damage(directory):
    for filename in filenames:
      with open(os.path.join(directory, filename), "wb") as f:
        f.truncate(count * size)
  return damage


def _cut(filename, size):
  def damage(directory):
    with open(os.path.join(directory, filename), "r+b") as f:
      f.truncate(size)
  return damage


def _append_byte(filename):
  def damage(directory):
    with open(os.path.join(directory, filename), "ab") as f:
      f.write(b"\0")
  return damage


CIFAR_PROBLEMS = [  # (data set, damage to an official-size directory or None: no directory, stderr fragment)
    ("cifar10", None, "data.data_dir: CIFAR-10 directory"),
    ("cifar10", lambda d: os.remove(os.path.join(d, "data_batch_4.bin")), "lacks required files"),
    ("cifar10", _append_byte("test_batch.bin"), "has 30730001 bytes; expected a positive multiple of 3073 bytes"),
    ("cifar10", _cut("data_batch_2.bin", 9999 * 3073), "data_batch_2.bin' holds 9999 records; expected 10000"),
    ("cifar10", _records_of_size([f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"], 10000, 3074),
     "data_batch_1.bin' has 30740000 bytes; expected a positive multiple of 3073 bytes"),
    ("cifar10", lambda d: _sparse_cifar(d, "cifar10", label=("data_batch_3.bin", 17, 10)),
     "data_batch_3.bin' has label 10 at record 17; expected labels in [0, 10)"),
    ("cifar100", None, "data.data_dir: CIFAR-100 directory"),
    ("cifar100", lambda d: os.remove(os.path.join(d, "test.bin")), "lacks required files"),
    ("cifar100", _cut("train.bin", 50000 * 3074 - 5),
     "train.bin' has 153699995 bytes; expected a positive multiple of 3074 bytes"),
    ("cifar100", _cut("train.bin", 10000 * 3074), "train.bin' holds 10000 records; expected 50000"),
    ("cifar100", _records_of_size(["train.bin"], 50000, 3073),
     "train.bin' has 153650000 bytes; expected a positive multiple of 3074 bytes"),
    ("cifar100", lambda d: _sparse_cifar(d, "cifar100", label=("test.bin", 9999, 100)),
     "test.bin' has label 100 at record 9999; expected labels in [0, 100)"),
]


@pytest.mark.parametrize("name,damage,fragment", CIFAR_PROBLEMS,
                         ids=[f"{n}-{f.split(';')[0][-40:]}" for n, _, f in CIFAR_PROBLEMS])
def test_every_cifar_directory_problem_is_one_error_line_before_any_work(name, damage, fragment, tmp_path, capsys,
                                                                        no_work):
  directory = str(tmp_path / "data")
  if damage is not None:
    _sparse_cifar(directory, name)
    damage(directory)
  line = _assert_refused(["early_decay", "--quick", "--set", f"data.name={name}", "--set",
                          f"data.data_dir={directory}", "--set", "data.n_train=none", "--set", "data.n_test=none"],
                         fragment, tmp_path, capsys)
  assert line.startswith("error: data.data_dir: ")


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_a_sound_cifar_directory_passes_validation(name, tmp_path, capsys, no_work):
  directory = _sparse_cifar(tmp_path / "data", name)
  with pytest.raises(_WorkStarted):  # validation passed; the run (patched) started
    cli.main(["early_decay", "--quick", "--workdir", str(tmp_path / "work"), "--set", f"data.name={name}",
              "--set", f"data.data_dir={directory}", "--set", "data.n_train=none", "--set", "data.n_test=none"])


def test_a_model_that_does_not_fit_the_data_is_refused_before_any_work(tmp_path, capsys, no_work):
  # A 1-D ResNet takes (length, channels) sequences: CIFAR images are (32, 32, 3).
  directory = _sparse_cifar(tmp_path / "data", "cifar10")
  _assert_refused(["early_decay", "--quick", "--set", "data.name=cifar10", "--set", f"data.data_dir={directory}",
                   "--set", "model.name=resnet1d", "--set", "model.kwargs={}"],
                  "model.name='resnet1d' with model.kwargs={} does not build or run on data.name='cifar10' inputs "
                  "of shape (32, 32, 3)", tmp_path, capsys)


def test_cifar_without_data_dir_is_refused(tmp_path, capsys, no_work):
  _assert_refused(["early_decay", "--quick", "--set", "data.name=cifar100"],
                  "data.data_dir is needed for 'cifar100'", tmp_path, capsys)


def test_a_workdir_holding_another_config_is_refused_before_any_work(tmp_path, capsys, no_work):
  workdir = tmp_path / "work"
  workdir.mkdir()
  other = studies.get("early_decay").make_config(True)
  other.train.steps += 1
  (workdir / "config.json").write_text(__import__("json").dumps(config_lib.to_dict(other)))
  before = (workdir / "config.json").read_text()
  assert cli.main(["early_decay", "--quick", "--workdir", str(workdir)]) == 2
  lines = capsys.readouterr().err.splitlines()
  assert len(lines) == 1 and "holds a run with a different config" in lines[0]
  assert (workdir / "config.json").read_text() == before
  # reproduce checks every study's directory up front.
  rep = tmp_path / "rep"
  (rep / "fixnorm").mkdir(parents=True)
  (rep / "fixnorm" / "config.json").write_text(__import__("json").dumps(config_lib.to_dict(other)))
  assert cli.main(["reproduce", "--quick", "--workdir", str(rep)]) == 2
  lines = capsys.readouterr().err.splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: fixnorm: ") and "different config" in lines[0]


def test_a_run_that_fails_before_its_first_step_leaves_no_config_json(tmp_path, monkeypatch):
  config = _tiny_config(True)
  workdir = str(tmp_path / "work")

  class Broken:
    def __init__(self, *args, **kwargs):
      raise RuntimeError("the program does not build")
  monkeypatch.setattr(workdir_lib, "Program", Broken)
  dataset = types.SimpleNamespace()
  with pytest.raises(RuntimeError, match="does not build"):
    workdir_lib.run_experiment(config, workdir, dataset=dataset, log=lambda _: None)
  assert not os.path.exists(os.path.join(workdir, "config.json"))
  corrected = _tiny_config(True)
  corrected.train.steps = 12
  workdir_lib.check_workdir(workdir, corrected)  # the corrected command is not "a different config"

  # Once a step has been logged, the directory is that config's run: config.json stays.
  class FailsAfterOneRecord:
    def __init__(self, *args, **kwargs):
      pass

    def train(self, *, writer, **kwargs):
      writer.write([{"group": "g", "label": "fast", "seed": 0, "step": 4}])
      raise RuntimeError("interrupted after the first chunk")
  monkeypatch.setattr(workdir_lib, "Program", FailsAfterOneRecord)
  with pytest.raises(RuntimeError, match="interrupted"):
    workdir_lib.run_experiment(config, workdir, dataset=dataset, log=lambda _: None)
  assert os.path.exists(os.path.join(workdir, "config.json"))
  with pytest.raises(ValueError, match="holds a run with a different config"):
    workdir_lib.check_workdir(workdir, corrected)


def test_reproduce_scoped_overrides_reach_only_their_study(tmp_path):
  overrides = ["three_mechanisms.arms.sgd_l2_bn.weight_decay=0.002", "early_decay.train.steps=60",
               "arms.always.weight_decay=0.003"]
  configs = {name: checks.study_config(studies.get(name), quick=True, overrides=overrides, reproduce=True)
             for name in studies.names()}
  arm = lambda name, a: configs[name].arm_optim(next(x for x in configs[name].arms if x.name == a))
  assert arm("three_mechanisms", "sgd_l2_bn").weight_decay == 0.002
  assert arm("three_mechanisms", "sgd_l2_plain").weight_decay == 0.005  # the study's own value
  assert configs["early_decay"].train.steps == 60
  assert all(configs[n].train.steps == studies.get(n).make_config(True).train.steps
             for n in studies.names() if n != "early_decay")
  assert arm("early_decay", "always").weight_decay == 0.003  # the unscoped arm override: where the arm exists
  # the same overrides outside reproduce: a scope naming another study is an error
  with pytest.raises(ValueError, match="scoped to study 'three_mechanisms'"):
    checks.study_config(studies.get("early_decay"), quick=True, overrides=overrides)


def test_describe_claims_no_base_value_that_no_arm_uses():
  config = studies.get("three_mechanisms").make_config(True)
  text = cli.describe(config, True)
  base = text.split("Base optimizer:")[1].split("Training:")[0]
  assert "η=" not in base and "`sgd`" not in base and "set per arm: name, learning_rate" in base
  early = cli.describe(studies.get("early_decay").make_config(True), True)
  assert "Base optimizer: `sgd`, η=0.1 (cosine)" in early  # every arm uses the base η there


def test_study_help_lists_arms_and_fields_with_defaults(capsys):
  assert cli.main(["fixnorm", "--help"]) == 0
  out = capsys.readouterr().out
  quick, full = studies.get("fixnorm").make_config(True), studies.get("fixnorm").make_config(False)
  for arm in quick.arms + full.arms:
    assert f"  {arm.name} " in out
  assert "learning_rate in [" in out  # the sweeps
  assert f"train.steps" in out and f"{quick.train.steps} (quick) / {full.train.steps} (full)" in out
  assert "optim.name values (optimizer families, experiments/optimizers/): fixnorm, sgd." in out
  assert cli.main(["early_decay", "-h", "--quick"]) == 0
  assert "arms.ARM.FIELD" in capsys.readouterr().out


def test_subprocess_bad_input_is_one_stderr_line_and_plain_help_still_works(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT)
  out = subprocess.run([sys.executable, "-m", "experiments", "early_decay", "--quick", "--set", "optim.decay=foo",
                        "--workdir", str(tmp_path / "w")], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 2
  assert out.stderr.splitlines() == ["error: optim.decay must be one of ('l2', 'decoupled', 'l2+decoupled'), "
                                     "got 'foo'."]
  assert not (tmp_path / "w").exists()
  out = subprocess.run([sys.executable, "-m", "experiments", "--help"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 0 and "usage: python -m experiments" in out.stdout and "reproduce" in out.stdout


def test_training_divergence_stays_exit_1(tmp_path, monkeypatch, capsys):
  from experiments.train import TrainingDiverged

  def diverge(*args, **kwargs):
    raise TrainingDiverged("member 'always' seed 0 diverged at step 7")
  monkeypatch.setattr(cli, "run_experiment", diverge)
  assert cli.main(["early_decay", "--quick", "--workdir", str(tmp_path / "w")]) == 1
  assert capsys.readouterr().err.splitlines() == ["error: member 'always' seed 0 diverged at step 7"]


def test_a_command_validates_its_config_once(tmp_path, monkeypatch, capsys):
  """The up-front checks validate the config; the run (run_study, run_experiment, make_groups) takes it as
  checked instead of validating it again."""
  from experiments.train import TrainingDiverged, make_groups
  calls = []
  real_validate = config_lib.validate
  monkeypatch.setattr(config_lib, "validate", lambda *a, **kw: (calls.append(1), real_validate(*a, **kw))[1])

  def run(config, workdir, **kwargs):
    make_groups(config)
    raise TrainingDiverged("stopped before training")
  monkeypatch.setattr(cli, "run_experiment", run)
  assert cli.main(["early_decay", "--quick", "--workdir", str(tmp_path / "w")]) == 1
  assert "stopped before training" in capsys.readouterr().err
  assert len(calls) == 1
