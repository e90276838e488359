"""Sweep throughput: 16 members (4 weight decays x 4 seeds) trained as one vmapped program vs one after another.

Two comparisons, same harness (:class:`experiments.train.Program`), model, data and steps:

* ``end_to_end`` (the target): what a sweep costs a researcher. Vmapped: one program for all 16 members,
  built, compiled and trained (``Program.train``, with its evaluation and logging). Sequential: 16 runs one
  after another, each built, compiled and trained on its own, as 16 invocations of a single-run script
  would (in one process, so interpreter start-up is not even counted).
* ``steady_state``: compilation excluded (the sequential side reuses one compiled single-member program via
  ``Program.reset``). On a CPU the per-member arithmetic is the same either way (a batched matmul costs
  what its 16 slices cost), so this ratio is near 1 there; on an accelerator vmapping also fills the chip.

Repeats alternate between the two sides; medians are reported. Prints one JSON object; target:
end-to-end vmapped / sequential throughput >= 3 on CPU.

  python benchmarks/sweep_throughput.py [--full] [--repeats 1] [--steps 300]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from experiments import config as config_lib  # noqa: E402
from experiments import optimizers  # noqa: E402
from experiments.data import load  # noqa: E402
from experiments.train import Program, make_groups  # noqa: E402


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--full", action="store_true", help="the study-sized model and more steps")
  parser.add_argument("--repeats", type=int, default=1)
  parser.add_argument("--steps", type=int, default=None, help="training steps per member")
  args = parser.parse_args()
  hidden = [256, 256] if args.full else [128, 128]
  steps = args.steps or (1200 if args.full else 300)

  data = load("mnist1d", n_train=4000, n_test=1000, label_noise=0.2)
  config = config_lib.ExperimentConfig(
      name="sweep", data=config_lib.DataConfig(name="mnist1d", n_train=4000, n_test=1000, label_noise=0.2),
      model=config_lib.ModelConfig(name="mlp", norm="batch_noaffine", kwargs={"hidden": hidden}),
      optim=optimizers.SGD(learning_rate=0.1, momentum=0.9, decay="l2"),
      train=config_lib.TrainConfig(steps=steps, batch_size=128, log_every=50, eval_every=steps, num_devices=1),
      seeds=4, arms=[config_lib.Arm("sgd", sweep={"weight_decay": [0.0, 5e-4, 5e-3, 5e-2]})])
  (group,) = make_groups(config)
  members = group.members
  assert len(members) == 16

  def end_to_end_vmapped():
    Program(config, group, data).train(progress=False)

  def end_to_end_sequential():
    for member in members:
      Program(config, dataclasses.replace(group, members=[member]), data).train(progress=False)

  vmapped = Program(config, group, data)
  single = Program(config, dataclasses.replace(group, members=members[:1]), data)

  def steady_vmapped():
    vmapped.reset(members)
    vmapped.train(progress=False)

  def steady_sequential():
    for member in members:
      single.reset([member])
      single.train(progress=False)

  steady_vmapped(), steady_sequential()  # compile the steady-state programs
  runs = {"end_to_end": (end_to_end_vmapped, end_to_end_sequential), "steady_state": (steady_vmapped,
                                                                                       steady_sequential)}
  times = {(kind, side): [] for kind in runs for side in ("vmapped", "sequential")}
  for _ in range(args.repeats):
    for kind, (vm_fn, seq_fn) in runs.items():
      for side, fn in (("vmapped", vm_fn), ("sequential", seq_fn)):
        start = time.perf_counter()
        fn()
        times[(kind, side)].append(time.perf_counter() - start)
  member_steps = len(members) * steps
  out = {"benchmark": "sweep_throughput", "members": len(members), "model": f"mlp{hidden}+BN", "batch": 128,
         "steps_per_member": steps, "repeats": args.repeats, "device": str(jax.devices()[0])}
  for kind in runs:
    vm = member_steps / float(np.median(times[(kind, "vmapped")]))
    seq = member_steps / float(np.median(times[(kind, "sequential")]))
    out[kind] = {"vmapped_member_steps_per_s": vm, "sequential_member_steps_per_s": seq, "speedup": vm / seq}
  out["target_speedup_min"] = 3.0
  out["meets_target"] = out["end_to_end"]["speedup"] >= 3.0
  print(json.dumps(out))


if __name__ == "__main__":
  main()
