"""``metrics.jsonl``: one JSON object per member per logged step, and the per-arm arrays read back from it.

Each line holds ``group``, ``arm``, ``label`` (the arm plus its swept values), ``seed``, ``step``, the chunk
means ``train_loss`` / ``train_accuracy``, the diagnostics of the chunk's last step (``lr``,
``weight_decay``, ``norm/<path>``, ``eff_lr/<path>``, ``angle/<path>``, ``norm/scale_invariant``), and at
evaluation steps ``test_loss`` / ``test_accuracy``. Everything a study's analysis reads comes from this
file, so a finished work directory can be re-analysed without training.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Iterable

import numpy as np


class MetricsWriter:
  """Appends records to ``<workdir>/metrics.jsonl``."""

  def __init__(self, path: str):
    self.path = path
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

  def write(self, records: Iterable[dict]) -> None:
    with open(self.path, "a") as f:
      for record in records:
        f.write(json.dumps(_finite(record)) + "\n")

  def truncate(self, group: str, step: int) -> None:
    """Drops the records of ``group`` after ``step`` (a run resumed from the checkpoint at ``step``)."""
    if not os.path.exists(self.path):
      return
    kept = [line for line in read_records(self.path) if not (line["group"] == group and line["step"] > step)]
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      for record in kept:
        f.write(json.dumps(record) + "\n")
    os.replace(tmp, self.path)


def _finite(record: dict) -> dict:
  return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}


def read_records(path: str) -> list[dict]:
  records = []
  with open(path) as f:
    for line in f:
      line = line.strip()
      if line:
        try:
          records.append(json.loads(line))
        except json.JSONDecodeError:
          continue  # a line cut by a killed process
  return records


@dataclasses.dataclass
class ArmResult:
  """One arm (or one swept point of it), over seeds.

  Attributes:
    label: the arm's label.
    seeds: seeds, sorted; row ``i`` of every array is seed ``seeds[i]``.
    swept: the swept hyperparameter values of this label.
    steps: logged steps, shape ``(points,)``.
    series: metric name -> ``(seeds, points)`` array (NaN where a metric was not logged at a step).
  """
  label: str
  arm: str
  seeds: list
  swept: dict
  steps: np.ndarray
  series: dict

  def final(self, metric: str = "test_accuracy") -> np.ndarray:
    """The last logged value of ``metric`` for every seed."""
    values = self.series[metric]
    out = np.full(values.shape[0], np.nan)
    for i, row in enumerate(values):
      finite = np.flatnonzero(np.isfinite(row))
      if finite.size:
        out[i] = row[finite[-1]]
    return out


def load_results(path: str) -> dict[str, ArmResult]:
  """Reads ``metrics.jsonl`` into one :class:`ArmResult` per label."""
  by_label: dict[str, list[dict]] = {}
  for record in read_records(path):
    by_label.setdefault(record["label"], []).append(record)
  results = {}
  for label, records in by_label.items():
    seeds = sorted({r["seed"] for r in records})
    steps = np.array(sorted({r["step"] for r in records}))
    keys = sorted({k for r in records for k, v in r.items() if isinstance(v, (int, float)) or v is None}
                  - {"seed", "step"})
    series = {k: np.full((len(seeds), len(steps)), np.nan) for k in keys}
    seed_index = {s: i for i, s in enumerate(seeds)}
    step_index = {s: i for i, s in enumerate(steps)}
    for r in records:
      for k in keys:
        v = r.get(k)
        if isinstance(v, (int, float)):
          series[k][seed_index[r["seed"]], step_index[r["step"]]] = v
    results[label] = ArmResult(label=label, arm=records[0]["arm"], seeds=seeds, swept=records[0].get("swept", {}),
                               steps=steps, series=series)
  return results
