"""Paired, interleaved timing shared by the benchmarks: a ratio with its 95% interval and a met flag per target.

A benchmark compares a candidate against a reference measured side by side in the same process. Timing each
once in a fixed order lets machine load that drifts over the run (other processes on a shared CPU, frequency
scaling) leak into the ratio. :func:`compare` instead runs the two alternately, flipping the order every
repeat (AB BA AB ...), and takes the ratio of each adjacent pair, so a drift slower than one pair cancels.
The reported ratio is the geometric mean of the paired ratios, and its interval is the t interval of their
mean log (``scipy.stats.t``, which ships with jax), exponentiated. Repeats continue (up to ``max_repeats``)
until the interval no longer contains the target, so that ``meets_target`` is decided by the data rather
than by luck; where it still contains the target at ``max_repeats``, ``decided`` is false.

Every benchmark reports its targets in one list under the key ``"targets"`` of the JSON object it prints,
one :func:`target` entry per target (``benchmarks/run_all.py`` tabulates them)::

  {"name": str, "ratio": float, "ratio_ci95": [low, high] | null, "target": "<= 1.05" | ">= 3.0",
   "meets_target": bool, "decided": bool}

``ratio_ci95`` is null for a ratio that is not timed (a count, a byte ratio): it is exact, so ``decided`` is
true.

Not a benchmark itself (no usage line): ``benchmarks/run_all.py`` skips it.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np
from scipy import stats


def ratio_interval(numerator_s, denominator_s, confidence: float = 0.95) -> tuple[float, float, float]:
  """``(ratio, low, high)``: geometric mean of the paired ratios ``numerator/denominator`` and its t interval."""
  logs = np.log(np.asarray(numerator_s, np.float64) / np.asarray(denominator_s, np.float64))
  mean = float(np.mean(logs))
  if len(logs) < 2:
    return math.exp(mean), 0.0, math.inf
  half = float(stats.t.ppf(0.5 + confidence / 2, len(logs) - 1)) * float(np.std(logs, ddof=1)) / math.sqrt(len(logs))
  return math.exp(mean), math.exp(mean - half), math.exp(mean + half)


def target_verdict(ratio: float, low: float, high: float, *, max_ratio: float | None = None,
                   min_ratio: float | None = None) -> dict:
  """The met flag of one target: ``ratio <= max_ratio`` (a cost) or ``ratio >= min_ratio`` (a speed-up).

  ``decided``: the whole 95% interval lies on one side of the target, so the flag would not flip on a rerun
  of the same length (up to the 5% the interval leaves out).
  """
  if (max_ratio is None) == (min_ratio is None):
    raise ValueError("target_verdict: give exactly one of max_ratio or min_ratio.")
  if max_ratio is not None:
    return {"target": f"<= {max_ratio}", "meets_target": ratio <= max_ratio,
            "decided": high <= max_ratio or low > max_ratio}
  return {"target": f">= {min_ratio}", "meets_target": ratio >= min_ratio,
          "decided": low >= min_ratio or high < min_ratio}


def target(name: str, result: dict | None = None, *, ratio: float | None = None, max_ratio: float | None = None,
           min_ratio: float | None = None) -> dict:
  """One entry of a benchmark's ``"targets"`` list (module docstring), from a :func:`compare` result or an exact ratio.

  Args:
    name: what the target is about, unique within the benchmark (e.g. ``"adam_decoupled_vs_optax_adamw.time"``).
    result: a :func:`compare` result with a target; or ``None`` and ``ratio`` with ``max_ratio``/``min_ratio``
      for an exact (untimed) ratio.
  """
  if result is not None:
    return {"name": name, "ratio": result["ratio"], "ratio_ci95": list(result["ratio_ci95"]),
            "target": result["target"], "meets_target": bool(result["meets_target"]),
            "decided": bool(result["decided"])}
  verdict = target_verdict(ratio, ratio, ratio, max_ratio=max_ratio, min_ratio=min_ratio)
  return {"name": name, "ratio": ratio, "ratio_ci95": None, **verdict, "decided": True}


def compare(candidate: Callable[[], object], reference: Callable[[], object], *, max_ratio: float | None = None,
            min_ratio: float | None = None, min_repeats: int = 7, max_repeats: int = 41,
            min_seconds: float = 0.2, block: Callable[[object], object] | None = None,
            max_seconds: float | None = None, calls_per_sample: int | None = None) -> dict:
  """Times ``candidate`` against ``reference`` in paired, interleaved repeats; returns the ratio and verdict.

  Args:
    candidate, reference: zero-argument callables doing one unit of work each (already compiled: warm them
      up first). Each timed sample runs its callable ``n`` times, ``n`` chosen once so that a sample of the
      slower one lasts at least ``min_seconds`` (tiny samples measure the timer and the dispatch).
    max_ratio / min_ratio: the target on candidate/reference time (exactly one, or neither: no verdict).
    min_repeats, max_repeats: pairs measured at least / at most; between them, repeats stop once the
      interval excludes the target.
    block: called on each callable's result before the clock stops (e.g. ``jax.block_until_ready``).
    max_seconds: a wall-clock budget for the repeats; past it (and past ``min_repeats``) no new pair starts.
      ``None``: no budget.
    calls_per_sample: a fixed ``n`` (no probing calls before the repeats): for callables that take seconds,
      e.g. a whole training run with its compilation.

  Returns:
    ``{"ratio", "ratio_ci95": [low, high], "repeats", "calls_per_sample", "candidate_s", "reference_s"`` (the
    median seconds per call), and with a target ``"target", "meets_target", "decided"}``.
  """
  block = block or (lambda x: x)

  def once(fn, n):
    start = time.perf_counter()
    for _ in range(n):
      out = fn()
    block(out)
    return (time.perf_counter() - start) / n

  started = time.perf_counter()
  if calls_per_sample is not None:
    n = calls_per_sample
  else:
    single = max(once(candidate, 1), once(reference, 1), 1e-7)
    n = max(1, math.ceil(min_seconds / single))
  cand, ref = [], []
  while len(cand) < max_repeats:
    if max_seconds is not None and len(cand) >= min_repeats and time.perf_counter() - started > max_seconds:
      break
    pair = (candidate, reference) if len(cand) % 2 == 0 else (reference, candidate)
    times = {id(fn): once(fn, n) for fn in pair}
    cand.append(times[id(candidate)])
    ref.append(times[id(reference)])
    if len(cand) >= min_repeats and (max_ratio is not None or min_ratio is not None):
      if target_verdict(*ratio_interval(cand, ref), max_ratio=max_ratio, min_ratio=min_ratio)["decided"]:
        break
    elif len(cand) >= min_repeats:
      break
  ratio, low, high = ratio_interval(cand, ref)
  out = {"ratio": ratio, "ratio_ci95": [low, high], "repeats": len(cand), "calls_per_sample": n,
         "candidate_s": float(np.median(cand)), "reference_s": float(np.median(ref))}
  if max_ratio is not None or min_ratio is not None:
    out.update(target_verdict(ratio, low, high, max_ratio=max_ratio, min_ratio=min_ratio))
  return out
