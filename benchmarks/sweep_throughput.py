"""Sweep throughput: 16 members (4 weight decays x 4 seeds), vmapped vs the best sequential baseline vs the harness.

Same model, data and steps throughout, member-steps per second compared in paired, interleaved repeats
(``benchmarks/_paired.py``: ABBA order, each sample one whole sweep):

* ``best_sequential`` (the baseline): one single-member :class:`experiments.train.Program`, built and
  compiled once, then :meth:`~experiments.train.Program.reset` to each member in turn and trained
  (``Program.train``, with its evaluation and logging). Nothing is compiled twice.
* ``vmapped``: one :class:`~experiments.train.Program` for all 16 members, built, compiled and trained.
* ``harness``: ``experiments.train.workdir.run_experiment`` with ``train.population=auto`` (writing its work
  directory), which runs the members vmapped or one after another as :mod:`experiments.train.execution`
  chooses for this device; the choice is reported.

``end_to_end`` includes building and compiling; ``steady_state`` reuses the compiled programs (``reset`` then
``train``); ``build_and_compile_s`` is their difference per sweep. Targets (under ``"targets"``): the
harness's end-to-end throughput is at least that of the best sequential baseline (>= 0.95, the margin of
timing two runs of what may be the same code); on an accelerator also vmapped / best sequential >= 1 end to
end. On a CPU vmapping gains nothing (16 small GEMMs share no operand) while it compiles longer, so there the
vmapped ratio is reported without a target and the harness runs the members one after another.

  python benchmarks/sweep_throughput.py [--full] [--steps 300] [--max-repeats 9]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from experiments import config as config_lib  # noqa: E402
from experiments import optimizers  # noqa: E402
from experiments.data import load  # noqa: E402
from experiments.train import Program, make_groups  # noqa: E402
from experiments.train import execution  # noqa: E402
from experiments.train.workdir import run_experiment  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _paired  # noqa: E402

HARNESS_TARGET = 0.95
VMAP_TARGET_ACCELERATOR = 1.0


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--full", action="store_true", help="the study-sized model and more steps")
  parser.add_argument("--steps", type=int, default=None, help="training steps per member")
  parser.add_argument("--hidden", type=int, nargs="+", default=None, help="MLP widths (default 128 128)")
  parser.add_argument("--min-repeats", type=int, default=5)
  parser.add_argument("--max-repeats", type=int, default=9)
  args = parser.parse_args()
  hidden = args.hidden or ([256, 256] if args.full else [128, 128])
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
  choice, why = execution.choose(config, group)

  def sequential_sweep(program):
    for i, member in enumerate(members):
      if i or program.group.members != [member]:
        program.reset([member])
      program.train(progress=False)

  def e2e_vmapped():
    Program(config, group, data).train(progress=False)

  def e2e_sequential():
    sequential_sweep(Program(config, dataclasses.replace(group, members=members[:1]), data))

  def e2e_harness():
    with tempfile.TemporaryDirectory() as workdir:
      run_experiment(config, workdir, progress=False, dataset=data, log=lambda line: None)

  vmapped = Program(config, group, data)
  single = Program(config, dataclasses.replace(group, members=members[:1]), data)

  def steady_vmapped():
    vmapped.reset(members)
    vmapped.train(progress=False)

  def steady_sequential():
    sequential_sweep(single)

  start = time.perf_counter()
  steady_vmapped(), steady_sequential()  # compile the steady-state programs
  first_s = time.perf_counter() - start
  repeats = {"min_repeats": args.min_repeats, "max_repeats": args.max_repeats, "calls_per_sample": 1}
  accelerator = jax.devices()[0].platform != "cpu"
  # Time sequential / time vmapped = throughput vmapped / throughput sequential.
  print(f"[sweep_throughput] first run of both: {first_s:.1f} s; timing end to end ...", file=sys.stderr, flush=True)
  e2e = _paired.compare(e2e_sequential, e2e_vmapped, **repeats,
                        **({"min_ratio": VMAP_TARGET_ACCELERATOR} if accelerator else {}))
  print(f"[sweep_throughput] end to end: {e2e['repeats']} pairs; timing steady state ...", file=sys.stderr, flush=True)
  steady = _paired.compare(steady_sequential, steady_vmapped, **repeats)
  print(f"[sweep_throughput] steady: {steady['repeats']} pairs; timing the harness ...", file=sys.stderr, flush=True)
  harness = _paired.compare(e2e_sequential, e2e_harness, min_ratio=HARNESS_TARGET, **repeats)

  member_steps = len(members) * steps
  rate = lambda seconds: member_steps / seconds
  out = {"benchmark": "sweep_throughput", "members": len(members), "model": f"mlp{hidden}+BN", "batch": 128,
         "steps_per_member": steps, "device": str(jax.devices()[0]), "harness_population": choice,
         "harness_population_why": why, "first_run_of_both_s": first_s}
  for name, side in (("vmapped", "reference_s"), ("best_sequential", "candidate_s")):
    out[name] = {"end_to_end_member_steps_per_s": rate(e2e[side]),
                 "steady_state_member_steps_per_s": rate(steady[side]),
                 "build_and_compile_s": e2e[side] - steady[side]}
  out["harness"] = {"end_to_end_member_steps_per_s": rate(harness["reference_s"])}
  out["vmapped_over_best_sequential"] = {
      kind: {"ratio": r["ratio"], "ratio_ci95": r["ratio_ci95"], "repeats": r["repeats"]}
      for kind, r in (("end_to_end", e2e), ("steady_state", steady))}
  out["harness_over_best_sequential"] = {"end_to_end": {"ratio": harness["ratio"],
                                                        "ratio_ci95": harness["ratio_ci95"],
                                                        "repeats": harness["repeats"]}}
  out["targets"] = [_paired.target("harness_over_best_sequential.end_to_end_throughput", harness)]
  if accelerator:
    out["targets"].append(_paired.target("vmapped_over_best_sequential.end_to_end_throughput", e2e))
  out["meets_target"] = all(t["meets_target"] for t in out["targets"])
  print(json.dumps(out))


if __name__ == "__main__":
  main()
