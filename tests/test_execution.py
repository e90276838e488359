"""``train.population``: the same members trained vmapped or one after another give the same metrics.

The sequential path (:mod:`experiments.train.execution`) is checked against the vmapped population through
``run_experiment`` (records of ``metrics.jsonl``), plus the choice ``auto`` makes, the error for a bad value,
and that an interrupted sequential run resumes only its unfinished member.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

from experiments import config as config_lib
from experiments import optimizers
from experiments.data import load
from experiments.train import execution, make_groups
from experiments.train.metrics import read_records
from experiments.train.workdir import run_experiment
from _tol import assert_close_scaled

METRICS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy")


def tiny_config(**train) -> config_lib.ExperimentConfig:
  return config_lib.ExperimentConfig(
      name="tiny", data=config_lib.DataConfig(name="digits", n_train=256, n_test=64, label_noise=0.1),
      model=config_lib.ModelConfig(name="mlp", norm="batch_noaffine", kwargs={"hidden": [16]}),
      optim=optimizers.SGD(learning_rate=0.05, momentum=0.9, weight_decay=1e-3, decay="l2"),
      train=config_lib.TrainConfig(**{"steps": 8, "batch_size": 32, "log_every": 4, "eval_every": 4,
                                      "eval_batch_size": 64, "num_devices": 1, **train}),
      seeds=2, arms=[config_lib.Arm("decay"), config_lib.Arm("none", {"weight_decay": 0.0})])


def by_member(records: list[dict]) -> dict:
  return {(r["label"], r["seed"], r["step"]): r for r in records}


@pytest.fixture(scope="module")
def dataset():
  return load("digits", n_train=256, n_test=64, label_noise=0.1)


@pytest.fixture(scope="module")
def workdirs(dataset, tmp_path_factory):
  out, logs = {}, {}
  for mode in ("vmap", "sequential"):
    out[mode] = str(tmp_path_factory.mktemp(mode))
    logs[mode] = []
    run_experiment(tiny_config(population=mode), out[mode], progress=False, dataset=dataset,
                   log=logs[mode].append)
  return out, logs


def test_sequential_members_give_the_vmapped_metrics(workdirs):
  dirs, logs = workdirs
  vmapped, sequential = (by_member(read_records(os.path.join(dirs[m], "metrics.jsonl")))
                         for m in ("vmap", "sequential"))
  assert set(vmapped) == set(sequential) and len(vmapped) == 4 * 2
  for key, record in vmapped.items():
    assert sequential[key]["group"] == record["group"]
    for metric in METRICS:
      # vmapped vs one member per program: the same 8 steps in another compiled program.
      assert_close_scaled(sequential[key][metric], record[metric], c=64, err_msg=f"{key} {metric}")
  # The comparison would be vacuous if members did not differ.
  assert vmapped[("decay", 0, 8)]["train_loss"] != vmapped[("decay", 1, 8)]["train_loss"]
  assert any("one after another (train.population=sequential)" in line for line in logs["sequential"])
  assert any("vmapped (train.population=vmap)" in line for line in logs["vmap"])


def test_interrupted_sequential_run_retrains_only_its_unfinished_member(workdirs, dataset):
  dirs, _ = workdirs
  path = os.path.join(dirs["sequential"], "metrics.jsonl")
  finished = read_records(path)
  # As if the run had stopped during the last member: its records after step 4 are missing.
  cut = [r for r in finished if not (r["label"] == "none" and r["seed"] == 1 and r["step"] > 4)]
  with open(path, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in cut)
  log = []
  run_experiment(tiny_config(population="sequential"), dirs["sequential"], progress=False, dataset=dataset,
                 log=log.append)
  resumed = read_records(path)
  assert len(resumed) == len(finished)
  assert by_member(resumed) == by_member(finished)   # the same program from the same start: bit-identical


def test_auto_runs_members_one_after_another_on_one_cpu_device_and_vmapped_on_a_mesh():
  (group,) = make_groups(tiny_config())
  assert tiny_config().train.population == "vmap"   # the default: how every published result ran
  auto = lambda **t: tiny_config(population="auto", **t)
  assert execution.choose(auto(), group)[0] == "sequential"
  assert execution.choose(auto(num_devices=8), group)[0] == "vmap"
  assert execution.choose(auto(), dataclasses.replace(group, members=group.members[:1]))[0] == "vmap"
  assert execution.choose(tiny_config(num_devices=8, population="sequential"), group)[0] == "sequential"


def test_bad_population_names_the_setting():
  assert config_lib.apply_override(tiny_config(), "train.population=sequential").train.population == "sequential"
  with pytest.raises(ValueError, match=r"train.population must be one of \('auto', 'vmap', 'sequential'\), "
                                       r"got 'parallel'"):
    config_lib.validate(tiny_config(population="parallel"))
