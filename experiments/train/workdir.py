"""Train every arm of a config in a work directory, resuming whatever was interrupted.

:func:`run_experiment` builds each model config once (:class:`experiments.train.program.Model`, with its
scale-invariance probe), shared by the groups that train it, and trains each group as one :class:`~experiments.train.program.Program` through
the host loop (:mod:`experiments.train.loop`), skipping the groups that ``metrics.jsonl`` shows finished.

Work directory layout::

  <workdir>/config.json         the resolved config (a restart must use the same one)
  <workdir>/metrics.jsonl       one line per member per logged step (see experiments.train.metrics)
  <workdir>/checkpoints/<group> orbax checkpoints of each group's population (when train.checkpoint_every > 0)
  <workdir>/*.png, *.svg        plots (SVG beside each PNG)
  <workdir>/tensorboard/        TensorBoard runs, one per member (when train.tensorboard is true)
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Callable

from experiments import config as config_lib
from experiments import distributed
from experiments.config import ExperimentConfig
from experiments.train import execution
from experiments.train import feed as feed_lib
from experiments.train.metrics import MetricsWriter, load_results, read_records
from experiments.train.population import make_groups
from experiments.train.program import Hooks, Model, Program


def load_dataset(config: ExperimentConfig):
  from experiments.data import load
  d = config.data
  return load(d.name, data_dir=d.data_dir, n_train=d.n_train, n_test=d.n_test, label_noise=d.label_noise,
              seed=d.seed, flatten=d.flatten)


def check_workdir(workdir: str, config: ExperimentConfig) -> None:
  """Refuses a ``workdir`` whose ``config.json`` holds a run with another config (reads that file only)."""
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path):
    try:
      with open(path) as f:
        saved = json.load(f)
    except ValueError as e:
      raise ValueError(f"{path} is not a readable config ({e}); remove it or choose another --workdir.") from None
    if _comparable(saved) != _comparable(json.loads(json.dumps(config_lib.to_dict(config)))):
      raise ValueError(
          f"{workdir} holds a run with a different config (see {path}); resume it with the same settings or "
          "choose another --workdir.")


def _comparable(saved: dict) -> dict:
  """A config without the fields that only choose outputs or execution (``train.tensorboard``,
  ``train.population``, ``train.feed``), which a resume may change."""
  saved = dict(saved)
  if isinstance(saved.get("train"), dict):
    saved["train"] = {k: v for k, v in saved["train"].items() if k not in ("tensorboard", "population", "feed")}
  return saved


def write_config(workdir: str, config: ExperimentConfig) -> bool:
  """Writes ``config.json`` unless the work directory already has (the same) one; True if it was written.

  In a multi-process run process 0 writes it and the others wait until it has.
  """
  distributed.barrier("wd_optax:workdir-checked")  # every process has read the old config.json, if any
  wrote = False
  if distributed.is_primary():
    check_workdir(workdir, config)
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
      os.makedirs(workdir, exist_ok=True)
      tmp = path + ".tmp"
      with open(tmp, "w") as f:
        json.dump(config_lib.to_dict(config), f, indent=2)
      os.replace(tmp, path)
      wrote = True
  distributed.barrier("wd_optax:config-written")
  return wrote


def _done(records: list[dict], group, steps: int) -> frozenset:
  """``(label, seed)`` of the members of ``group`` that finished (evaluated at the last step)."""
  return frozenset((r["label"], r["seed"]) for r in records
                   if r["group"] == group.name and r["step"] == steps and r.get("test_accuracy") is not None)


def _finished(records: list[dict], group, steps: int) -> bool:
  done = _done(records, group, steps)
  return all((m.label, m.seed) in done for m in group.members)


def run_experiment(config: ExperimentConfig, workdir: str, *, hooks: Hooks | None = None,
                   progress: bool | None = None, dataset=None, log: Callable[[str], None] = print) -> dict:
  """Trains all groups of ``config`` in ``workdir`` and returns the per-label results from metrics.jsonl.

  ``config`` is taken as valid (the command line validates it once, up front: :mod:`experiments.checks`;
  check a config built by hand with :func:`experiments.config.validate`).
  """
  check_workdir(workdir, config)
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  dataset = dataset if dataset is not None else load_dataset(config)
  # config.json marks the directory as this config's run. A run that fails before its first logged step
  # (bad data, a model that does not build, an interrupt while compiling) removes the file it wrote, so the
  # corrected command is not refused as "a different config".
  wrote_config = write_config(workdir, config)
  try:
    tensorboard = os.path.join(workdir, "tensorboard") if config.train.tensorboard else None
    # Process 0 writes metrics.jsonl (and the TensorBoard files) and shows the progress; the others train only.
    primary = distributed.is_primary()
    sink = MetricsWriter(metrics_path, tensorboard_dir=tensorboard) if primary else contextlib.nullcontext()
    with sink as writer:
      models: dict[str, Model] = {}  # by Model.key: one build and one scale-invariance probe per model config
      for group in make_groups(config):
        # Process 0 reads metrics.jsonl and decides; every process must skip (or train) the same groups.
        finished, records = False, []
        if primary:
          records = read_records(metrics_path) if os.path.exists(metrics_path) else []
          finished = _finished(records, group, config.train.steps)
        if distributed.agree(finished):
          if writer is not None:
            writer.sync_tensorboard(group.name)
          log(f"[{config.name}] {group.name}: already finished, skipped")
          continue
        key = Model.key(config, group)
        mode, why = execution.choose(config, group)
        fed = (", batches gathered on the host (train.feed)"
               if feed_lib.resolve(config.train.feed) == "host" else "")
        log(f"[{config.name}] {group.name}: {len(group.members)} members "
            f"{'vmapped' if mode == 'vmap' else 'one after another'} ({why}), {config.train.steps} steps{fed}")
        if mode == "sequential":
          execution.train_sequential(config, group, dataset, hooks=hooks, workdir=workdir, writer=writer,
                                     progress=progress, log=log, skip=_done(records, group, config.train.steps))
          continue
        program = Program(config, group, dataset, hooks=hooks, model=models.get(key))
        program.train(workdir=workdir, writer=writer, progress=progress if primary else False, log=log)
        models[key] = program.model
  except BaseException:
    if wrote_config and not (os.path.exists(metrics_path) and os.path.getsize(metrics_path)):
      os.remove(os.path.join(workdir, "config.json"))
    raise
  distributed.barrier("wd_optax:trained")  # metrics.jsonl is complete for every process's analysis
  return load_results(metrics_path)
