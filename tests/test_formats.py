"""The harness in the field's formats: TensorBoard event files that equal metrics.jsonl (read back with an
independent TFRecord reader), progress lines where stderr is not a terminal, and every figure as SVG too."""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import struct

import numpy as np
import pytest

from experiments import config as config_lib
from experiments import optimizers
from experiments.train import metrics as metrics_lib
from experiments.train.metrics import MetricsWriter, read_records

pytest.importorskip("tensorboardX")
from tensorboardX.proto import event_pb2  # noqa: E402


# --- TensorBoard ------------------------------------------------------------------------------------------------

def read_events(path: str) -> list:
  """The events of one TFRecord file: per record an 8-byte length, its 4-byte crc, the data, the data's crc."""
  events = []
  with open(path, "rb") as f:
    while True:
      header = f.read(8)
      if not header:
        return events
      (length,) = struct.unpack("<Q", header)
      f.read(4)
      data = f.read(length)
      f.read(4)
      event = event_pb2.Event()
      event.ParseFromString(data)
      events.append(event)


def tensorboard_scalars(logdir: str) -> dict:
  """``(run, tag, step) -> [values]`` over every event file under ``logdir`` (a list, to see duplicates)."""
  out: dict = {}
  for path in glob.glob(os.path.join(logdir, "**", "events.out.tfevents.*"), recursive=True):
    run = os.path.relpath(os.path.dirname(path), logdir)
    for event in read_events(path):
      for value in event.summary.value:
        out.setdefault((run, value.tag, event.step), []).append(value.simple_value)
  return out


def jsonl_scalars(path: str) -> dict:
  """The same mapping from metrics.jsonl, by hand: every finite number but seed, step and diverged_at."""
  out: dict = {}
  for r in read_records(path):
    for tag, value in r.items():
      if tag in ("seed", "step", "diverged_at") or isinstance(value, bool) or not isinstance(value, (int, float)):
        continue
      out.setdefault((f"{r['label']}/seed{r['seed']}", tag, r["step"]), []).append(np.float32(value))
  return out


def record(label: str, seed: int, step: int, loss: float, group: str = "g0", **extra) -> dict:
  return {"group": group, "arm": label.split("[")[0], "label": label, "seed": seed, "step": step, "swept": {},
          "diverged_at": None, "train_loss": loss, "train_accuracy": 0.5, **extra}


def test_tensorboard_runs_per_member_equal_metrics_jsonl(tmp_path):
  path, logdir = str(tmp_path / "metrics.jsonl"), str(tmp_path / "tensorboard")
  with MetricsWriter(path, tensorboard_dir=logdir) as writer:
    for step in (10, 20):
      writer.write([record("adamw[weight_decay=0.1]", s, step, 1.0 / step + s, **{"norm/dense": 2.0 * s})
                    for s in (0, 1)] + [record("sgd", 0, step, float("nan"), test_accuracy=0.25)])
  runs = sorted(os.path.relpath(d, logdir) for d in glob.glob(os.path.join(logdir, "*", "*")))
  assert runs == ["adamw[weight_decay=0.1]/seed0", "adamw[weight_decay=0.1]/seed1", "sgd/seed0"]
  events, expected = tensorboard_scalars(logdir), jsonl_scalars(path)
  assert events == expected
  assert ("sgd/seed0", "train_loss", 10) not in events  # NaN (null in metrics.jsonl): no point
  assert events[("adamw[weight_decay=0.1]/seed1", "norm/dense", 20)] == [2.0]


def test_resume_rewrites_the_group_without_duplicate_steps(tmp_path):
  path, logdir = str(tmp_path / "metrics.jsonl"), str(tmp_path / "tensorboard")
  writer = MetricsWriter(path, tensorboard_dir=logdir)
  writer.write([record("a", 0, step, float(step)) for step in (10, 20, 30)])
  writer.write([record("b", 0, step, float(step), group="g1") for step in (10, 20)])
  writer.close()
  # A new process resumes g0 from its checkpoint at step 10 and trains steps 20 and 30 again, differently.
  with MetricsWriter(path, tensorboard_dir=logdir) as writer:
    writer.truncate("g0", 10)
    writer.write([record("a", 0, step, -float(step)) for step in (20, 30)])
  events = tensorboard_scalars(logdir)
  assert events == jsonl_scalars(path)
  assert all(len(v) == 1 for v in events.values())
  assert events[("a/seed0", "train_loss", 30)] == [-30.0] and events[("b/seed0", "train_loss", 20)] == [20.0]


def test_a_crash_between_the_two_writes_is_repaired_on_resume(tmp_path):
  path, logdir = str(tmp_path / "metrics.jsonl"), str(tmp_path / "tensorboard")
  with open(path, "w") as f:  # metrics.jsonl got steps 10 and 20; the process died before TensorBoard did
    for step in (10, 20):
      f.write(json.dumps(record("a", 0, step, float(step))) + "\n")
  with MetricsWriter(path, tensorboard_dir=logdir) as writer:
    writer.truncate("g0", 20)
  assert tensorboard_scalars(logdir) == jsonl_scalars(path) != {}


def test_run_names_keep_a_slash_in_a_label_inside_its_run():
  assert metrics_lib.run_name({"label": "a/b", "seed": 3}) == "a_b/seed3"


def test_tensorboard_field_is_validated_and_may_change_on_resume(tmp_path):
  from experiments.train import workdir as workdir_lib
  config = config_lib.ExperimentConfig()
  config.train.tensorboard = "yes"
  with pytest.raises(ValueError, match="train.tensorboard must be true or false, got 'yes'"):
    config_lib.validate(config)
  config.train.tensorboard = False
  workdir = str(tmp_path)
  workdir_lib.write_config(workdir, config)
  workdir_lib.check_workdir(workdir, dataclasses.replace(config, train=dataclasses.replace(config.train,
                                                                                      tensorboard=True)))
  with pytest.raises(ValueError, match="different config"):
    workdir_lib.check_workdir(workdir, dataclasses.replace(config, seeds=4))


def tiny_config(**train) -> config_lib.ExperimentConfig:
  return config_lib.ExperimentConfig(
      name="tiny",
      data=config_lib.DataConfig(name="digits", n_train=128, n_test=64),
      model=config_lib.ModelConfig(name="mlp", kwargs={"hidden": [8]}),
      optim=optimizers.SGD(learning_rate=0.05, weight_decay=1e-3),
      train=config_lib.TrainConfig(**{"steps": 8, "batch_size": 32, "log_every": 4, "eval_every": 4,
                                      "eval_batch_size": 64, "num_devices": 1, **train}),
      seeds=2, arms=[config_lib.Arm("decay", sweep={"weight_decay": [1e-3, 1e-2]}),
                     config_lib.Arm("none", {"weight_decay": 0.0})])


def test_a_tiny_run_with_tensorboard_writes_what_metrics_jsonl_holds(tmp_path):
  from experiments.data import load
  from experiments.train import workdir as workdir_lib
  config = tiny_config(tensorboard=True)
  dataset = load("digits", n_train=128, n_test=64)
  workdir = str(tmp_path / "run")
  workdir_lib.run_experiment(config, workdir, dataset=dataset, progress=False, log=lambda _: None)
  logdir, path = os.path.join(workdir, "tensorboard"), os.path.join(workdir, "metrics.jsonl")
  events, expected = tensorboard_scalars(logdir), jsonl_scalars(path)
  members = {run for run, _, _ in events}
  assert len(members) == 6 and "none/seed1" in members  # 3 labels x 2 seeds, one run each
  assert {step for _, _, step in events} == {4, 8}
  assert {"train_loss", "test_accuracy", "lr"} <= {tag for _, tag, _ in events}
  assert events == expected
  # The finished run, opened again after its events were lost: the skipped group's events are rewritten.
  for f in glob.glob(os.path.join(logdir, "*", "*", "events.out.tfevents.*")):
    os.remove(f)
  workdir_lib.run_experiment(config, workdir, dataset=dataset, progress=False, log=lambda _: None)
  assert tensorboard_scalars(logdir) == expected


# --- progress where there is no terminal -----------------------------------------------------------------------

import io  # noqa: E402
import re  # noqa: E402

from experiments.train import progress as progress_lib  # noqa: E402

LINE = re.compile(r"\[(?P<group>[^\]]+)\] step (?P<step>\d+)/(?P<total>\d+) \((?P<pct>\d+)%\), "
                  r"(?P<rate>[\d.e+]+) steps/s, (?P<h>\d+):(?P<m>\d\d):(?P<s>\d\d) left(?P<rest>.*)")


def parse(text: str) -> list[dict]:
  lines = text.splitlines()
  parsed = [LINE.fullmatch(line) for line in lines]
  assert all(parsed), lines
  return [dict(m.groupdict(), left=int(m["h"]) * 3600 + int(m["m"]) * 60 + int(m["s"])) for m in parsed]


class FakeClock:
  def __init__(self):
    self.t = 0.0

  def __call__(self) -> float:
    return self.t


def test_progress_lines_carry_group_step_rate_and_a_falling_eta():
  stream, clock = io.StringIO(), FakeClock()
  bar = progress_lib.LineProgress("g0", total=100, initial=20, stream=stream, min_interval=0.0, clock=clock)
  for step, t in [(40, 10.0), (60, 15.0), (80, 20.0), (100, 25.0)]:  # 20 steps in 10 s, then 20 every 5 s
    clock.t = t
    bar.update(step, loss="0.5")
  lines = parse(stream.getvalue())
  assert [int(x["step"]) for x in lines] == [40, 60, 80, 100] and {x["group"] for x in lines} == {"g0"}
  assert [x["total"] for x in lines] == ["100"] * 4 and lines[0]["pct"] == "40"
  # Rate over the steps done here (from the resumed step 20): 20/10, 40/15, 60/20, 80/25 steps/s.
  assert [float(x["rate"]) for x in lines] == pytest.approx([2.0, 40 / 15, 3.0, 3.2], rel=1e-2)
  assert [x["left"] for x in lines] == [30, 15, 7, 0]  # steps to go / rate, rounded to seconds
  assert lines[0]["rest"] == ", loss 0.5"


def test_progress_lines_are_rate_limited_but_keep_the_first_and_last():
  stream, clock = io.StringIO(), FakeClock()
  bar = progress_lib.LineProgress("g1", total=50, stream=stream, min_interval=30.0, clock=clock)
  for step in range(5, 55, 5):
    clock.t += 10.0
    bar.update(step)
  assert [int(x["step"]) for x in parse(stream.getvalue())] == [5, 20, 35, 50]


def test_training_without_a_terminal_prints_progress_lines_and_no_progress_silences_them(capsys):
  from experiments.data import load
  from experiments.train import Program, make_groups
  config = tiny_config()
  (group,) = make_groups(config)
  program = Program(config, group, load("digits", n_train=128, n_test=64))
  program.train()  # capsys: stderr is not a terminal
  lines = parse(capsys.readouterr().err)
  assert [(x["group"], int(x["step"]), int(x["total"])) for x in lines] == [(group.name, 4, 8), (group.name, 8, 8)]
  assert "loss" in lines[-1]["rest"] and lines[-1]["left"] == 0
  program.reset(group.members)
  program.train(progress=False)
  assert capsys.readouterr().err == ""


# --- figures as SVG too -----------------------------------------------------------------------------------------

import xml.etree.ElementTree as ET  # noqa: E402

from experiments import studies  # noqa: E402
from experiments.train import plots as plots_lib  # noqa: E402


def test_the_standard_plots_write_an_svg_beside_every_png(tmp_path):
  from test_plots import _synthetic  # synthetic results shaped like the study's quick config
  config = studies.get("decay_placement").make_config(True)
  paths = plots_lib.standard_plots(_synthetic(config), str(tmp_path), styles=plots_lib.StyleMap.from_config(config))
  pngs = sorted(glob.glob(str(tmp_path / "*.png")))
  assert len(paths) == 4 and sorted(paths) == pngs  # the report keeps linking PNGs
  assert len(glob.glob(str(tmp_path / "*.svg"))) == len(pngs)
  for png in pngs:
    with open(png, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    root = ET.parse(png[:-len(".png")] + ".svg").getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg", (png, root.tag)
    assert float(root.get("width").rstrip("pt")) > 0 and root.find(".//{http://www.w3.org/2000/svg}path") is not None


def test_every_figure_is_saved_through_save_figure():
  # The studies' own figures get their SVG the same way: no module but plots.save_figure calls savefig.
  root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments")
  callers = [os.path.relpath(p, root) for p in glob.glob(os.path.join(root, "**", "*.py"), recursive=True)
             if "savefig(" in open(p, encoding="utf-8").read()]
  assert callers == [os.path.join("train", "plots.py")]
  source = open(os.path.join(root, "train", "plots.py"), encoding="utf-8").read()
  assert source.count("savefig(") == 2 and source.index("savefig(") > source.index("def save_figure(")


def test_the_svg_of_a_figure_is_reproducible(tmp_path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  out = []
  for i in range(2):
    fig, ax = plt.subplots()
    ax.plot([0, 1, 2], [1, 0, 2], label="a")
    ax.legend()
    plots_lib.save_figure(fig, str(tmp_path / f"f{i}.png"))
    out.append((tmp_path / f"f{i}.svg").read_bytes())
  assert out[0] == out[1] and b"<dc:date>" not in out[0]


def test_tensorboard_without_tensorboardx_says_what_to_install(tmp_path, monkeypatch):
  import sys
  monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import tensorboardX now raises ImportError
  with pytest.raises(ImportError, match=r"train.tensorboard=true needs tensorboardX: pip install tensorboardX"):
    MetricsWriter(str(tmp_path / "metrics.jsonl"), tensorboard_dir=str(tmp_path / "tb"))
  MetricsWriter(str(tmp_path / "metrics.jsonl")).write([record("a", 0, 1, 1.0)])  # off: not needed
