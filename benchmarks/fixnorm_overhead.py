"""Step time of ``wd_optax.fixnorm`` against ``wd_optax.sgd`` on the same BatchNorm conv net.

FixNorm adds one norm reduction and one rescale per fixed leaf to SGD with momentum, in place of the
decay's multiply-add; target: fixnorm step time / sgd step time <= 1.05. Both optimizers train the
same model (conv kernels before BatchNorm fixed at their initial norms, classifier kernel fixed at a
given norm) with a jitted pure training step (forward, backward, update, BatchNorm statistics).
Timings are paired and interleaved (``benchmarks/_paired.py``: ABBA order, samples of at least 0.2 s ended
by ``block_until_ready``, repeats until the 95% interval of the ratio excludes the target), so load
drifting on a shared machine cancels. Prints one JSON object; the target is under ``"targets"``.

Usage: python benchmarks/fixnorm_overhead.py [--full] [--max-repeats N]
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

import wd_optax
from wd_optax.projections import fixnorm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _paired  # noqa: E402

TARGET = 1.05


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
  parser.add_argument("--max-repeats", type=int, default=None, help="paired repeats at most (default 41, 61 full)")
  args = parser.parse_args()
  width, batch, image = (64, 128, 32) if args.full else (32, 64, 16)
  max_repeats = args.max_repeats or (61 if args.full else 41)

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
    carry = [params, rest, tx.init(params)]

    def run(step=step, carry=carry):
      *carry[:], loss = step(*carry, x, y)
      return carry, loss

    for _ in range(2):  # compile, then one more to settle caches
      jax.block_until_ready(run())
    runs[name] = run

  timed = _paired.compare(runs["fixnorm"], runs["sgd"], max_ratio=TARGET, max_repeats=max_repeats,
                          block=jax.block_until_ready)
  print(json.dumps({
      "benchmark": "fixnorm_overhead",
      "metric": "paired step time fixnorm / wd_optax.sgd(momentum=0.9, weight_decay=5e-4)",
      "ratio": round(timed["ratio"], 4),
      "ratio_ci95": [round(v, 4) for v in timed["ratio_ci95"]],
      "target": TARGET,
      "meets_target": timed["meets_target"],
      "decided": timed["decided"],
      "targets": [_paired.target("fixnorm_over_sgd.step_time", timed)],
      "fixnorm_step_ms": round(1e3 * timed["candidate_s"], 3),
      "sgd_step_ms": round(1e3 * timed["reference_s"], 3),
      "model": {"convs": 3, "width": width, "batch": batch, "image": image,
                "params": int(sum(p.size for p in jax.tree.leaves(params)))},
      "repeats": timed["repeats"],
      "steps_per_sample": timed["calls_per_sample"],
      "device": jax.devices()[0].device_kind,
      "platform": platform.platform(),
      "full": args.full,
  }))


if __name__ == "__main__":
  main()
