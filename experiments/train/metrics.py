"""``metrics.jsonl``: one JSON object per member per logged step, and the per-arm arrays read back from it.

Each line holds ``group``, ``arm``, ``label`` (the arm plus its swept values), ``seed``, ``step``, the chunk
means ``train_loss`` / ``train_accuracy``, the diagnostics of the chunk's last step (``lr``,
``weight_decay``, ``norm/<path>``, ``eff_lr/<path>``, ``angle/<path>``, ``norm/scale_invariant``), and at
evaluation steps ``test_loss`` / ``test_accuracy``. Everything a study's analysis reads comes from this
file, so a finished work directory can be re-analysed without training.

With ``train.tensorboard=true`` the same records also go to TensorBoard event files (:class:`TensorBoardWriter`,
via ``tensorboardX``): one run per member, ``<workdir>/tensorboard/<label>/seed<seed>``, so the curves of a
sweep overlay (``tensorboard --logdir <workdir>/tensorboard``). ``metrics.jsonl`` stays the source of truth:
whenever a group starts or resumes (:meth:`MetricsWriter.truncate`), the event files of its members are
rewritten from the records ``metrics.jsonl`` keeps, so a resumed run has no duplicate steps and a run killed
between the two writes is made whole again.
"""

from __future__ import annotations

import dataclasses
import json
import math
import glob
import os
from typing import Iterable

import numpy as np


class MetricsWriter:
  """Appends records to ``<workdir>/metrics.jsonl`` (and, given ``tensorboard_dir``, to TensorBoard).

  Close it (or use it as a context manager) so the event files are complete; every :meth:`write` flushes them.
  """

  def __init__(self, path: str, *, tensorboard_dir: str | None = None):
    self.path = path
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    self.tensorboard = TensorBoardWriter(tensorboard_dir) if tensorboard_dir is not None else None

  def write(self, records: Iterable[dict]) -> None:
    records = [_finite(record) for record in records]
    with open(self.path, "a") as f:
      for record in records:
        f.write(json.dumps(record) + "\n")
    if self.tensorboard is not None:
      self.tensorboard.write(records)

  def truncate(self, group: str, step: int, *, member: tuple[str, int] | None = None) -> None:
    """Drops the records of ``group`` after ``step`` (a run resumed from the checkpoint at ``step``).

    ``member``: ``(label, seed)`` to drop only that member's records (members run one after another). With
    TensorBoard on, the event files of the affected members are then rewritten from the kept records.
    """
    if not os.path.exists(self.path):
      return
    records = read_records(self.path)
    mine = lambda r: r["group"] == group and (member is None or (r["label"], r["seed"]) == tuple(member))
    kept = [line for line in records if not (mine(line) and line["step"] > step)]
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      for record in kept:
        f.write(json.dumps(record) + "\n")
    os.replace(tmp, self.path)
    if self.tensorboard is not None:
      runs = {run_name(r) for r in records if mine(r)}
      self.tensorboard.rewrite(runs, [r for r in kept if mine(r)])

  def sync_tensorboard(self, group: str) -> None:
    """Writes the event files of ``group``'s members from ``metrics.jsonl`` where a member has none (a finished
    run looked at with TensorBoard for the first time)."""
    if self.tensorboard is None or not os.path.exists(self.path):
      return
    records = [r for r in read_records(self.path) if r["group"] == group]
    runs = {run_name(r) for r in records}
    if any(not self.tensorboard.event_files(run) for run in runs):
      self.tensorboard.rewrite(runs, records)

  def close(self) -> None:
    if self.tensorboard is not None:
      self.tensorboard.close()

  def __enter__(self) -> "MetricsWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


# Record keys that are not curves.
_NOT_SCALARS = frozenset({"seed", "step", "diverged_at"})


def run_name(record: dict) -> str:
  """The TensorBoard run of a record's member: ``<label>/seed<seed>`` (a ``/`` in the label becomes ``_``)."""
  return f"{str(record['label']).replace('/', '_').replace(os.sep, '_')}/seed{record['seed']}"


def scalars(record: dict) -> dict[str, float]:
  """The record's curves as TensorBoard scalars: every finite number but ``seed``, ``step`` and ``diverged_at``."""
  return {k: float(v) for k, v in record.items()
          if k not in _NOT_SCALARS and isinstance(v, (int, float)) and not isinstance(v, bool)
          and math.isfinite(v)}


class TensorBoardWriter:
  """Writes metric records as TensorBoard scalars, one run (a subdirectory of ``logdir``) per member.

  ``tensorboardX`` rather than ``clu.metric_writers``: it needs only protobuf and numpy, where clu's
  TensorBoard writer pulls in TensorFlow (or tensorboardX anyway).
  """

  def __init__(self, logdir: str):
    try:
      import tensorboardX  # noqa: F401  only runs with train.tensorboard=true need it
    except ImportError:
      raise ImportError("train.tensorboard=true needs tensorboardX: pip install tensorboardX (it is in the "
                        "experiments extra, pip install \".[experiments]\").") from None
    self.logdir = logdir
    self._writers: dict = {}

  def _writer(self, run: str):
    if run not in self._writers:
      from tensorboardX import SummaryWriter
      self._writers[run] = SummaryWriter(os.path.join(self.logdir, run), flush_secs=60)
    return self._writers[run]

  def write(self, records: Iterable[dict]) -> None:
    touched = set()
    for record in records:
      run = run_name(record)
      writer = self._writer(run)
      for tag, value in scalars(record).items():
        writer.add_scalar(tag, value, global_step=int(record["step"]))
      touched.add(run)
    for run in touched:
      self._writers[run].flush()

  def event_files(self, run: str) -> list[str]:
    return sorted(glob.glob(os.path.join(self.logdir, glob.escape(run), "events.out.tfevents.*")))

  def rewrite(self, runs: Iterable[str], records: Iterable[dict]) -> None:
    """Replaces the event files of ``runs`` by ones holding exactly ``records`` (theirs, in order)."""
    runs = set(runs)
    for run in runs:
      writer = self._writers.pop(run, None)
      if writer is not None:
        writer.close()
      for path in self.event_files(run):
        os.remove(path)
    self.write(r for r in records if run_name(r) in runs)

  def close(self) -> None:
    for writer in self._writers.values():
      writer.close()
    self._writers.clear()


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
