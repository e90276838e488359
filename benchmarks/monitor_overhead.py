"""Step-time overhead of chaining ``wd_optax.monitor`` last, on a small CNN training step (flax NNX).

Target (issue 3): at most 5% added to the step time. Every variant runs the same jitted pure step
(``nnx.split`` once, ``jax.jit`` a function of the state). ``monitor()`` (per-leaf scalars in the state)
and ``monitor(packed=True)`` (one vector per field) are each timed against the baseline in paired,
interleaved repeats (``benchmarks/_paired.py``: ABBA order, repeats until the 95% interval of the ratio
excludes the target); XLA's static cost estimates (flops and bytes accessed of the compiled steps), which
load cannot disturb, are reported beside. Prints one JSON object; the targets are under ``"targets"``.

Usage: python benchmarks/monitor_overhead.py [--full] [--max-repeats N]
"""

from __future__ import annotations

import argparse
import json
import platform
import os
import sys

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from wd_optax.monitoring import monitor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _paired  # noqa: E402

TARGET = 1.05


class SmallCNN(nnx.Module):
  """Conv-BN-ReLU ×2, global average pool, linear classifier."""

  def __init__(self, width: int, num_classes: int, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(3, width, (3, 3), use_bias=False, rngs=rngs)
    self.bn1 = nnx.BatchNorm(width, rngs=rngs)
    self.conv2 = nnx.Conv(width, 2 * width, (3, 3), strides=(2, 2), use_bias=False, rngs=rngs)
    self.bn2 = nnx.BatchNorm(2 * width, rngs=rngs)
    self.head = nnx.Linear(2 * width, num_classes, rngs=rngs)

  def __call__(self, x):
    x = jax.nn.relu(self.bn1(self.conv1(x)))
    x = jax.nn.relu(self.bn2(self.conv2(x)))
    return self.head(x.mean(axis=(1, 2)))


def make_step(tx, width, num_classes, seed=0):
  """A jitted pure training step ``(graphdef fixed) state, opt_state, x, y -> state, opt_state, loss``."""
  model = SmallCNN(width, num_classes, nnx.Rngs(seed))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  params = nnx.as_pure(params)
  rest = nnx.as_pure(rest)
  opt_state = tx.init(params)

  def loss_fn(params, rest, x, y):
    model = nnx.merge(graphdef, params, rest)
    logits = model(x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, nnx.as_pure(nnx.state(model, nnx.Not(nnx.Param)))

  @jax.jit
  def step(params, rest, opt_state, x, y):
    (loss, rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, rest, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), rest, opt_state, loss

  return step, (params, rest, opt_state)


def xla_cost(step, carry, x, y):
  """XLA's static cost estimate of the compiled step: deterministic, unaffected by machine load."""
  analysis = step.lower(*carry, x, y).compile().cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  return {k: float(analysis.get(k, float("nan"))) for k in ("flops", "bytes accessed")}


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--full", action="store_true", help="wider net, bigger batch, more repeats allowed")
  parser.add_argument("--max-repeats", type=int, default=None, help="paired repeats at most (default 41, 61 full)")
  args = parser.parse_args()
  width, batch, image = (32, 128, 32) if args.full else (16, 64, 16)
  max_repeats = args.max_repeats or (61 if args.full else 41)

  key_x, key_y = jax.random.split(jax.random.key(0))
  x = jax.random.normal(key_x, (batch, image, image, 3))
  y = jax.random.randint(key_y, (batch,), 0, 10)
  base_tx = optax.adamw(1e-3, weight_decay=1e-2)
  variants = {
      "baseline": make_step(base_tx, width, 10),
      "monitored": make_step(optax.chain(base_tx, monitor()), width, 10),
      "monitored_packed": make_step(optax.chain(base_tx, monitor(packed=True)), width, 10),
  }
  costs = {name: xla_cost(step, carry, x, y) for name, (step, carry) in variants.items()}
  runs = {}
  for name, (step, carry) in variants.items():
    carry = list(carry)

    def run(step=step, carry=carry):
      *carry[:], loss = step(*carry, x, y)
      return carry, loss

    for _ in range(2):  # compile and warm up before timing
      jax.block_until_ready(run())
    runs[name] = run

  params = variants["baseline"][1][0]
  report = {
      "benchmark": "monitor_overhead",
      "model": f"SmallCNN(width={width}) on {batch}x{image}x{image}x3, adamw",
      "num_params": int(sum(w.size for w in jax.tree.leaves(params))),
      "num_param_leaves": len(jax.tree.leaves(params)),
      "targets": [],
  }
  for name in ("monitored", "monitored_packed"):
    timed = _paired.compare(runs[name], runs["baseline"], max_ratio=TARGET, max_repeats=max_repeats,
                            block=jax.block_until_ready)
    report["baseline_step_ms"] = 1e3 * timed["reference_s"]
    report[name] = {
        "step_ms": 1e3 * timed["candidate_s"],
        "ratio": timed["ratio"],
        "ratio_ci95": timed["ratio_ci95"],
        "repeats": timed["repeats"],
        "steps_per_sample": timed["calls_per_sample"],
        "xla_flops_ratio": costs[name]["flops"] / costs["baseline"]["flops"],
        "xla_bytes_accessed_ratio": costs[name]["bytes accessed"] / costs["baseline"]["bytes accessed"],
        "meets_target": timed["meets_target"],
        "decided": timed["decided"],
    }
    report["targets"].append(_paired.target(f"{name}_over_baseline.step_time", timed))
  report.update({"target_ratio": TARGET, "device": str(jax.devices()[0]), "machine": platform.machine()})
  print(json.dumps(report))


if __name__ == "__main__":
  main()
