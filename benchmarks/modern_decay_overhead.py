"""Update-step cost of the modern decay methods against the optimizer each one modifies.

Times the jitted update step (update + apply_updates, buffers donated) on the ResNet-50-shaped tree of
``benchmarks/overhead.py`` (about 25.6M parameters) for

* cautious decay, ``wd_optax.adam(cautious=True)`` vs ``optax.adamw`` (target ratio <= 1.10) and
  ``wd_optax.sgd(decay="decoupled", cautious=True)`` vs ``wd_optax.sgd(decay="decoupled")``;
* AdamP, ``wd_optax.adamp`` vs ``optax.adamw`` (target <= 1.10), and SGDP, ``wd_optax.sgdp`` vs
  ``wd_optax.sgd(decay="decoupled")``;
* AdamS, ``wd_optax.adams`` vs ``optax.adamw``, and SGDS, ``wd_optax.sgds`` vs
  ``wd_optax.sgd(decay="decoupled")`` (ratios reported, no target).

Each comparison is timed with ``benchmarks/_paired.py`` ``compare``: paired, interleaved repeats, the
geometric-mean ratio with its 95% interval, and for a target whether it is met and decided. Prints one JSON
object.

Usage: python benchmarks/modern_decay_overhead.py [--full] [--min-repeats 7] [--max-repeats 41]
"""

from __future__ import annotations

import argparse
import json
import platform

import jax
import jax.numpy as jnp
import optax

import wd_optax
from _paired import compare
from overhead import make_step, resnet50_shaped_params

LR, WD = 1e-3, 1e-4


class _Stepper:
  """One optimizer's jitted step with its own (donated) params and state, callable with no arguments."""

  def __init__(self, tx, params, grads):
    self.step = make_step(tx)
    self.params = jax.tree.map(jnp.copy, params)
    self.state = tx.init(self.params)
    self.grads = grads
    jax.block_until_ready(self())  # compile outside the timing

  def __call__(self):
    self.params, self.state = self.step(self.params, self.state, self.grads)
    return self.params


def comparisons() -> dict:
  """``label: (candidate, reference, max_ratio or None)``."""
  sgd = lambda **kw: wd_optax.sgd(LR, momentum=0.9, weight_decay=WD, decay="decoupled", **kw)
  adamw = lambda: optax.adamw(LR, weight_decay=WD)
  return {
      "cautious_adam_vs_optax_adamw": (wd_optax.adam(LR, weight_decay=WD, cautious=True), adamw(), 1.10),
      "adamp_vs_optax_adamw": (wd_optax.adamp(LR, weight_decay=WD), adamw(), 1.10),
      "adams_vs_optax_adamw": (wd_optax.adams(LR, weight_decay=WD), adamw(), None),
      "cautious_sgd_vs_wd_optax_sgd": (sgd(cautious=True), sgd(), None),
      "sgdp_vs_wd_optax_sgd": (wd_optax.sgdp(LR, momentum=0.9, weight_decay=WD), sgd(), None),
      "sgds_vs_wd_optax_sgd": (wd_optax.sgds(LR, momentum=0.9, weight_decay=WD), sgd(), None),
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--full", action="store_true", help="more repeats (min 15, max 81)")
  parser.add_argument("--min-repeats", type=int, default=None)
  parser.add_argument("--max-repeats", type=int, default=None)
  parser.add_argument("--only", nargs="+", metavar="LABEL", help="run only these comparisons")
  args = parser.parse_args()
  min_repeats = args.min_repeats or (15 if args.full else 7)
  max_repeats = args.max_repeats or (81 if args.full else 41)

  params = resnet50_shaped_params()
  # 1e-3·sign(w): strongly aligned with w, so AdamP projects nothing; its step computes both branches of the
  # test regardless (a select, not a branch), so the cost does not depend on which leaves are projected.
  grads = jax.tree.map(lambda p: 1e-3 * jnp.sign(p), params)
  results = {"benchmark": "modern_decay_overhead", "num_params": sum(x.size for x in jax.tree.leaves(params)),
             "device": jax.devices()[0].device_kind, "platform": platform.platform(),
             "min_repeats": min_repeats, "max_repeats": max_repeats, "comparisons": {}}
  for label, (candidate, reference, max_ratio) in comparisons().items():
    if args.only and label not in args.only:
      continue
    cand, ref = _Stepper(candidate, params, grads), _Stepper(reference, params, grads)
    results["comparisons"][label] = compare(cand, ref, max_ratio=max_ratio, min_repeats=min_repeats,
                                            max_repeats=max_repeats, block=jax.block_until_ready)
    del cand, ref
  print(json.dumps(results, indent=2))


if __name__ == "__main__":
  main()
