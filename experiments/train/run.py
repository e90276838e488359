"""Train every arm of a config in a work directory, resuming whatever was interrupted.

Work directory layout::

  <workdir>/config.json         the resolved config (a restart must use the same one)
  <workdir>/metrics.jsonl       one line per member per logged step (see experiments.train.metrics)
  <workdir>/checkpoints/<group> orbax checkpoints of each group's population (when train.checkpoint_every > 0)
  <workdir>/*.png               plots
"""

from __future__ import annotations

import json
import os
from typing import Callable

from experiments import config as config_lib
from experiments.config import ExperimentConfig
from experiments.train.metrics import MetricsWriter, load_results, read_records
from experiments.train.trainer import Hooks, Program, make_groups


def load_dataset(config: ExperimentConfig):
  from experiments.data import load
  d = config.data
  return load(d.name, data_dir=d.data_dir, n_train=d.n_train, n_test=d.n_test, label_noise=d.label_noise,
              seed=d.seed, flatten=d.flatten)


def _check_config(workdir: str, config: ExperimentConfig) -> None:
  path = os.path.join(workdir, "config.json")
  current = config_lib.to_dict(config)
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    if saved != json.loads(json.dumps(current)):
      raise ValueError(
          f"{workdir} holds a run with a different config (see {path}); resume it with the same settings or "
          "choose another --workdir.")
  else:
    os.makedirs(workdir, exist_ok=True)
    with open(path, "w") as f:
      json.dump(current, f, indent=2)


def _finished(records: list[dict], group, steps: int) -> bool:
  done = {(r["label"], r["seed"]) for r in records
          if r["group"] == group.name and r["step"] == steps and r.get("test_accuracy") is not None}
  return all((m.label, m.seed) in done for m in group.members)


def run_experiment(config: ExperimentConfig, workdir: str, *, hooks: Hooks | None = None,
                   progress: bool | None = None, dataset=None, log: Callable[[str], None] = print) -> dict:
  """Trains all groups of ``config`` in ``workdir`` and returns the per-label results from metrics.jsonl."""
  config_lib.validate(config)
  _check_config(workdir, config)
  dataset = dataset if dataset is not None else load_dataset(config)
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  writer = MetricsWriter(metrics_path)
  for group in make_groups(config):
    records = read_records(metrics_path) if os.path.exists(metrics_path) else []
    if _finished(records, group, config.train.steps):
      log(f"[{config.name}] {group.name}: already finished, skipped")
      continue
    log(f"[{config.name}] {group.name}: {len(group.members)} members vmapped, {config.train.steps} steps")
    Program(config, group, dataset, hooks=hooks).train(workdir=workdir, writer=writer, progress=progress, log=log)
  return load_results(metrics_path)
