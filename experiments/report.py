"""Statistics over seeds, claim verdicts, and ``REPORT.md``.

Every comparison is over seeds. Arms share seeds (same initial weights and data order for seed ``s`` in
every arm), so differences are *paired*: the effect of A over B is the mean over seeds of ``a_s − b_s``, with
the 95% t-interval ``mean ± t_{0.975, n−1} · sd / √n`` (sd with ``n − 1`` in the denominator; the quantile is
``scipy.stats.t.ppf``). Linear contrasts (e.g. "recovers half the gain": ``(c − n) − ½(d − n)``) get the same
interval on the per-seed contrast values.

The t-interval is the default and the interval of every claim unless this rule applies (:func:`claim_interval`,
used by :func:`directional_claim` and :func:`equivalence_claim`):

* **bootstrap fallback** — when some compared arm has members that diverged or sit at chance accuracy but the
  claim is not *invalid* (see below), its per-seed values mix two populations (healthy runs and collapsed
  ones, often pinned at exactly ``1/K``), so they are skewed, bimodal or heavily tied, and the t-interval's
  assumption of a roughly normal mean fails. The interval is then the BCa bootstrap interval of the mean
  (``scipy.stats.bootstrap``, 9999 resamples, a fixed seed, so a report is reproducible) *widened to contain
  the t-interval*: the bootstrap follows the skew, but with a handful of seeds its coverage is below 95%, so it
  may only widen the interval (a verdict can move to *inconclusive*, never away from it). The claim's notes
  say so, and the effect prints with ``(t ∪ bootstrap)``.
* A sample whose values are all equal (``n ≥ 2``, zero spread) gets a zero-width interval from either method
  (the bootstrap of a constant is that constant); the claim's notes say that its spread is not measured.

:func:`bootstrap_ci` gives the bootstrap interval alone, and :func:`spearman_ci` / :func:`kendall_ci` rank
correlations over seeds with bootstrap intervals (resampling the pairs).

Verdict rules (also printed in every report):

* **directional** claim "A beats B by at least δ": *reproduced* if the interval's lower end is above 0 and
  the mean effect is at least δ; *not reproduced* if the interval's upper end is below δ (the effect is
  confidently smaller than the smallest one that would count, or of the opposite sign); otherwise
  *inconclusive*.
* **equivalence** claim "A matches B within ±m": *reproduced* if the whole interval lies in ``[−m, m]``;
  *not reproduced* if it lies entirely outside it; otherwise *inconclusive*.

Two checks then override the interval's verdict (:func:`checked_verdict`, applied by every claim constructor
here, so every study gets them):

* **invalid** — every compared arm failed: more than half of its compared members (seeds) diverged (the loss
  became NaN: ``diverged_at`` in their records) or sit at chance accuracy (final test accuracy within
  ``CHANCE_MARGIN / K`` of ``1/K`` for ``K`` classes, which is what a run that predicts one class scores on a
  balanced test set). Such arms measure nothing about the claim (two collapsed arms "match" perfectly); one
  healthy arm against a collapsed one is a real comparison and keeps its verdict.
* **inconclusive: optimum at grid edge** — the claim compares a best-of-sweep pick that lies on the first or
  last value of its grid: the optimum is not bracketed, and a wider grid could change the comparison.

Two flags go beside the verdict (they never change it, so the four verdict counts stay comparable between
reports; a flag says how far to trust the verdict, not what the data said):

* **power** — every claim has a smallest relevant effect δ (a directional claim's ``min_effect``, or the
  ``delta`` it is given where ``min_effect`` is 0; an equivalence or non-inferiority claim's margin). The
  smallest effect the setting resolves is the interval's half-width ``h`` (:attr:`Claim.detectable`: the
  largest distance from the mean to an end of the interval, so the bootstrap hull counts): an effect of size
  ``h`` is just distinguished from 0. A claim is **underpowered** when its interval alone is *inconclusive*
  and ``h > δ``: then even an effect of exactly δ (or, for equivalence, a true effect of 0 against the margin
  δ) would leave the interval across the threshold, so more seeds (or less noise), not a different outcome,
  are needed to decide it. An inconclusive claim with ``h ≤ δ`` could have been decided; its effect simply
  sits at the threshold. A claim that the interval decided is never underpowered: its effect was large enough.
* **fragile** — a verdict that would change when only round-off changes (device count, summation order,
  another CPU). A float32 round-off difference at step 1 is amplified by training until a seed's run is
  about as different as a fresh draw with the same initial weights and batches, so the mean over ``n`` seeds
  moves by about ``√2 · sd/√n`` (one standard deviation of the difference of two such means). That is the
  **round-off distance** ``r = √2 · SE`` (:attr:`Claim.roundoff`, ``SE = h / t_{0.975, n−1}``; at least
  ``quantum``, e.g. one test example in one seed's accuracy, ``100/(n_test · n)`` points, where a claim gives
  it). A claim is fragile when moving the interval's lower end, mean or upper end by ±r (any combination that
  keeps them ordered) changes the interval's verdict. Calibration: between the published quick reports of two
  CPUs (commits 236177c and f0d9c93, the same code for all but B5c/B5d) the means and ends of the claims with
  n ≥ 3 moved by a median of 0.66 SE (90th percentile 2.1 SE, largest 3.2 SE); six verdicts flipped (B1b,
  B5b, F3b, Z4a, Z4c, Z5c), and this rule flags five of them as fragile in both reports (of 26 claims, 9 and
  7 flagged). It misses F3b, whose n = 2 makes the sd itself a one-difference estimate (its interval's width
  changed sevenfold); the newer report flags it underpowered. Moving the half-width by its own sampling error
  as well would catch F3b but flags 16 of the 26 claims, too many to single out the close calls.
  Claims that a check (invalid, grid edge) decided are not flagged fragile: their verdict does not rest on
  the interval's ends.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Callable, Sequence

import warnings

import numpy as np
from scipy import stats

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
INCONCLUSIVE = "inconclusive"
INVALID = "invalid"
VERDICTS = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, INVALID)

# Reasons attached to a verdict that a check (not the interval) decided.
REASON_DEGENERATE = "compared arms diverged or at chance"
REASON_GRID_EDGE = "optimum at grid edge"

# A member is "at chance" when its final test accuracy is within CHANCE_MARGIN / K of 1 / K (K classes):
# 10% ± 2.5 points for 10 classes.
CHANCE_MARGIN = 0.25

# Resamples of every bootstrap interval here; the resampling seed is fixed so a report is reproducible.
BOOTSTRAP_RESAMPLES = 9999
BOOTSTRAP_SEED = 0

# Printed after an effect whose interval came from the bootstrap fallback (module docstring).
HULL = "t ∪ bootstrap"

# Flags printed beside a verdict (module docstring).
UNDERPOWERED = "underpowered"
FRAGILE = "fragile"


def t_critical(df: int, confidence: float = 0.95) -> float:
  """The two-sided Student-t quantile ``t_{(1 + confidence)/2, df}`` (``scipy.stats.t.ppf``)."""
  if df < 1:
    raise ValueError(f"a t-interval needs at least 2 samples (df >= 1), got df={df}.")
  return float(stats.t.ppf(0.5 + confidence / 2, df))


@dataclasses.dataclass(frozen=True)
class Interval:
  """A mean with its 95% interval over ``n`` samples.

  Attributes:
    method: how the interval was computed: ``"t"`` (:func:`mean_ci`), ``"bootstrap"`` (:func:`bootstrap_ci`)
      or :data:`HULL` (the bootstrap fallback of :func:`claim_interval`).
    samples: the finite values it was computed from (``()`` when not known, e.g. a hand-built interval).
  """
  mean: float
  low: float
  high: float
  n: int
  method: str = "t"
  samples: tuple = dataclasses.field(default=(), repr=False, compare=False)

  def __str__(self) -> str:
    text = f"{self.mean:+.4g} [{self.low:+.4g}, {self.high:+.4g}]"
    return text if self.method == "t" else f"{text} ({self.method})"


def mean_ci(samples: Sequence[float]) -> Interval:
  """Mean and 95% t-interval of ``samples`` (NaNs are dropped; fewer than 2 left gives an infinite interval)."""
  x = _finite_samples(samples)
  n, kept = x.size, tuple(float(v) for v in x)
  if n == 0:
    return Interval(math.nan, -math.inf, math.inf, 0)
  mean = float(x.mean())
  if n < 2:
    return Interval(mean, -math.inf, math.inf, n, samples=kept)
  half = t_critical(n - 1) * float(x.std(ddof=1)) / math.sqrt(n)
  return Interval(mean, mean - half, mean + half, n, samples=kept)


def _finite_samples(samples: Sequence[float]) -> np.ndarray:
  x = np.asarray(samples, np.float64).ravel()
  return x[np.isfinite(x)]


def _bootstrap(data: tuple, statistic, *, paired: bool, vectorized: bool, confidence: float, n_resamples: int,
               seed: int) -> tuple[float, float]:
  """``scipy.stats.bootstrap``'s BCa interval; the percentile interval of the finite resamples where BCa is
  undefined (a degenerate bootstrap distribution, or resamples whose statistic is undefined)."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # DegenerateDataWarning, ConstantInputWarning, invalid-value warnings
    res = stats.bootstrap(data, statistic, paired=paired, vectorized=vectorized, confidence_level=confidence,
                          n_resamples=n_resamples, method="BCa", rng=np.random.default_rng(seed))
  low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
  if math.isfinite(low) and math.isfinite(high):
    return low, high
  dist = np.asarray(res.bootstrap_distribution, np.float64)
  dist = dist[np.isfinite(dist)]
  if dist.size == 0:
    return math.nan, math.nan
  alpha = (1 - confidence) / 2
  return float(np.quantile(dist, alpha)), float(np.quantile(dist, 1 - alpha))


def bootstrap_ci(samples: Sequence[float], *, confidence: float = 0.95, n_resamples: int = BOOTSTRAP_RESAMPLES,
                 seed: int = BOOTSTRAP_SEED) -> Interval:
  """Mean and BCa bootstrap interval of ``samples`` (``scipy.stats.bootstrap``; NaNs are dropped).

  Fewer than 2 finite samples give an infinite interval, and a constant sample the zero-width interval at its
  value. Where BCa is undefined the percentile interval is used. With few samples the bootstrap's coverage
  is below ``confidence``: claims use it only through :func:`claim_interval`, which keeps the t-interval in.
  """
  x = _finite_samples(samples)
  n, kept = x.size, tuple(float(v) for v in x)
  if n == 0:
    return Interval(math.nan, -math.inf, math.inf, 0, "bootstrap")
  mean = float(x.mean())
  if n < 2:
    return Interval(mean, -math.inf, math.inf, n, "bootstrap", kept)
  if np.all(x == x[0]):
    return Interval(mean, mean, mean, n, "bootstrap", kept)
  low, high = _bootstrap((x,), np.mean, paired=False, vectorized=True, confidence=confidence,
                         n_resamples=n_resamples, seed=seed)
  return Interval(mean, min(low, mean), max(high, mean), n, "bootstrap", kept)


def claim_interval(ci: Interval, compared: Sequence["ArmHealth"]) -> Interval:
  """The interval a claim is judged on: ``ci``, or the bootstrap fallback of the module docstring.

  The fallback applies when ``ci`` is a t-interval with its samples known, some arm in ``compared`` has
  members that diverged or are at chance, and not every compared arm failed (that claim is *invalid*
  anyway). It returns the hull of the t-interval and :func:`bootstrap_ci` (same mean and ``n``).
  """
  compared = tuple(compared)
  if (ci.method != "t" or ci.n < 2 or len(ci.samples) != ci.n or not any(h.degenerate for h in compared)
      or all(h.failed for h in compared)):
    return ci
  boot = bootstrap_ci(ci.samples)
  return Interval(ci.mean, min(ci.low, boot.low), max(ci.high, boot.high), ci.n, HULL, ci.samples)


@dataclasses.dataclass(frozen=True)
class Correlation:
  """A rank correlation over ``n`` pairs with its bootstrap interval.

  Attributes:
    method: ``"spearman"`` (Spearman's ρ) or ``"kendall"`` (Kendall's τ-b).
    statistic: the correlation of all pairs (``scipy.stats.spearmanr`` / ``kendalltau``).
    low, high: the BCa bootstrap interval over resampled pairs (percentile where BCa is undefined;
      resamples in which one variable is constant, whose correlation is undefined, are dropped).
    pvalue: scipy's p-value of "no correlation".
  """
  method: str
  statistic: float
  low: float
  high: float
  n: int
  pvalue: float

  def __str__(self) -> str:
    name = {"spearman": "ρ", "kendall": "τ"}[self.method]
    return f"{name} = {self.statistic:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


def _rank_correlation(method: str, x, y, confidence: float, n_resamples: int, seed: int) -> Correlation:
  x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
  if x.shape != y.shape:
    raise ValueError(f"{method} correlation needs paired samples of equal length, got {x.size} and {y.size}.")
  keep = np.isfinite(x) & np.isfinite(y)
  x, y = x[keep], y[keep]
  n = x.size
  fn = {"spearman": stats.spearmanr, "kendall": stats.kendalltau}[method]
  if n < 3 or np.all(x == x[0]) or np.all(y == y[0]):
    return Correlation(method, math.nan, -1.0, 1.0, n, math.nan)
  res = fn(x, y)
  if method == "spearman":
    # Vectorised over the resamples (Pearson's r of the ranks, which is spearmanr's definition): a bootstrap of
    # 9999 scipy calls took about 9 s per correlation on the project's CPU.
    statistic, vectorized = _spearman_along, True
  else:
    statistic, vectorized = (lambda a, b: fn(a, b).statistic), False
  low, high = _bootstrap((x, y), statistic, paired=True, vectorized=vectorized, confidence=confidence,
                         n_resamples=n_resamples, seed=seed)
  return Correlation(method, float(res.statistic), low, high, n, float(res.pvalue))


def _spearman_along(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
  """Spearman's ρ of ``x`` and ``y`` along ``axis`` (average ranks for ties; ``nan`` where one is constant)."""
  rx, ry = stats.rankdata(x, axis=axis), stats.rankdata(y, axis=axis)
  rx = rx - rx.mean(axis=axis, keepdims=True)
  ry = ry - ry.mean(axis=axis, keepdims=True)
  with np.errstate(invalid="ignore", divide="ignore"):
    return (rx * ry).sum(axis=axis) / np.sqrt((rx * rx).sum(axis=axis) * (ry * ry).sum(axis=axis))


def spearman_ci(x: Sequence[float], y: Sequence[float], *, confidence: float = 0.95,
                n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> Correlation:
  """Spearman's rank correlation of paired samples (pairs with a NaN dropped) and its bootstrap interval.

  Fewer than 3 pairs, or a constant variable, give ``nan`` with the interval ``[−1, 1]``.
  """
  return _rank_correlation("spearman", x, y, confidence, n_resamples, seed)


def kendall_ci(x: Sequence[float], y: Sequence[float], *, confidence: float = 0.95,
               n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> Correlation:
  """Kendall's τ-b of paired samples (pairs with a NaN dropped) and its bootstrap interval; see
  :func:`spearman_ci`."""
  return _rank_correlation("kendall", x, y, confidence, n_resamples, seed)


def paired_ci(a: Sequence[float], b: Sequence[float]) -> Interval:
  """Mean of ``a − b`` over paired samples (same seeds), with its 95% t-interval."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape:
    raise ValueError(f"paired samples need equal shapes, got {a.shape} and {b.shape}.")
  return mean_ci(a - b)


def directional_verdict(ci: Interval, min_effect: float = 0.0) -> str:
  """Verdict for "the effect is positive (and at least ``min_effect``)"; see the module docstring."""
  if ci.low > 0 and ci.mean >= min_effect:
    return REPRODUCED
  if ci.high < min_effect:
    return NOT_REPRODUCED
  return INCONCLUSIVE


def equivalence_verdict(ci: Interval, margin: float) -> str:
  """Verdict for "the effect is within ±``margin``"; see the module docstring."""
  if -margin <= ci.low and ci.high <= margin:
    return REPRODUCED
  if ci.low > margin or ci.high < -margin:
    return NOT_REPRODUCED
  return INCONCLUSIVE


@dataclasses.dataclass(frozen=True)
class ArmHealth:
  """How the members of one compared arm ended: the input of the *invalid* check.

  Attributes:
    name: what was compared, e.g. ``"adamw[weight_decay=10]"`` or ``"adamw (λ sweep)"``.
    members: members (seeds × swept points) the claim used.
    diverged: members whose loss became NaN (``diverged_at`` logged, or a non-finite final loss).
    at_chance: members that did not diverge but end at chance accuracy (see :data:`CHANCE_MARGIN`) or have
      no finite final test accuracy.
  """
  name: str
  members: int
  diverged: int = 0
  at_chance: int = 0

  @property
  def degenerate(self) -> int:
    return self.diverged + self.at_chance

  @property
  def failed(self) -> bool:
    """More than half of the members diverged or are at chance (or there are none)."""
    return self.members == 0 or 2 * self.degenerate > self.members

  def __str__(self) -> str:
    parts = [f"{self.diverged} of {self.members} diverged"] if self.diverged else []
    parts += [f"{self.at_chance} of {self.members} at chance"] if self.at_chance else []
    return f"{self.name}: {', '.join(parts) or f'all {self.members} healthy'}"


@dataclasses.dataclass(frozen=True)
class GridEdge:
  """A best-of-sweep pick that lies on the end of its grid (the optimum is not bracketed)."""
  arm: str
  parameter: str
  value: float
  grid: tuple

  def __str__(self) -> str:
    side = "top" if self.value == max(self.grid) else "bottom"
    grid = ", ".join(f"{v:g}" for v in sorted(self.grid))
    return f"{self.arm}'s best {self.parameter} = {self.value:g} is the {side} of its grid {{{grid}}}"


def grid_edges(arm: str, best: dict, grid: dict) -> list[GridEdge]:
  """The coordinates of ``best`` (parameter -> picked value) that lie on an end of ``grid`` (parameter -> values).

  Parameters with fewer than two grid values are not swept and never count as an edge.
  """
  edges = []
  for parameter, values in grid.items():
    values = sorted({float(v) for v in values})
    if len(values) < 2 or parameter not in best:
      continue
    value = float(best[parameter])
    if value in (values[0], values[-1]):
      edges.append(GridEdge(arm, parameter, value, tuple(values)))
  return edges


def checked_verdict(verdict: str, compared: Sequence[ArmHealth], edges: Sequence[GridEdge] = ()) -> tuple[str, str]:
  """The verdict after the *invalid* and *grid edge* checks (module docstring), and the reason for an override.

  Returns ``(verdict, reason)``: ``reason`` is ``""`` when the interval's verdict stands, else a sentence that
  starts with the new verdict and :data:`REASON_DEGENERATE` or :data:`REASON_GRID_EDGE`.
  """
  if compared and all(h.failed for h in compared):
    return INVALID, (f"{INVALID}: {REASON_DEGENERATE} — every compared arm has more than half of its members "
                     f"diverged or at chance ({'; '.join(str(h) for h in compared)}); the interval alone would "
                     f"say {verdict}")
  if edges:
    return INCONCLUSIVE, (f"{INCONCLUSIVE}: {REASON_GRID_EDGE} — {'; '.join(str(e) for e in edges)}"
                          + (f"; the interval alone would say {verdict}" if verdict != INCONCLUSIVE else ""))
  return verdict, ""


def half_width(ci: Interval) -> float:
  """The largest distance from ``ci``'s mean to an end of it (``inf`` for an unbounded interval)."""
  if not (math.isfinite(ci.low) and math.isfinite(ci.high)):
    return math.inf
  return max(ci.mean - ci.low, ci.high - ci.mean)


def roundoff_distance(ci: Interval, quantum: float = 0.0) -> float:
  """``max(√2 · SE, quantum)``, ``SE = half-width / t_{0.975, n−1}``: how far a rerun that changes only
  round-off moves the interval (module docstring). ``inf`` with fewer than 2 samples."""
  h = half_width(ci)
  if ci.n < 2 or not math.isfinite(h):
    return math.inf
  return max(math.sqrt(2.0) * h / t_critical(ci.n - 1), float(quantum))


def fragile(ci: Interval, rule: Callable[[Interval], str], distance: float) -> bool:
  """Whether ``rule``'s verdict changes when ``ci``'s lower end, mean and upper end each move by −d, 0 or +d
  (every combination that keeps ``low ≤ mean ≤ high``)."""
  if not math.isfinite(distance):
    return False
  base = rule(ci)
  steps = (-distance, 0.0, distance)
  for dl in steps:
    for dm in steps:
      for dh in steps:
        low, mean, high = ci.low + dl, ci.mean + dm, ci.high + dh
        if low <= mean <= high and rule(Interval(mean, low, high, ci.n, ci.method)) != base:
          return True
  return False


@dataclasses.dataclass
class Claim:
  """One prediction of a paper, tested.

  Build it with :func:`make_claim` (or :func:`directional_claim` / :func:`equivalence_claim`), which apply
  the checks of :func:`checked_verdict`.

  Attributes:
    id: the claim's tag in ``docs/papers.md`` §7 (e.g. ``"B1"``), with a suffix if split.
    statement: the paper's claim in words.
    prediction: what we expected to measure, and the verdict rule's δ or margin.
    measured: what ``effect`` is (which arms, which metric, which unit).
    effect: the interval over seeds.
    verdict: reproduced / not reproduced / inconclusive / invalid.
    notes: anything the reader needs to judge it (sample values, caveats).
    compared: the health of every compared arm.
    edges: best-of-sweep picks on the edge of their grids.
    reason: why a check overrode the interval's verdict (``""`` if it did not).
    interval_verdict: the verdict of the interval alone.
    delta: the smallest relevant effect δ (a directional claim's smallest effect that counts, an equivalence
      claim's margin), in the effect's unit; the yardstick of the power flag.
    quantum: the smallest step the effect can take (e.g. one test example in one seed), a floor of
      :attr:`roundoff`; 0 when not given.
    rule: the interval's verdict rule (``Interval -> verdict``), used to test fragility; ``None`` when not known.
  """
  id: str
  statement: str
  prediction: str
  measured: str
  effect: Interval
  verdict: str
  notes: str = ""
  compared: tuple = ()
  edges: tuple = ()
  reason: str = ""
  interval_verdict: str = ""
  delta: float = math.nan
  quantum: float = 0.0
  rule: Callable | None = dataclasses.field(default=None, repr=False, compare=False)

  @property
  def detectable(self) -> float:
    """The smallest effect the setting resolves: the interval's half-width (``inf`` with fewer than 2 seeds)."""
    return half_width(self.effect)

  @property
  def roundoff(self) -> float:
    """The round-off distance ``r = max(√2 · SE, quantum)`` of the module docstring."""
    return roundoff_distance(self.effect, self.quantum)

  @property
  def underpowered(self) -> bool:
    """The interval alone is inconclusive and wider than δ (its half-width exceeds δ); see the module docstring."""
    return (self.verdict != INVALID and self.interval_verdict == INCONCLUSIVE
            and not self.detectable <= self.delta)

  @property
  def fragile(self) -> bool:
    """Moving the interval's ends or mean by the round-off distance changes its verdict (module docstring)."""
    if self.rule is None or self.reason:
      return False
    return fragile(self.effect, self.rule, self.roundoff)

  @property
  def flags(self) -> tuple[str, ...]:
    return tuple(f for f, on in ((UNDERPOWERED, self.underpowered), (FRAGILE, self.fragile)) if on)

  @property
  def power_text(self) -> str:
    """E.g. ``"h = 0.54 vs δ = 1.5"``: the smallest resolvable effect beside the smallest relevant one."""
    return f"h = {self.detectable:.3g} vs δ = {self.delta:g}"

  @property
  def verdict_text(self) -> str:
    """The verdict with the short reason of an override, e.g. ``"inconclusive (optimum at grid edge)"``."""
    if self.reason.startswith(f"{INVALID}:"):
      return f"{self.verdict} ({REASON_DEGENERATE})"
    if REASON_GRID_EDGE in self.reason:
      return f"{self.verdict} ({REASON_GRID_EDGE})"
    return self.verdict


def make_claim(id: str, statement: str, prediction: str, measured: str, ci: Interval, interval_verdict: str, *,
               compared: Sequence[ArmHealth], edges: Sequence[GridEdge] = (), notes: str = "",
               delta: float, rule: Callable[[Interval], str] | None = None, quantum: float = 0.0) -> Claim:
  """A :class:`Claim` whose verdict is ``interval_verdict`` after the checks of :func:`checked_verdict`.

  Args:
    compared: the health of every arm the effect was computed from (``experiments.studies._common.health``);
      ``()`` only for a claim that compares no trained arm.
    edges: best-of-sweep picks of the comparison that lie on the edge of their grid (:func:`grid_edges`).
    delta: the smallest relevant effect δ (> 0), for the power flag.
    rule: the verdict rule ``Interval -> verdict`` that gave ``interval_verdict``, for the fragility flag.
    quantum: the smallest step the effect can take, a floor of the round-off distance.
  """
  if not delta > 0:
    raise ValueError(f"claim {id}: delta (the smallest relevant effect) must be > 0, got {delta!r}.")
  compared, edges = tuple(compared), tuple(edges)
  verdict, reason = checked_verdict(interval_verdict, compared, edges)
  partial = [str(h) for h in compared if h.degenerate and not h.failed]
  extra = [f"**{reason}**"] if reason else []
  if partial and verdict != INVALID:
    extra.append("Some compared members diverged or are at chance and are scored as what they predict ("
                 + "; ".join(partial) + ")")
  if ci.method == HULL and verdict != INVALID:
    extra.append(f"The interval is the {HULL} hull (the BCa bootstrap interval widened to contain the "
                 "t-interval), since diverged or at-chance members make the per-seed values far from normal")
  if ci.n >= 2 and ci.low == ci.high:
    extra.append(f"All {ci.n} per-seed values are equal, so the interval has zero width: their spread is not "
                 "measured (neither a t- nor a bootstrap interval can widen it)")
  text = notes.strip()
  if extra:  # the checks' sentences go after the study's own notes
    text = (text.rstrip(".") + ". " if text else "") + ". ".join(extra) + "."
  return Claim(id, statement, prediction, measured, ci, verdict, text, compared, edges, reason, interval_verdict,
               float(delta), float(quantum), rule)


def directional_claim(id: str, statement: str, measured: str, ci: Interval, *, min_effect: float,
                      compared: Sequence[ArmHealth], edges: Sequence[GridEdge] = (), unit: str = "",
                      notes: str = "", delta: float | None = None, quantum: float = 0.0) -> Claim:
  """A directional claim (module docstring); ``delta`` (default ``min_effect``) is its smallest relevant
  effect for the power flag, and must be given where ``min_effect`` is 0 ("any positive effect counts")."""
  if delta is None:
    if not min_effect > 0:
      raise ValueError(f"claim {id}: min_effect={min_effect:g} does not say which effect is relevant; pass "
                       "delta= (the smallest effect the setting should resolve).")
    delta = min_effect
  ci = claim_interval(ci, compared)
  prediction = f"effect > 0 (counts if at least {min_effect:g}{unit})"
  if delta != min_effect:
    prediction += f"; δ = {delta:g}{unit}"
  rule = lambda c: directional_verdict(c, min_effect)
  return make_claim(id, statement, prediction, measured, ci, rule(ci), compared=compared, edges=edges,
                    notes=notes, delta=delta, rule=rule, quantum=quantum)


def equivalence_claim(id: str, statement: str, measured: str, ci: Interval, *, margin: float,
                      compared: Sequence[ArmHealth], edges: Sequence[GridEdge] = (), unit: str = "",
                      notes: str = "", quantum: float = 0.0) -> Claim:
  """An equivalence claim (module docstring); its margin is also its δ for the power flag."""
  ci = claim_interval(ci, compared)
  prediction = f"|effect| <= {margin:g}{unit}"
  rule = lambda c: equivalence_verdict(c, margin)
  return make_claim(id, statement, prediction, measured, ci, rule(ci), compared=compared, edges=edges,
                    notes=notes, delta=margin, rule=rule, quantum=quantum)


@dataclasses.dataclass
class StudySection:
  """What one study contributes to REPORT.md."""
  name: str
  title: str
  setting: str          # what was chosen and why
  claims: list
  plots: list           # paths relative to the report's directory
  table: str = ""       # a markdown table of per-arm results
  elapsed_s: float = math.nan
  error: str = ""          # the full traceback of a study that failed
  error_summary: str = ""  # its one-line form for the summary table, e.g. "ValueError: ..."


VERDICT_RULES = """\
**Verdict rules.** Effects are paired differences over seeds (every arm uses the same seeds, so seed `s`
starts from the same weights and sees the same batches in every arm), reported as mean [95% t-interval];
where some (not all) compared arms have members diverged or at chance, the interval is widened to contain the
BCa bootstrap interval, marked ({hull}).
A *directional* claim with smallest relevant effect δ is *reproduced* when the interval lies above 0 and
the mean is at least δ, *not reproduced* when the interval lies below δ, and *inconclusive* otherwise. An
*equivalence* claim with margin m is *reproduced* when the interval lies inside [−m, m], *not reproduced*
when it lies entirely outside, and *inconclusive* otherwise. Two checks override the interval: a claim is
*invalid* when every arm it compares has more than half of its members diverged (NaN loss) or at chance
accuracy (within {chance} of 1/K for K classes, e.g. predicting one class), since collapsed arms measure
nothing; and *inconclusive (optimum at grid edge)* when it compares a best-of-sweep pick that lies on the
first or last value of its grid. Accuracies are in percentage points.

**Power and stability flags** (beside the verdict, never changing it). *h* is the interval's half-width,
the smallest effect the seeds used resolve, printed next to the claim's smallest relevant effect δ (the
directional δ, or the equivalence margin). A claim is *underpowered* when its interval is inconclusive and
h > δ: it needs more seeds (or less noise) to decide, not another outcome. A claim is *fragile* when moving
the interval's ends or mean by the round-off distance r = √2·SE (SE = h / t, the standard error over seeds;
what a rerun on another device count or CPU moves a mean by, since training amplifies float32 round-off into
a fresh-draw-sized difference per seed) would change the interval's verdict."""


def claims_table(claims: Sequence[Claim]) -> str:
  lines = ["| claim | prediction | measured | effect, 95% CI | n | power: h vs δ | verdict | flags |",
           "|---|---|---|---|---|---|---|---|"]
  for c in claims:
    lines.append(f"| **{c.id}** {c.statement} | {c.prediction} | {c.measured} | {c.effect} | {c.effect.n} | "
                 f"{c.power_text} | **{c.verdict_text}** | {', '.join(c.flags) or '—'} |")
  notes = [f"- **{c.id}**: {c.notes}" for c in claims if c.notes]
  return "\n".join(lines + ([""] + notes if notes else []))


def render(sections: Sequence[StudySection], *, title: str, preamble: str = "") -> str:
  """The markdown of a report with one section per study."""
  out = [f"# {title}", ""]
  if preamble:
    out += [preamble, ""]
  summary = ["| study | claim | verdict | flags |", "|---|---|---|---|"]
  for s in sections:
    if s.error:
      summary.append(f"| {s.name} | — | failed: {_cell(s.error_summary or error_line(s.error))} | |")
    for c in s.claims:
      summary.append(f"| {s.name} | {c.id} | {c.verdict_text} | {', '.join(c.flags) or '—'} |")
  out += ["## Summary", "", *summary, "", verdict_counts(sections), "", verdict_rules(), ""]
  for s in sections:
    out += [f"## {s.title}", ""]
    if not math.isnan(s.elapsed_s):
      out += [f"_Run time: {s.elapsed_s:.0f} s._", ""]
    if s.error:
      out += ["**This study failed:**", "", "```", s.error, "```", ""]
    out += ["### Setting", "", s.setting, ""]
    if s.claims:
      out += ["### Claims", "", claims_table(s.claims), ""]
    if s.table:
      out += ["### Per-arm results", "", s.table, ""]
    if s.plots:
      out += ["### Plots", ""] + [f"![{os.path.basename(p)}]({p})" for p in s.plots] + [""]
  return "\n".join(out)


def verdict_rules() -> str:
  return VERDICT_RULES.format(chance=f"{CHANCE_MARGIN:g}/K", hull=HULL)


def error_line(error: str) -> str:
  """The line of a traceback that names the exception (its last non-empty line), e.g. ``"ValueError: ..."``."""
  lines = [line.strip() for line in error.splitlines() if line.strip()]
  return lines[-1] if lines else "unknown error"


def _cell(text: str, width: int = 160) -> str:
  text = text.replace("|", "\\|").replace("\n", " ")
  return text if len(text) <= width else text[:width - 1] + "…"


def verdict_counts(sections: Sequence[StudySection]) -> str:
  """One line counting the claims per verdict (every verdict, zeros included) and the failed studies."""
  claims = [c for s in sections for c in s.claims]
  parts = []
  for verdict in VERDICTS:
    n = sum(c.verdict == verdict for c in claims)
    edge = sum(c.verdict == verdict and REASON_GRID_EDGE in c.reason for c in claims)
    parts.append(f"{n} {verdict}" + (f" ({edge} with the optimum at a grid edge)" if edge else ""))
  failed = sum(bool(s.error) for s in sections)
  flags = (f"; flagged {sum(c.underpowered for c in claims)} {UNDERPOWERED}, "
           f"{sum(c.fragile for c in claims)} {FRAGILE}")
  return (f"**Totals:** {len(claims)} claims: " + ", ".join(parts) + flags
          + f"; {failed} stud{'y' if failed == 1 else 'ies'} failed.")


def write_report(path: str, sections: Sequence[StudySection], *, title: str, preamble: str = "") -> str:
  text = render(sections, title=title, preamble=preamble)
  with open(path, "w") as f:
    f.write(text)
  return path
