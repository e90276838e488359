"""Population sharding: a 16-member sweep on 8 devices, members split over devices vs data parallel.

Same harness (:class:`experiments.train.Program`), model (the quick MLP with BatchNorm), data, steps and
8 devices (simulated CPU devices, requested below before jax starts), two meshes:

* ``members``: ``train.mesh_members=8`` (mesh 8 × 1): each device trains 2 whole members, no collective
  in the step;
* ``data``: ``train.mesh_members=1`` (mesh 1 × 8): every device holds all 16 members and 1/8 of each
  member's batch; gradients and BatchNorm statistics are all-reduced every step.

Both are compiled first; then ``benchmarks/_paired.py`` times ``Program.train`` (steps, evaluation, logging)
after a ``reset`` of each in paired, interleaved repeats (ABBA order, from ``--min-repeats`` until the 95%
interval of the ratio excludes the target, at most ``--max-repeats``). Reported: member-steps per second of
each, the throughput ratio members / data with its 95% interval, and ``meets_target`` (ratio >= 2), also
under ``"targets"``. On a CPU the 8 simulated devices share the
machine's cores, so the ratio measures the cost of the collectives and of the small per-device shards,
not an accelerator's scaling.

  python benchmarks/population_sharding.py [--min-repeats 7] [--max-repeats 21] [--steps 200]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from experiments import config as config_lib  # noqa: E402
from experiments import optimizers  # noqa: E402
from experiments.data import load  # noqa: E402
from experiments.train import Program, make_groups  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _paired  # noqa: E402

TARGET = 2.0


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--min-repeats", type=int, default=7)
  parser.add_argument("--max-repeats", type=int, default=21)
  parser.add_argument("--steps", type=int, default=200, help="training steps per member and repeat")
  args = parser.parse_args()
  if jax.device_count() < 8:
    raise SystemExit(f"needs 8 devices, found {jax.device_count()}")

  data = load("mnist1d", n_train=4000, n_test=1000, label_noise=0.2)

  def config(mesh_members: int) -> config_lib.ExperimentConfig:
    return config_lib.ExperimentConfig(
        name="sweep", data=config_lib.DataConfig(name="mnist1d", n_train=4000, n_test=1000, label_noise=0.2),
        model=config_lib.ModelConfig(name="mlp", norm="batch_noaffine", kwargs={"hidden": [128, 128]}),
        optim=optimizers.SGD(learning_rate=0.1, momentum=0.9, decay="l2"),
        train=config_lib.TrainConfig(steps=args.steps, batch_size=128, log_every=50, eval_every=args.steps,
                                     num_devices=8, mesh_members=mesh_members),
        seeds=4, arms=[config_lib.Arm("sgd", sweep={"weight_decay": [0.0, 5e-4, 5e-3, 5e-2]})])

  programs = {}
  for side, m in (("members", 8), ("data", 1)):
    (group,) = make_groups(config(m))
    programs[side] = Program(config(m), group, data)
    programs[side].train(progress=False)  # compile
  members = len(programs["members"].group.members)
  assert members == 16

  def run(side):
    def fn():
      program = programs[side]
      program.reset(program.group.members)
      program.train(progress=False)
    return fn

  # Time data / time members = throughput members / throughput data.
  timed = _paired.compare(run("data"), run("members"), min_ratio=TARGET, min_repeats=args.min_repeats,
                          max_repeats=args.max_repeats, calls_per_sample=1)
  member_steps = members * args.steps
  out = {
      "benchmark": "population_sharding", "members": members, "devices": jax.device_count(),
      "device": str(jax.devices()[0]), "model": "mlp[128,128]+BN", "batch": 128, "steps_per_member": args.steps,
      "repeats": timed["repeats"],
      "members_sharded": {"mesh": [8, 1], "member_steps_per_s": member_steps / timed["reference_s"]},
      "data_parallel": {"mesh": [1, 8], "member_steps_per_s": member_steps / timed["candidate_s"]},
      "ratio": timed["ratio"], "ratio_ci95": timed["ratio_ci95"],
      "target_ratio_min": TARGET, "meets_target": timed["meets_target"], "decided": timed["decided"],
      "targets": [_paired.target("members_over_data.throughput", timed)],
      "note": "8 simulated CPU devices sharing this machine's cores (load from other processes included)",
  }
  print(json.dumps(out))


if __name__ == "__main__":
  main()
