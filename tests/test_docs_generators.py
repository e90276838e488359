"""The generated documentation pages (results, benchmarks) and benchmarks/run_all.py's parsing and discovery."""

from __future__ import annotations

import importlib.util
import json
import pathlib

from experiments import report as report_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load(path: pathlib.Path, name: str):
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


results_gen = _load(ROOT / "docs" / "_generate_results.py", "docs_generate_results")
bench_gen = _load(ROOT / "docs" / "_generate_benchmarks.py", "docs_generate_benchmarks")
run_all = _load(ROOT / "benchmarks" / "run_all.py", "benchmarks_run_all")
paired = _load(ROOT / "benchmarks" / "_paired.py", "benchmarks_paired")


def test_results_page_without_a_report_gives_the_command(tmp_path):
  text = results_gen.render(tmp_path / "no_run", tmp_path / "out")
  assert "No results have been generated yet" in text
  assert "bash scripts/reproduce.sh" in text
  assert (tmp_path / "out" / "results.md").read_text() == text


def test_results_page_from_a_reproduce_report_copies_plots_and_names_the_command(tmp_path):
  workdir = tmp_path / "quick"
  (workdir / "early_decay").mkdir(parents=True)
  (workdir / "early_decay" / "accuracy.png").write_bytes(b"\x89PNG fake")
  section = report_lib.StudySection(
      name="early_decay", title="early_decay: when decay acts", setting="Mode: quick.", claims=[],
      plots=["early_decay/accuracy.png", "early_decay/missing.png"], table="| arm |\n|---|\n| none |")
  report_lib.write_report(str(workdir / "REPORT.md"), [section], title="Reproducing the weight-decay claims",
                          preamble="Produced by `python -m experiments reproduce --quick`.")
  out = tmp_path / "out"
  text = results_gen.render(workdir, out)

  assert text.startswith("# Results\n")
  assert "# Reproducing the weight-decay claims" not in text        # the report's title is replaced
  assert "## early_decay: when decay acts" in text
  assert "![accuracy.png](results/early_decay/accuracy.png)" in text
  assert (out / "results" / "early_decay" / "accuracy.png").read_bytes() == b"\x89PNG fake"
  assert "early_decay/missing.png` is referenced by the report but missing" in text
  assert f"python -m experiments reproduce --quick --workdir {workdir}" in text


def test_results_command_for_the_default_and_single_study_reports(tmp_path):
  body = "Produced by `python -m experiments reproduce --quick`."
  assert results_gen.command_for("# Reproducing", body, results_gen.DEFAULT_WORKDIR) == "bash scripts/reproduce.sh"
  assert results_gen.command_for("# Study `fixnorm`", "Mode: full.", tmp_path) == (
      f"python -m experiments fixnorm --workdir {tmp_path}")
  assert results_gen.command_for("# Study `fixnorm`", "Mode: quick.", tmp_path).startswith(
      "python -m experiments fixnorm --quick ")


SUMMARY = {
    "machine": {"date_utc": "2026-01-02T03:04:05Z", "git_commit": "0123456789abcdef", "git_dirty": False,
                "platform": "Linux-x", "machine": "x86_64", "processor": None, "python": "3.11.7",
                "cpu_count": 2, "load_average_at_start": [1.0, 2.5, 3.25], "jax": "0.10.2", "backend": "cpu",
                "devices": [{"id": 0, "platform": "cpu", "kind": "cpu"}]},
    "full": False, "timeout_s": 900.0, "skipped": {"kfac_models.py": "helper"},
    "benchmarks": {
        "overhead": {"command": "python benchmarks/overhead.py", "returncode": 0, "wall_s": 61.2, "ok": True,
                     "result": {"benchmark": "overhead", "comparisons": {"adam": {"time_ratio": 1.0123,
                                                                                  "state_bytes_ratio": 1.0}}}},
        "slow": {"command": "python benchmarks/slow.py", "returncode": None, "wall_s": 900.0, "ok": False,
                 "result": None, "error": "timed out", "output_tail": "[run_all] timed out after 900 s"},
    },
    "total_wall_s": 961.2, "all_ok": False,
}


def test_benchmarks_page_shows_machine_numbers_and_failures(tmp_path):
  path = tmp_path / "latest.json"
  path.write_text(json.dumps(SUMMARY))
  text = bench_gen.render(path, tmp_path / "out")
  assert "| CPU count | 2 |" in text
  assert "| jax devices | 1 × cpu:cpu |" in text
  assert "`0123456789ab`" in text and "uncommitted" not in text
  assert "| load average at start (1, 5, 15 min) | 1.00, 2.50, 3.25 |" in text
  assert "| `comparisons.adam.time_ratio` | 1.012 |" in text
  assert "comparisons.adam.time_ratio = 1.012" in text               # headline column of the summary
  assert "**failed** (timed out)" in text and "[run_all] timed out after 900 s" in text
  assert "- `kfac_models.py`: helper" in text


def test_benchmarks_page_without_results_says_not_yet_run(tmp_path):
  text = bench_gen.render(tmp_path / "absent.json", tmp_path / "out")
  assert "have not been run yet" in text and "python benchmarks/run_all.py" in text


def test_run_all_reads_the_last_json_object_printed():
  assert run_all.last_json_object('{"a": 1}\n') == {"a": 1}
  noisy = 'compiling...\n{"old": true}\nwarning: x\n{\n  "ratio": 1.5,\n  "nested": {"k": [1, 2]}\n}\n'
  assert run_all.last_json_object(noisy) == {"ratio": 1.5, "nested": {"k": [1, 2]}}
  assert run_all.last_json_object("no json here\n") is None
  assert run_all.last_json_object("[1, 2]") is None


def test_run_all_runs_only_scripts_with_a_usage_line(tmp_path):
  (tmp_path / "speed.py").write_text('"""Speed.\n\nUsage: python benchmarks/speed.py [--full]\n"""\n')
  (tmp_path / "sweep.py").write_text('"""Sweep.\n\n  python benchmarks/sweep.py [--full]\n"""\n')
  (tmp_path / "helper_models.py").write_text('"""Models shared by speed.py."""\n')
  (tmp_path / "worker.py").write_text('"""Usage:\n  /venv/bin/python benchmarks/worker.py CONFIG\n"""\n')
  (tmp_path / "_scratch.py").write_text('"""Usage: python benchmarks/_scratch.py"""\n')
  scripts, skipped = run_all.discover(tmp_path)
  assert [s.name for s in scripts] == ["speed.py", "sweep.py"]
  assert set(skipped) == {"helper_models.py", "worker.py", "_scratch.py"}


def test_run_all_collects_a_benchmarks_json_and_reports_failures(tmp_path):
  ok = tmp_path / "ok.py"
  ok.write_text('import json\nprint("warming up")\nprint(json.dumps({"ratio": 0.5}, indent=2))\n')
  entry = run_all.run_one(ok, [], timeout=60, cwd=tmp_path)
  assert entry["ok"] and entry["result"] == {"ratio": 0.5} and entry["returncode"] == 0
  bad = tmp_path / "bad.py"
  bad.write_text('import sys\nprint("boom", file=sys.stderr)\nsys.exit(3)\n')
  entry = run_all.run_one(bad, [], timeout=60, cwd=tmp_path)
  assert not entry["ok"] and entry["error"] == "exit status 3" and "boom" in entry["output_tail"]


def test_every_target_of_every_benchmark_is_tabulated_met_or_not(tmp_path):
  targets = [{"name": "adam.time", "ratio": 1.025, "ratio_ci95": [1.021, 1.03], "target": "<= 1.02",
              "meets_target": False, "decided": True},
             {"name": "adam.state_bytes", "ratio": 1.0, "ratio_ci95": None, "target": "<= 1.0",
              "meets_target": True, "decided": True}]
  summary = json.loads(json.dumps(SUMMARY))
  summary["benchmarks"]["overhead"]["result"]["targets"] = targets
  summary["benchmarks"]["legacy"] = {"command": "python benchmarks/legacy.py", "returncode": 0, "wall_s": 1.0,
                                     "ok": True, "result": {"ratio": 0.5}}
  rows = run_all.collect_targets(summary["benchmarks"])
  assert [(r["benchmark"], r["name"]) for r in rows] == [
      ("overhead", "adam.time"), ("overhead", "adam.state_bytes"), ("slow", None), ("legacy", None)]
  table = run_all.format_targets(rows).splitlines()
  assert len(table) == 1 + 4
  assert "NOT MET" in table[1] and "[1.021, 1.030]" in table[1] and "<= 1.02" in table[1]
  assert "exact" in table[2] and " met" in table[2]
  assert "timed out" in table[3] and "listed no targets" in table[4]
  path = tmp_path / "latest.json"
  path.write_text(json.dumps(summary))
  text = bench_gen.render(path, tmp_path / "out")
  assert "| overhead | `adam.time` | 1.025 | [1.021, 1.03] | <= 1.02 | **not met** |" in text
  assert "| overhead | `adam.state_bytes` | 1 | exact | <= 1.0 | met |" in text


def test_target_entries_follow_the_convention_run_all_reads():
  exact = paired.target("bytes", ratio=1.025, max_ratio=1.02)
  assert exact == {"name": "bytes", "ratio": 1.025, "ratio_ci95": None, "target": "<= 1.02",
                   "meets_target": False, "decided": True}
  timed = {"ratio": 2.5, "ratio_ci95": [1.5, 3.5], "target": ">= 3.0", "meets_target": False, "decided": False,
           "repeats": 7}
  assert paired.target("speed", timed) == {"name": "speed", "ratio": 2.5, "ratio_ci95": [1.5, 3.5],
                                           "target": ">= 3.0", "meets_target": False, "decided": False}
  # The interval decides: straddling the target is undecided whichever side the ratio is on.
  assert paired.target_verdict(1.01, 0.99, 1.03, max_ratio=1.02) == {
      "target": "<= 1.02", "meets_target": True, "decided": False}
