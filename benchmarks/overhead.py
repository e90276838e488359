"""Overhead of wd_optax's optimizers against the optax chains they reproduce.

Times the jitted update step (update + apply_updates, buffers donated) of

* ``wd_optax.adam(decay="decoupled")`` against ``optax.adamw``, and
* ``wd_optax.sgd(decay="l2")`` against ``optax.chain(optax.add_decayed_weights, optax.sgd)``,

on a ResNet-50-shaped parameter tree (about 25.6M parameters), interleaving the two sides rep by rep in
one process, and prints one JSON object with the median time ratio (ours / optax) and the optimizer-state
byte ratio. Targets: time ratio <= 1.02, state bytes equal.

Usage: python benchmarks/overhead.py [--reps 15] [--steps 5]
"""

from __future__ import annotations

import argparse
import collections
import json
import platform
import re
import statistics
import time

import jax
import jax.numpy as jnp
import optax

import wd_optax


def resnet50_shaped_params() -> dict:
  """Kernels, BN scales/biases and the classifier of ResNet-50 (ImageNet, 1000 classes)."""
  params = {"stem": {"kernel": (7, 7, 3, 64), "bn_scale": (64,), "bn_bias": (64,)}}
  in_ch = 64
  for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
    for block in range(blocks):
      name = f"stage{stage}/block{block}"
      layer = {"conv1": (1, 1, in_ch, width), "conv2": (3, 3, width, width), "conv3": (1, 1, width, 4 * width)}
      if block == 0:
        layer["proj"] = (1, 1, in_ch, 4 * width)
      for conv, shape in list(layer.items()):
        params[f"{name}/{conv}"] = {"kernel": shape, "bn_scale": (shape[-1],), "bn_bias": (shape[-1],)}
      in_ch = 4 * width
  params["classifier"] = {"kernel": (2048, 1000), "bias": (1000,)}
  keys = iter(jax.random.split(jax.random.key(0), 1000))
  return {name: {k: 0.01 * jax.random.normal(next(keys), shape) for k, shape in leaves.items()}
          for name, leaves in params.items()}


def tree_bytes(tree) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def make_step(tx):
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state
  return jax.jit(step, donate_argnums=(0, 1))


def compiled_op_counts(tx, params) -> collections.Counter:
  """Counts of each HLO op in the compiled update step: equal counts mean equal work."""
  state = tx.init(params)
  step = jax.jit(lambda p, s, g: optax.apply_updates(p, tx.update(g, s, p)[0]))
  text = step.lower(params, state, params).compile().as_text()
  return collections.Counter(re.findall(r"= \S+ (\w+)\(", re.sub(r"metadata=\{[^}]*\}", "", text)))


def measure(pairs: dict, params, grads, reps: int, steps: int) -> dict:
  runners = {}
  for name, tx in pairs.items():
    own = jax.tree.map(jnp.copy, params)
    state = tx.init(own)
    runners[name] = [make_step(tx), own, state, tree_bytes(state)]
    step, p, s, _ = runners[name]
    p, s = step(p, s, grads)  # compile outside the timing
    jax.block_until_ready(p)
    runners[name][1:3] = [p, s]
  times = {name: [] for name in pairs}
  for _ in range(reps):
    for name in pairs:  # interleaved: both sides see the same machine load
      step, p, s, _ = runners[name]
      start = time.perf_counter()
      for _ in range(steps):
        p, s = step(p, s, grads)
      jax.block_until_ready(p)
      times[name].append((time.perf_counter() - start) / steps)
      runners[name][1:3] = [p, s]
  return {name: {"median_step_s": statistics.median(t), "state_bytes": runners[name][3]}
          for name, t in times.items()}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--reps", type=int, default=15)
  parser.add_argument("--steps", type=int, default=5)
  args = parser.parse_args()

  params = resnet50_shaped_params()
  grads = jax.tree.map(lambda p: 1e-3 * jnp.sign(p), params)
  lr, wd = 1e-3, 1e-4
  results = {"benchmark": "overhead", "num_params": sum(x.size for x in jax.tree.leaves(params)),
             "device": jax.devices()[0].device_kind, "platform": platform.platform(),
             "reps": args.reps, "steps_per_rep": args.steps, "comparisons": {}}
  comparisons = {
      "adam_decoupled_vs_optax_adamw": {
          "wd_optax": wd_optax.adam(lr, weight_decay=wd, decay="decoupled"),
          "optax": optax.adamw(lr, weight_decay=wd)},
      "sgd_l2_vs_optax_chain": {
          "wd_optax": wd_optax.sgd(lr, momentum=0.9, weight_decay=wd, decay="l2"),
          "optax": optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr, momentum=0.9))},
  }
  for label, pair in comparisons.items():
    measured = measure(pair, params, grads, args.reps, args.steps)
    ours, ref = measured["wd_optax"], measured["optax"]
    ours_ops, ref_ops = (compiled_op_counts(pair[side], params) for side in ("wd_optax", "optax"))
    results["comparisons"][label] = {
        "compiled_ops_differing": {op: ours_ops[op] - ref_ops[op]
                                   for op in sorted(set(ours_ops) | set(ref_ops)) if ours_ops[op] != ref_ops[op]},
        **{f"{side}_{k}": v for side, m in measured.items() for k, v in m.items()},
        "time_ratio": ours["median_step_s"] / ref["median_step_s"],
        "state_bytes_ratio": ours["state_bytes"] / ref["state_bytes"],
        "target_time_ratio": 1.02,
    }
  print(json.dumps(results, indent=2))


if __name__ == "__main__":
  main()
