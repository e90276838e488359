"""Statistics over seeds, claim verdicts, and ``REPORT.md``.

Every comparison is over seeds. Arms share seeds (same initial weights and data order for seed ``s`` in
every arm), so differences are *paired*: the effect of A over B is the mean over seeds of ``a_s − b_s``, with
the 95% t-interval ``mean ± t_{0.975, n−1} · sd / √n`` (sd with ``n − 1`` in the denominator). Linear
contrasts (e.g. "recovers half the gain": ``(c − n) − ½(d − n)``) get the same interval on the per-seed
contrast values.

Verdict rules (also printed in every report):

* **directional** claim "A beats B by at least δ": *reproduced* if the interval's lower end is above 0 and
  the mean effect is at least δ; *not reproduced* if the interval's upper end is below δ (the effect is
  confidently smaller than the smallest one that would count, or of the opposite sign); otherwise
  *inconclusive*.
* **equivalence** claim "A matches B within ±m": *reproduced* if the whole interval lies in ``[−m, m]``;
  *not reproduced* if it lies entirely outside it; otherwise *inconclusive*.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Sequence

import numpy as np

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
INCONCLUSIVE = "inconclusive"

# Two-sided 95% Student-t critical values t_{0.975, df}, df = 1..30 (standard tables).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)


def t_critical(df: int) -> float:
  """t_{0.975, df}: exact table up to 30 degrees of freedom, then the Cornish-Fisher expansion."""
  if df < 1:
    raise ValueError(f"a t-interval needs at least 2 samples (df >= 1), got df={df}.")
  if df <= len(_T975):
    return _T975[df - 1]
  z = 1.959964
  return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


@dataclasses.dataclass(frozen=True)
class Interval:
  """A mean with its 95% t-interval over ``n`` samples."""
  mean: float
  low: float
  high: float
  n: int

  def __str__(self) -> str:
    return f"{self.mean:+.4g} [{self.low:+.4g}, {self.high:+.4g}]"


def mean_ci(samples: Sequence[float]) -> Interval:
  """Mean and 95% t-interval of ``samples`` (NaNs are dropped; fewer than 2 left gives an infinite interval)."""
  x = np.asarray(samples, np.float64)
  x = x[np.isfinite(x)]
  n = x.size
  if n == 0:
    return Interval(math.nan, -math.inf, math.inf, 0)
  mean = float(x.mean())
  if n < 2:
    return Interval(mean, -math.inf, math.inf, n)
  half = t_critical(n - 1) * float(x.std(ddof=1)) / math.sqrt(n)
  return Interval(mean, mean - half, mean + half, n)


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


@dataclasses.dataclass
class Claim:
  """One prediction of a paper, tested.

  Attributes:
    id: the claim's tag in ``docs/papers.md`` §7 (e.g. ``"B1"``), with a suffix if split.
    statement: the paper's claim in words.
    prediction: what we expected to measure, and the verdict rule's δ or margin.
    measured: what ``effect`` is (which arms, which metric, which unit).
    effect: the interval over seeds.
    verdict: reproduced / not reproduced / inconclusive.
    notes: anything the reader needs to judge it (sample values, caveats).
  """
  id: str
  statement: str
  prediction: str
  measured: str
  effect: Interval
  verdict: str
  notes: str = ""


def directional_claim(id: str, statement: str, measured: str, ci: Interval, *, min_effect: float,
                      unit: str = "", notes: str = "") -> Claim:
  prediction = f"effect > 0 (counts if at least {min_effect:g}{unit})"
  return Claim(id, statement, prediction, measured, ci, directional_verdict(ci, min_effect), notes)


def equivalence_claim(id: str, statement: str, measured: str, ci: Interval, *, margin: float, unit: str = "",
                      notes: str = "") -> Claim:
  prediction = f"|effect| <= {margin:g}{unit}"
  return Claim(id, statement, prediction, measured, ci, equivalence_verdict(ci, margin), notes)


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
  error: str = ""


VERDICT_RULES = """\
**Verdict rules.** Effects are paired differences over seeds (every arm uses the same seeds, so seed `s`
starts from the same weights and sees the same batches in every arm), reported as mean [95% t-interval].
A *directional* claim with smallest relevant effect δ is *reproduced* when the interval lies above 0 and
the mean is at least δ, *not reproduced* when the interval lies below δ, and *inconclusive* otherwise. An *equivalence* claim with margin m
is *reproduced* when the interval lies inside [−m, m], *not reproduced* when it lies entirely outside,
and *inconclusive* otherwise. Accuracies are in percentage points."""


def claims_table(claims: Sequence[Claim]) -> str:
  lines = ["| claim | prediction | measured | effect, 95% CI | n | verdict |",
           "|---|---|---|---|---|---|"]
  for c in claims:
    lines.append(f"| **{c.id}** {c.statement} | {c.prediction} | {c.measured} | {c.effect} | {c.effect.n} | "
                 f"**{c.verdict}** |")
  notes = [f"- **{c.id}**: {c.notes}" for c in claims if c.notes]
  return "\n".join(lines + ([""] + notes if notes else []))


def render(sections: Sequence[StudySection], *, title: str, preamble: str = "") -> str:
  """The markdown of a report with one section per study."""
  out = [f"# {title}", ""]
  if preamble:
    out += [preamble, ""]
  summary = ["| study | claim | verdict |", "|---|---|---|"]
  for s in sections:
    if s.error:
      summary.append(f"| {s.name} | — | failed: {s.error.splitlines()[0][:120]} |")
    for c in s.claims:
      summary.append(f"| {s.name} | {c.id} | {c.verdict} |")
  out += ["## Summary", "", *summary, "", VERDICT_RULES, ""]
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


def write_report(path: str, sections: Sequence[StudySection], *, title: str, preamble: str = "") -> str:
  text = render(sections, title=title, preamble=preamble)
  with open(path, "w") as f:
    f.write(text)
  return path
