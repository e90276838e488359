"""Progress of a training run: a tqdm bar on a terminal, one line per chunk where there is none.

``progress=None`` (the default of :func:`experiments.train.loop.train` and the CLI) picks by where stderr
goes: a terminal gets the tqdm bar; anything else (CI logs, ``nohup``, SLURM output files) gets plain lines,
one per logged chunk but at most one every :data:`LINE_INTERVAL_S` seconds (the first and the last chunk are
always printed)::

  [g0] step 400/2000 (20%), 35.2 steps/s, 0:00:45 left, loss 0.512, acc 0.861

``progress=True`` forces the bar, ``progress=False`` (``--no-progress``) prints neither.
"""

from __future__ import annotations

import datetime
import sys
import time
from typing import Callable, TextIO

# The least time between two progress lines (the first and last chunk are printed regardless).
LINE_INTERVAL_S = 30.0


class LineProgress:
  """Progress lines with the group, ``step/total``, steps per second and the time left.

  The rate is the steps done since this run started (or resumed) over the time since then; the time left is
  the steps still to go at that rate.
  """

  def __init__(self, name: str, total: int, initial: int = 0, *, stream: TextIO | None = None,
               min_interval: float = LINE_INTERVAL_S, clock: Callable[[], float] = time.monotonic):
    self.name, self.total, self.initial = name, total, initial
    self.stream = stream if stream is not None else sys.stderr
    self.min_interval, self.clock = min_interval, clock
    self.start = clock()
    self.last: float | None = None

  def update(self, step: int, **postfix) -> None:
    now = self.clock()
    if self.last is not None and step < self.total and now - self.last < self.min_interval:
      return
    self.last = now
    elapsed = max(now - self.start, 1e-9)
    rate = (step - self.initial) / elapsed
    left = (self.total - step) / rate if rate > 0 else float("inf")
    eta = str(datetime.timedelta(seconds=round(left))) if left != float("inf") else "?"
    fields = [f"[{self.name}] step {step}/{self.total} ({100 * step // max(self.total, 1)}%)",
              f"{rate:.3g} steps/s", f"{eta} left"] + [f"{k} {v}" for k, v in postfix.items()]
    print(", ".join(fields), file=self.stream, flush=True)

  def close(self) -> None:
    pass


class _Bar:
  """The tqdm bar behind the same ``update(step, **postfix)`` / ``close()``."""

  def __init__(self, name: str, total: int, initial: int):
    from tqdm.auto import tqdm
    self.bar = tqdm(total=total, initial=initial, desc=name, leave=False, unit="step", dynamic_ncols=True)
    self.step = initial

  def update(self, step: int, **postfix) -> None:
    self.bar.update(step - self.step)
    self.step = step
    self.bar.set_postfix(**postfix)

  def close(self) -> None:
    self.bar.close()


class _Silent:
  def update(self, step: int, **postfix) -> None:
    pass

  def close(self) -> None:
    pass


def start(progress: bool | None, name: str, total: int, initial: int = 0):
  """The progress display of :func:`experiments.train.loop.train`'s ``progress`` (module docstring)."""
  if progress is False:
    return _Silent()
  if progress or sys.stderr.isatty():
    return _Bar(name, total, initial)
  return LineProgress(name, total, initial)
