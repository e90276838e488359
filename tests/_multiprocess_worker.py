"""One process of a small multi-process run, started by tests/test_multiprocess.py (not a test module).

  python tests/_multiprocess_worker.py plain|kfac OUT NUM_DEVICES MESH_MEMBERS [COORDINATOR NUM_PROCESSES PROCESS_ID]

Trains a small population for 20 steps through :func:`experiments.train.workdir.run_experiment` in ``OUT/work``
(``train.feed=auto``: host-fed batches with several processes, drawn on device with one):
``plain``, an SGD sweep (2 weight decays x 2 seeds, one group); ``kfac``, an SGD and a K-FAC-F arm of
``three_mechanisms`` with the study's hooks (2 seeds each, two groups). Then it
writes every member's final parameters (restored from the last checkpoint, collectively) to ``OUT/params.npz``
from process 0, and each process the shapes of the input blocks it gathered on the host to
``OUT/feed.PROCESS.json``. The CPU device count per process comes from ``JAX_NUM_CPU_DEVICES`` (set by the caller).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv: list[str]) -> None:
  kind, out, num_devices, mesh_members = argv[0], argv[1], int(argv[2]), int(argv[3])
  from experiments import distributed
  if len(argv) > 4:
    distributed.initialize({"coordinator_address": argv[4], "num_processes": int(argv[5]),
                            "process_id": int(argv[6])})
  import jax
  import numpy as np
  jax.config.update("jax_default_matmul_precision", "highest")
  from experiments import studies
  from experiments.train import Program, make_groups
  from experiments.train.checkpoint import Checkpointer
  from experiments.train.workdir import load_dataset, run_experiment

  from experiments import config as config_lib
  from experiments import optimizers
  if kind == "kfac":
    study = studies.get("three_mechanisms")
    config = study.make_config(True)
    config.arms = [a for a in config.arms if a.name in ("sgd_l2_bn", "kfacf_l2_bn")]
    config.data.n_train, config.data.n_test = 256, 64
    config.model.kwargs = {"hidden": [16]}
  else:
    study = None
    config = config_lib.ExperimentConfig(
        name="plain", data=config_lib.DataConfig(name="digits", n_train=256, n_test=64, label_noise=0.1),
        model=config_lib.ModelConfig(name="mlp", norm="batch_noaffine", kwargs={"hidden": [16]}),
        optim=optimizers.SGD(learning_rate=0.05, momentum=0.9, decay="l2"),
        arms=[config_lib.Arm("sgd", sweep={"weight_decay": [0.0, 1e-2]})])
  config.seeds = 2
  t = config.train
  t.steps, t.log_every, t.eval_every, t.checkpoint_every = 20, 10, 20, 10
  t.batch_size, t.eval_batch_size, t.num_devices, t.mesh_members = 32, 64, num_devices, mesh_members
  # Without the study's evaluation probes (K-FAC factors and Jacobian norms of a test batch): they are not
  # what is compared here and cost most of the compilation.
  hooks = dataclasses.replace(study.hooks(config), eval_metrics=None) if study else None
  dataset = load_dataset(config)
  workdir = os.path.join(out, "work")
  # What this process gathers on the host for its devices (train.feed=auto: host-fed with several processes).
  from experiments.train import feed as feed_lib
  gathered, take = [], feed_lib._take

  def recording_take(array, rows):
    if array.ndim > 1:  # the inputs (the labels are gathered with the same rows)
      gathered.append(list(rows.shape))
    return take(array, rows)
  feed_lib._take = recording_take
  run_experiment(config, workdir, hooks=hooks, dataset=dataset, progress=False, log=print)
  feed_lib._take = take
  with open(os.path.join(out, f"feed.{jax.process_index()}.json"), "w") as f:
    json.dump({"gathered": gathered, "local_devices": jax.local_device_count()}, f)
  params = {}
  for group in make_groups(config):
    program = Program(config, group, dataset, hooks=hooks)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints", group.name))
    step, program.state = ckpt.restore_latest(program.state, print)
    ckpt.close()
    assert step == t.steps, step
    for i, member in enumerate(group.members):
      for path, leaf in jax.tree_util.tree_flatten_with_path(program.params(i))[0]:
        params[f"{member.label}/{member.seed}{jax.tree_util.keystr(path)}"] = np.asarray(leaf)
  if distributed.is_primary():
    np.savez(os.path.join(out, "params.npz"), **params)


if __name__ == "__main__":
  main(sys.argv[1:])
