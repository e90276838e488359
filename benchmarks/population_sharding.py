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

**K-FAC with distributed inverses** (``--part kfac``). One K-FAC step (``wd_optax.kfac.kfac``, empirical
Fisher, Newton-Schulz inverses refreshed every step: the worst case for inverse work; LAPACK inverses on
8 simulated devices deadlocked XLA:CPU here) of a 64-256-256-256-10 MLP on a batch
of 256, jitted, on one device and with the batch split over 8 devices, there without and with
``inverse_sharding`` over the data axis (each device inverts 1 of the stack of 6 factors of size 256-257 instead
of all 6). Paired, interleaved: 8 devices distributed / 8 devices plain (target <= 1: splitting the
inverses is not slower; on a CPU the 8 simulated devices share the cores, so 8 devices each inverting every
factor is 8 times the inverse work of one) and 8 devices distributed / 1 device (no target: reported with its
interval). One sample is ``--kfac-steps`` calls of the jitted step.

  python benchmarks/population_sharding.py [--part all|population|kfac] [--min-repeats 7] [--max-repeats 21]
      [--steps 200] [--kfac-steps 5] [--kfac-repeats 3]
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


KFAC_SIZES = (64, 256, 256, 256, 10)
KFAC_BATCH = 256


def kfac_steps(args) -> dict:
  """K-FAC step time on 1 device and on 8 (batch split), with and without distributed inverses."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from jax.sharding import Mesh, NamedSharding, PartitionSpec  # pylint: disable=g-import-not-at-top
  from wd_optax import kfac  # pylint: disable=g-import-not-at-top

  class MLP(nnx.Module):
    def __init__(self, rngs):
      self.layers = nnx.List([kfac.Linear(a, b, rngs=rngs) for a, b in zip(KFAC_SIZES[:-1], KFAC_SIZES[1:])])

    def __call__(self, x):
      for layer in self.layers[:-1]:
        x = jax.nn.relu(layer(x))
      return self.layers[-1](x)

  def loss_fn(model, batch):
    logits = model(batch[0])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean(), logits

  rng = np.random.default_rng(0)
  x = rng.normal(size=(KFAC_BATCH, KFAC_SIZES[0])).astype(np.float32)
  y = rng.integers(0, KFAC_SIZES[-1], size=KFAC_BATCH).astype(np.int32)
  model = MLP(nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  params, layers = nnx.to_pure_dict(params), kfac.registered_layers(model)

  def setup(devices: int, distributed: bool):
    mesh = Mesh(np.asarray(jax.devices()[:devices]), ("data",))
    sharding = NamedSharding(mesh, PartitionSpec("data")) if distributed else None
    tx = kfac.kfac(0.01, damping=1e-2, inverse_every=1, inverse="newton_schulz", layers=layers,
                   inverse_sharding=sharding)
    p = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))
    batch = jax.device_put((x, y), NamedSharding(mesh, PartitionSpec("data")))
    state = jax.jit(tx.init)(p)

    # One step per call; Newton-Schulz inverses: LAPACK inverses on 8 simulated devices deadlocked XLA:CPU here.
    def step(p, state, batch):
      _, grads, curvature = kfac.value_grad_and_curvature(loss_fn, nnx.merge(graphdef, p), batch, mode="empirical")
      updates, state = tx.update(nnx.to_pure_dict(grads), state, p, curvature=curvature)
      return optax.apply_updates(p, updates), state

    fn = jax.jit(step)
    jax.block_until_ready(fn(p, state, batch))  # compile
    return lambda: fn(p, state, batch)

  one, plain, split = setup(1, False), setup(8, False), setup(8, True)
  common = dict(min_repeats=args.kfac_repeats, max_repeats=3 * args.kfac_repeats, calls_per_sample=args.kfac_steps,
                block=jax.block_until_ready)
  vs_plain = _paired.compare(split, plain, max_ratio=1.0, **common)
  vs_one = _paired.compare(split, one, **common)
  per_step = lambda seconds: 1e3 * seconds / args.kfac_steps
  return {
      "model": "mlp" + str(list(KFAC_SIZES)), "batch": KFAC_BATCH, "inverse": "newton_schulz", "inverse_every": 1,
      "steps_per_sample": args.kfac_steps,
      "step_ms": {"1_device": per_step(vs_one["reference_s"]), "8_devices": per_step(vs_plain["reference_s"]),
                  "8_devices_distributed": per_step(vs_plain["candidate_s"])},
      "distributed_over_plain_8": {k: vs_plain[k] for k in ("ratio", "ratio_ci95", "repeats")},
      "distributed_8_over_1_device": {k: vs_one[k] for k in ("ratio", "ratio_ci95", "repeats")},
      "target": _paired.target("kfac_distributed_inverses_vs_plain_8_devices.time", vs_plain),
  }


def population(args) -> tuple[dict, list]:
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
      "members": members, "model": "mlp[128,128]+BN", "batch": 128, "steps_per_member": args.steps,
      "repeats": timed["repeats"],
      "members_sharded": {"mesh": [8, 1], "member_steps_per_s": member_steps / timed["reference_s"]},
      "data_parallel": {"mesh": [1, 8], "member_steps_per_s": member_steps / timed["candidate_s"]},
      "ratio": timed["ratio"], "ratio_ci95": timed["ratio_ci95"],
      "target_ratio_min": TARGET, "meets_target": timed["meets_target"], "decided": timed["decided"],
  }
  return out, [_paired.target("members_over_data.throughput", timed)]


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--part", choices=("all", "population", "kfac"), default="all")
  parser.add_argument("--min-repeats", type=int, default=7)
  parser.add_argument("--max-repeats", type=int, default=21)
  parser.add_argument("--steps", type=int, default=200, help="training steps per member and repeat")
  parser.add_argument("--kfac-steps", type=int, default=5, help="K-FAC steps per timed sample")
  parser.add_argument("--kfac-repeats", type=int, default=3, help="least pairs per K-FAC ratio (at most 3x)")
  args = parser.parse_args()
  if jax.device_count() < 8:
    raise SystemExit(f"needs 8 devices, found {jax.device_count()}")
  out = {"benchmark": "population_sharding", "devices": jax.device_count(), "device": str(jax.devices()[0])}
  targets = []
  if args.part in ("all", "population"):
    result, found = population(args)
    out.update(result)
    targets += found
  if args.part in ("all", "kfac"):
    out["kfac"] = kfac_steps(args)
    targets.append(out["kfac"].pop("target"))
  out["targets"] = targets
  out["note"] = "8 simulated CPU devices sharing this machine's cores (load from other processes included)"
  print(json.dumps(out))


if __name__ == "__main__":
  main()
