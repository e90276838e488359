"""Update-step time of the rotational and sphere optimizers against the optimizer they wrap.

On the ResNet-50-shaped tree of ``benchmarks/overhead.py`` (about 25.6M parameters), times the jitted update
step (update + apply_updates, buffers donated) of

* ``wd_optax.rotational_adamw`` and ``wd_optax.adamh`` against ``optax.adamw``,
* ``wd_optax.rotational_sgd`` against ``wd_optax.sgd(decay="l2")``,
* ``monitor(equilibrium=...)`` chained after ``optax.adamw`` against ``monitor()`` (the predictions' cost),

with ``benchmarks/_paired.py``'s ``compare`` (paired, interleaved repeats; the ratio's 95% interval), and
prints one JSON object with the time ratios (candidate / reference). The rotational wrapper does, per neuron,
a projection, two norms and a renormalisation on top of the inner optimizer: a few passes over the kernels,
so at least ~1.5 is expected where the step is memory-bound (one extra pass of sums and one of the update
over every kernel); on a 2-core CPU the per-channel reductions measured 3–4x (rotational) and ~2.8x (AdamH).
No target is asserted here except for the monitor predictions (<= 1.05: a scalar formula per leaf).

Usage: python benchmarks/equilibrium_overhead.py [--full] [--min-repeats 7] [--max-repeats 41]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import sys

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import wd_optax  # noqa: E402
from _paired import compare  # noqa: E402
from overhead import make_step, resnet50_shaped_params  # noqa: E402


def _runner(tx, params, grads):
  """A zero-argument callable doing one donated update step, compiled and warmed up."""
  step = make_step(tx)
  carry = [jax.tree.map(jnp.copy, params), None]
  carry[1] = tx.init(carry[0])
  carry[0], carry[1] = step(carry[0], carry[1], grads)
  jax.block_until_ready(carry[0])

  def run():
    carry[0], carry[1] = step(carry[0], carry[1], grads)
    return carry[0]
  return run


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--full", action="store_true", help="more repeats")
  parser.add_argument("--min-repeats", type=int, default=None)
  parser.add_argument("--max-repeats", type=int, default=None)
  args = parser.parse_args()
  min_repeats = args.min_repeats or (15 if args.full else 7)
  max_repeats = args.max_repeats or (61 if args.full else 21)

  params = resnet50_shaped_params()
  grads = jax.tree.map(lambda p: 1e-3 * jnp.sign(p) + 1e-4, params)
  lr, wd = 1e-3, 1e-4
  kernels = wd_optax.masks.kernels()
  adamw = optax.adamw(lr, weight_decay=wd, mask=kernels)
  sgd = wd_optax.sgd(lr, momentum=0.9, weight_decay=wd, decay="l2", mask=kernels)
  prediction = dict(optimizer="adamw", learning_rate=lr, weight_decay=wd, momentum=0.9)
  comparisons = {
      "rotational_adamw_vs_optax_adamw": (wd_optax.rotational_adamw(lr, wd, mask=kernels), adamw, None),
      "adamh_vs_optax_adamw": (wd_optax.adamh(lr, mask=kernels), adamw, None),
      "rotational_sgd_vs_wd_optax_sgd": (wd_optax.rotational_sgd(lr, wd, mask=kernels), sgd, None),
      "monitor_equilibrium_vs_monitor": (
          optax.chain(adamw, wd_optax.monitor(kernels, packed=True, equilibrium=prediction)),
          optax.chain(adamw, wd_optax.monitor(kernels, packed=True)), 1.05),
  }
  results = {"benchmark": "equilibrium_overhead", "num_params": sum(x.size for x in jax.tree.leaves(params)),
             "device": jax.devices()[0].device_kind, "platform": platform.platform(),
             "metric": "update-step time candidate / reference (geometric mean of paired repeats, 95% CI)",
             "comparisons": {}}
  for label, (candidate, reference, target) in comparisons.items():
    measured = compare(_runner(candidate, params, grads), _runner(reference, params, grads),
                       max_ratio=target, min_repeats=min_repeats, max_repeats=max_repeats,
                       block=jax.block_until_ready)
    results["comparisons"][label] = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in measured.items()}
  print(json.dumps(results, indent=2))


if __name__ == "__main__":
  main()
