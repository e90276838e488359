"""Step-time overhead of chaining ``wd_optax.monitor`` last, on a small CNN training step (flax NNX).

Target (issue 3): at most 5% added to the step time. Every variant runs the same jitted pure step
(``nnx.split`` once, ``jax.jit`` a function of the state), interleaved in repeats (rotating order);
the reported ratio is the median over repeats of monitored/baseline time per step, for
``monitor()`` (per-leaf scalars in the state) and ``monitor(packed=True)`` (one vector per field).
On a shared machine the per-repeat ratios are noisy: read ``ratio_median`` together with its
spread, the ratio of the fastest steps, the process-CPU-time ratio, and XLA's static cost estimates
(flops and bytes accessed of the compiled steps), which load cannot disturb. Prints one JSON object.

Usage: python benchmarks/monitor_overhead.py [--full] [--repeats N] [--steps N]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from wd_optax.monitoring import monitor


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


def time_steps(step, carry, x, y, num_steps):
  """Mean wall and process (CPU) seconds per step, and the carry after the steps."""
  params, rest, opt_state = carry
  start, start_cpu = time.perf_counter(), time.process_time()
  for _ in range(num_steps):
    params, rest, opt_state, loss = step(params, rest, opt_state, x, y)
  jax.block_until_ready((params, opt_state, loss))
  wall = (time.perf_counter() - start) / num_steps
  cpu = (time.process_time() - start_cpu) / num_steps
  return (wall, cpu), (params, rest, opt_state)


def xla_cost(step, carry, x, y):
  """XLA's static cost estimate of the compiled step: deterministic, unaffected by machine load."""
  analysis = step.lower(*carry, x, y).compile().cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  return {k: float(analysis.get(k, float("nan"))) for k in ("flops", "bytes accessed")}


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--full", action="store_true", help="wider net, bigger batch, more repeats")
  parser.add_argument("--repeats", type=int, default=None)
  parser.add_argument("--steps", type=int, default=None)
  args = parser.parse_args()
  width, batch, image, repeats, steps = (32, 128, 32, 21, 20) if args.full else (16, 64, 16, 15, 15)
  repeats = args.repeats or repeats
  steps = args.steps or steps

  key_x, key_y = jax.random.split(jax.random.key(0))
  x = jax.random.normal(key_x, (batch, image, image, 3))
  y = jax.random.randint(key_y, (batch,), 0, 10)
  base_tx = optax.adamw(1e-3, weight_decay=1e-2)
  variants = {
      "baseline": make_step(base_tx, width, 10),
      "monitored": make_step(optax.chain(base_tx, monitor()), width, 10),
      "monitored_packed": make_step(optax.chain(base_tx, monitor(packed=True)), width, 10),
  }
  # Compile and warm up both before timing.
  for name, (step, carry) in variants.items():
    _, carry = time_steps(step, carry, x, y, 2)
    variants[name] = (step, carry)

  costs = {name: xla_cost(step, carry, x, y) for name, (step, carry) in variants.items()}
  times = {name: [] for name in variants}
  cpu_times = {name: [] for name in variants}
  for repeat in range(repeats):
    # Rotate the order so that slow drift in machine load hits every variant alike.
    names = list(variants)
    order = names[repeat % len(names):] + names[:repeat % len(names)]
    for name in order:
      step, carry = variants[name]
      (seconds, cpu_seconds), carry = time_steps(step, carry, x, y, steps)
      variants[name] = (step, carry)
      times[name].append(seconds)
      cpu_times[name].append(cpu_seconds)
  baseline = times["baseline"]
  report = {
      "benchmark": "monitor_overhead",
      "model": f"SmallCNN(width={width}) on {batch}x{image}x{image}x3, adamw",
      "num_params": int(sum(w.size for w in jax.tree.leaves(variants["baseline"][1][0]))),
      "num_param_leaves": len(jax.tree.leaves(variants["baseline"][1][0])),
      "repeats": repeats,
      "steps_per_repeat": steps,
      "baseline_step_ms": 1e3 * statistics.median(baseline),
  }
  for name in ("monitored", "monitored_packed"):
    ratios = [m / b for m, b in zip(times[name], baseline)]
    cpu_ratios = [m / b for m, b in zip(cpu_times[name], cpu_times["baseline"])]
    report[name] = {
        "step_ms": 1e3 * statistics.median(times[name]),
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "ratio_of_min_step_ms": min(times[name]) / min(baseline),
        "cpu_time_ratio_median": statistics.median(cpu_ratios),
        "xla_flops_ratio": costs[name]["flops"] / costs["baseline"]["flops"],
        "xla_bytes_accessed_ratio": costs[name]["bytes accessed"] / costs["baseline"]["bytes accessed"],
        "meets_target": statistics.median(ratios) <= 1.05,
    }
  report.update({"target_ratio": 1.05, "device": str(jax.devices()[0]), "machine": platform.machine()})
  print(json.dumps(report))


if __name__ == "__main__":
  main()
