"""Step time of ``wd_optax.fixnorm`` against ``wd_optax.sgd`` on the same BatchNorm conv net.

FixNorm adds one norm reduction and one rescale per fixed leaf to SGD with momentum, in place of the
decay's multiply-add; target: fixnorm step time / sgd step time <= 1.05. Both optimizers train the
same model (conv kernels before BatchNorm fixed at their initial norms, classifier kernel fixed at a
given norm) with a jitted pure training step (forward, backward, update, BatchNorm statistics).
Timings are interleaved in alternating order, each over a block of steps ended by
``block_until_ready``. The result is the median over repeats of the ratio of adjacent blocks (paired, so
load drifting on a shared machine cancels), with the ratio of the medians beside it. Prints one JSON object.

Usage: python benchmarks/fixnorm_overhead.py [--full] [--repeats N] [--steps N]
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

import wd_optax
from wd_optax.projections import fixnorm


class ConvNet(nnx.Module):
  """Three bias-free conv layers, each followed by BatchNorm without scale/offset, then a linear head."""

  def __init__(self, width: int, classes: int, rngs: nnx.Rngs):
    widths = [3, width, 2 * width, 2 * width]
    self.convs = nnx.List([
        nnx.Conv(widths[i], widths[i + 1], (3, 3), strides=(1 if i == 0 else 2), use_bias=False, rngs=rngs)
        for i in range(3)])
    self.norms = nnx.List([
        nnx.BatchNorm(widths[i + 1], use_scale=False, use_bias=False, rngs=rngs) for i in range(3)])
    self.head = nnx.Linear(widths[-1], classes, rngs=rngs)

  def __call__(self, x):
    for conv, norm in zip(self.convs, self.norms):
      x = jax.nn.relu(norm(conv(x)))
    return self.head(x.mean(axis=(1, 2)))


def _make_step(graphdef, tx):
  def loss_fn(params, rest, x, y):
    model = nnx.merge(graphdef, params, rest, copy=True)
    logits = model(x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, nnx.state(model, nnx.BatchStat)

  @jax.jit
  def step(params, rest, opt_state, x, y):
    (loss, rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, rest, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), rest, opt_state, loss

  return step


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--full", action="store_true", help="bigger model and batch, more repeats")
  parser.add_argument("--repeats", type=int, default=None, help="timed blocks per optimizer")
  parser.add_argument("--steps", type=int, default=None, help="steps per timed block")
  args = parser.parse_args()
  width, batch, image = (64, 128, 32) if args.full else (32, 64, 16)
  repeats = args.repeats or (40 if args.full else 30)
  steps = args.steps or (10 if args.full else 5)

  model = ConvNet(width, 10, nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  kernels_before_norm = wd_optax.masks.include(r"^convs/\d+/kernel$")
  head_kernel = wd_optax.masks.include(r"^head/kernel$")
  optimizers = {
      "fixnorm": fixnorm(0.1, classifier_norm=4.0, classifier_mask=head_kernel,
                         scale_invariant_mask=kernels_before_norm, momentum=0.9),
      "sgd": wd_optax.sgd(0.1, momentum=0.9, weight_decay=5e-4, mask=wd_optax.masks.kernels()),
  }
  key_x, key_y = jax.random.split(jax.random.key(0))
  x = jax.random.normal(key_x, (batch, image, image, 3))
  y = jax.random.randint(key_y, (batch,), 0, 10)

  runs = {}
  for name, tx in optimizers.items():
    step = _make_step(graphdef, tx)
    carry = (params, rest, tx.init(params))
    for _ in range(2):  # compile, then one more to settle caches
      *carry, loss = step(*carry, x, y)
      jax.block_until_ready(loss)
    runs[name] = (step, carry)

  times = {name: [] for name in runs}
  for r in range(repeats):
    order = list(runs) if r % 2 == 0 else list(runs)[::-1]
    for name in order:
      step, carry = runs[name]
      start = time.perf_counter()
      for _ in range(steps):
        *carry, loss = step(*carry, x, y)
      jax.block_until_ready((carry, loss))
      times[name].append((time.perf_counter() - start) / steps)
      runs[name] = (step, carry)

  medians = {name: statistics.median(t) for name, t in times.items()}
  ratio = statistics.median(f / s for f, s in zip(times["fixnorm"], times["sgd"]))
  print(json.dumps({
      "benchmark": "fixnorm_overhead",
      "metric": "median over interleaved repeats of step time fixnorm / wd_optax.sgd(momentum=0.9, "
                "weight_decay=5e-4)",
      "ratio": round(ratio, 4),
      "ratio_of_medians": round(medians["fixnorm"] / medians["sgd"], 4),
      "target": 1.05,
      "passed": ratio <= 1.05,
      "fixnorm_step_ms": round(1e3 * medians["fixnorm"], 3),
      "sgd_step_ms": round(1e3 * medians["sgd"], 3),
      "fixnorm_step_ms_iqr": [round(1e3 * q, 3) for q in statistics.quantiles(times["fixnorm"], n=4)[::2]],
      "sgd_step_ms_iqr": [round(1e3 * q, 3) for q in statistics.quantiles(times["sgd"], n=4)[::2]],
      "model": {"convs": 3, "width": width, "batch": batch, "image": image,
                "params": int(sum(p.size for p in jax.tree.leaves(params)))},
      "repeats": repeats,
      "steps_per_block": steps,
      "device": jax.devices()[0].device_kind,
      "platform": platform.platform(),
      "full": args.full,
  }))


if __name__ == "__main__":
  main()
