"""Harness step time vs a minimal hand-written jitted loop, same model, batch and optimizer.

The reference is what one writes by hand: ``nnx.split`` once, a ``jax.jit`` step taking (params, batch
statistics, optimizer state, batch indices), gathering the batch on device and applying ``optax`` SGD with
momentum and L2, driven by a Python loop. The harness runs the same training through
:class:`experiments.train.Program` (one member): on-device batch shuffling, its optimizer built from the config
by ``wd_optax``, ``Program.train``'s host loop with ``log_every=25`` steps per ``lax.scan`` chunk, a fetch,
NaN check and metric records per chunk, and per-layer norms / effective lr / angular update at each chunk end.
Timings exclude compilation. The two are timed in paired, interleaved repeats (``benchmarks/_paired.py``:
ABBA order, samples of at least ``--min-seconds``, repeats until the 95% interval of the ratio excludes the
target or ``--max-repeats`` pairs are done).

Prints one JSON object; target (under ``"targets"``): ratio = harness / reference <= 1.05, with its interval.

  python benchmarks/harness_overhead.py [--full] [--max-repeats 41] [--steps 100]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from experiments import config as config_lib  # noqa: E402
from experiments import optimizers  # noqa: E402
from experiments.data import load  # noqa: E402
from experiments.models import build  # noqa: E402
from experiments.train import Program, make_groups  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _paired  # noqa: E402

TARGET = 1.05


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--full", action="store_true", help="wider model and more steps")
  parser.add_argument("--max-repeats", type=int, default=41, help="paired repeats at most")
  parser.add_argument("--min-seconds", type=float, default=0.5, help="seconds per timed sample at least")
  parser.add_argument("--steps", type=int, default=None, help="steps per timed repeat")
  args = parser.parse_args()
  hidden = [512, 512] if args.full else [256, 256]
  steps = args.steps or (200 if args.full else 100)
  batch, lr, momentum, wd = 128, 0.1, 0.9, 5e-4

  data = load("mnist1d", n_train=4000, n_test=1000, label_noise=0.2)
  config = config_lib.ExperimentConfig(
      name="bench", data=config_lib.DataConfig(name="mnist1d", n_train=4000, n_test=1000, label_noise=0.2),
      model=config_lib.ModelConfig(name="mlp", norm="batch_noaffine", kwargs={"hidden": hidden}),
      optim=optimizers.SGD(learning_rate=lr, momentum=momentum, weight_decay=wd, decay="l2"),
      train=config_lib.TrainConfig(steps=10 ** 6, batch_size=batch, log_every=25, eval_every=10 ** 6 // 25 * 25,
                                   num_devices=1),
      seeds=1, arms=[config_lib.Arm("base")])
  (group,) = make_groups(config)
  program = Program(config, group, data)

  # The hand-written reference.
  model = build("mlp", num_classes=10, rngs=nnx.Rngs(0), norm="batch_noaffine", in_features=40, hidden=hidden)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
  tx = optax.chain(optax.add_decayed_weights(wd), optax.trace(decay=momentum), optax.scale(-lr))
  opt_state = tx.init(params)
  x_all, y_all = jnp.asarray(data.x_train), jnp.asarray(data.y_train)

  @jax.jit
  def step(params, rest, opt_state, idx):
    x, y = x_all[idx], y_all[idx]
    def loss_fn(params):
      m = nnx.merge(graphdef, params, rest)
      logits = m(x, train=True)
      _, _, new_rest = nnx.split(m, nnx.Param, ...)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), nnx.to_pure_dict(new_rest)
    (loss, rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), rest, opt_state, loss

  rng = np.random.default_rng(0)
  order = [rng.permutation(4000)[:batch].astype(np.int32) for _ in range(steps)]
  state = [params, rest, opt_state]

  def run_reference():
    p, r, o = state
    for idx in order:
      p, r, o, loss = step(p, r, o, idx)
    jax.block_until_ready(loss)
    state[:] = [p, r, o]

  def run_harness():  # the real host loop: chunks of log_every steps, fetch, NaN check, metric records
    program.train(progress=False, stop_after=program.step + steps)

  run_reference()  # compile
  run_harness()
  timed = _paired.compare(run_harness, run_reference, max_ratio=TARGET, max_repeats=args.max_repeats,
                          min_seconds=args.min_seconds)
  print(json.dumps({
      "benchmark": "harness_overhead", "model": f"mlp{hidden}+BN", "batch": batch, "steps_per_call": steps,
      "repeats": timed["repeats"], "calls_per_sample": timed["calls_per_sample"], "device": str(jax.devices()[0]),
      "reference_step_ms": timed["reference_s"] / steps * 1e3, "harness_step_ms": timed["candidate_s"] / steps * 1e3,
      "ratio": timed["ratio"], "ratio_ci95": timed["ratio_ci95"], "target_ratio_max": TARGET,
      "meets_target": timed["meets_target"], "decided": timed["decided"],
      "targets": [_paired.target("harness_over_reference.step_time", timed)],
  }))


if __name__ == "__main__":
  main()
