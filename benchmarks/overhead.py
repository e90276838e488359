"""Overhead of wd_optax's optimizers against the optax chains they reproduce.

Times the jitted update step (update + apply_updates, buffers donated) of

* ``wd_optax.adam(decay="decoupled")`` against ``optax.adamw``, and
* ``wd_optax.sgd(decay="l2")`` against ``optax.chain(optax.add_decayed_weights, optax.sgd)``,

on a ResNet-50-shaped parameter tree (about 25.6M parameters), in paired, interleaved
repeats (``benchmarks/_paired.py``: ABBA order, repeats until the 95% interval of the time ratio ours / optax
excludes the target), and prints one JSON object with the time ratio and its interval, the optimizer-state
byte ratio, and the HLO ops that differ between the two compiled steps (counted on the donated programs that
are timed). Targets (under ``"targets"``): time ratio <= 1.02, state bytes ratio <= 1.

Usage: python benchmarks/overhead.py [--full] [--max-repeats 41]
"""

from __future__ import annotations

import argparse
import collections
import json
import platform
import os
import re
import sys

import jax
import jax.numpy as jnp
import optax

import wd_optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _paired  # noqa: E402

TIME_TARGET = 1.02


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


def compiled_op_counts(step, params, state, grads) -> collections.Counter:
  """Counts of each HLO op in the compiled (donated) step that is timed: equal counts mean equal work."""
  text = step.lower(params, state, grads).compile().as_text()
  return collections.Counter(re.findall(r"= \S+ (\w+)\(", re.sub(r"metadata=\{[^}]*\}", "", text)))


def runner(tx, params, grads):
  """``(step, run, state_bytes, carry)``: ``run()`` does one donated step on its own copy of the parameters."""
  step = make_step(tx)
  carry = [jax.tree.map(jnp.copy, params), None]
  carry[1] = tx.init(carry[0])
  state_bytes = tree_bytes(carry[1])

  def run():
    carry[:] = step(*carry, grads)
    return carry[0]

  jax.block_until_ready(run())  # compile outside the timing
  return step, run, state_bytes, carry


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--full", action="store_true", help="more repeats allowed (up to 81 pairs)")
  parser.add_argument("--max-repeats", type=int, default=None, help="paired repeats at most (default 41)")
  args = parser.parse_args()
  max_repeats = args.max_repeats or (81 if args.full else 41)

  params = resnet50_shaped_params()
  grads = jax.tree.map(lambda p: 1e-3 * jnp.sign(p), params)
  lr, wd = 1e-3, 1e-4
  results = {"benchmark": "overhead", "num_params": sum(x.size for x in jax.tree.leaves(params)),
             "device": jax.devices()[0].device_kind, "platform": platform.platform(), "comparisons": {},
             "targets": []}
  comparisons = {
      "adam_decoupled_vs_optax_adamw": {
          "wd_optax": wd_optax.adam(lr, weight_decay=wd, decay="decoupled"),
          "optax": optax.adamw(lr, weight_decay=wd)},
      "sgd_l2_vs_optax_chain": {
          "wd_optax": wd_optax.sgd(lr, momentum=0.9, weight_decay=wd, decay="l2"),
          "optax": optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr, momentum=0.9))},
  }
  for label, pair in comparisons.items():
    built = {side: runner(tx, params, grads) for side, tx in pair.items()}
    ops = {side: compiled_op_counts(step, carry[0], carry[1], grads)
           for side, (step, _, _, carry) in built.items()}
    timed = _paired.compare(built["wd_optax"][1], built["optax"][1], max_ratio=TIME_TARGET,
                            max_repeats=max_repeats, block=jax.block_until_ready)
    bytes_ratio = built["wd_optax"][2] / built["optax"][2]
    ours_ops, ref_ops = ops["wd_optax"], ops["optax"]
    results["comparisons"][label] = {
        "compiled_ops_differing": {op: ours_ops[op] - ref_ops[op]
                                   for op in sorted(set(ours_ops) | set(ref_ops)) if ours_ops[op] != ref_ops[op]},
        "wd_optax_step_s": timed["candidate_s"], "optax_step_s": timed["reference_s"],
        "wd_optax_state_bytes": built["wd_optax"][2], "optax_state_bytes": built["optax"][2],
        "time_ratio": timed["ratio"], "time_ratio_ci95": timed["ratio_ci95"], "repeats": timed["repeats"],
        "steps_per_sample": timed["calls_per_sample"], "state_bytes_ratio": bytes_ratio,
    }
    results["targets"] += [_paired.target(f"{label}.time", timed),
                           _paired.target(f"{label}.state_bytes", ratio=bytes_ratio, max_ratio=1.0)]
    del built
  print(json.dumps(results, indent=2))


if __name__ == "__main__":
  main()
