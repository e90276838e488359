"""Runs every benchmark script and writes one JSON summary with the machine it ran on.

A benchmark is a ``benchmarks/<name>.py`` whose module docstring has a line starting with
``python benchmarks/<name>.py`` (optionally after ``Usage:``), i.e. says how to run it by hand, and that
prints one JSON object (the project's convention). Files starting with ``_`` (scratch) and helpers without
such a line (e.g. ``kfac_models.py``, the ``kfac_jax_worker.py`` that ``kfac_speed.py`` launches) are not
run; they are listed under ``skipped`` with the reason, so nothing disappears silently.

Each benchmark runs in its own subprocess (its own jax runtime, no cross-talk through compilation
caches or device memory), one after another, with a time limit. The summary,
``benchmarks/results/latest.json`` by default, holds for every benchmark its command, exit status,
wall time and the JSON object it printed (or the tail of its output if it printed none), and for the
whole run the date, git commit, platform, Python and jax versions, CPU count, load average and jax
devices. ``docs/_generate_benchmarks.py`` renders it as the documentation's benchmarks page.

Targets. Every benchmark lists its targets in the JSON object it prints, under ``"targets"``, one entry
per target (``benchmarks/_paired.py`` ``target()`` builds them)::

  "targets": [{"name": "adam_decoupled_vs_optax_adamw.time",   # unique within the benchmark
               "ratio": 1.004,                 # candidate / reference (time, or e.g. throughput, bytes)
               "ratio_ci95": [0.991, 1.017],   # 95% interval of the ratio; null for an exact (untimed) ratio
               "target": "<= 1.02",            # "<= X" (a cost) or ">= X" (a speed-up)
               "meets_target": true,           # the ratio is on the target's side
               "decided": true}, ...]          # the whole interval is on one side of the target

After the run, one line per target of every benchmark is printed (met or not, decided or not, with the
interval), and the same rows are kept in the summary under ``"targets"`` with the benchmark's name added;
a benchmark that ran but listed no targets, or failed, gets one row saying so, so no target disappears
silently.

Usage: python benchmarks/run_all.py [--full] [--only NAME ...] [--timeout SECONDS] [--out PATH]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import re
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_OUT = HERE / "results" / "latest.json"


def discover(directory: pathlib.Path = HERE) -> tuple[list[pathlib.Path], dict[str, str]]:
  """The benchmark scripts in ``directory`` (sorted) and, for every other ``.py`` file, why it is skipped."""
  scripts, skipped = [], {}
  for path in sorted(directory.glob("*.py")):
    if path.name == pathlib.Path(__file__).name:
      continue
    if path.name.startswith("_"):
      skipped[path.name] = "private/scratch file (name starts with '_')"
      continue
    usage = re.compile(rf"^\s*(Usage:\s*)?python\s+benchmarks/{re.escape(path.name)}\b", re.M)
    if not usage.search(_docstring(path)):
      skipped[path.name] = f"helper: its docstring has no 'python benchmarks/{path.name}' usage line"
      continue
    scripts.append(path)
  return scripts, skipped


def _docstring(path: pathlib.Path) -> str:
  import ast
  try:
    return ast.get_docstring(ast.parse(path.read_text())) or ""
  except SyntaxError:
    return ""


def last_json_object(stdout: str) -> dict | None:
  """The last JSON object printed (one line, or indented over several lines), or None."""
  text = stdout.strip()
  if not text:
    return None
  try:
    value = json.loads(text)
    return value if isinstance(value, dict) else None
  except json.JSONDecodeError:
    pass
  lines = text.splitlines()
  for start in range(len(lines) - 1, -1, -1):
    if lines[start].lstrip().startswith("{"):
      try:
        value = json.loads("\n".join(lines[start:]))
      except json.JSONDecodeError:
        continue
      if isinstance(value, dict):
        return value
  return None


def _git(*args: str) -> str | None:
  try:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True,
                          timeout=30).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return None


def machine_info() -> dict:
  """Where the numbers were measured: host, software versions and the devices jax sees."""
  info = {
      "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
      "git_commit": _git("rev-parse", "HEAD"),
      "git_dirty": None,
      "platform": platform.platform(),
      "machine": platform.machine(),
      "processor": platform.processor() or None,
      "python": platform.python_version(),
      "cpu_count": os.cpu_count(),
      "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
  }
  status = _git("status", "--porcelain", "--untracked-files=no")
  info["git_dirty"] = None if status is None else bool(status)
  # Asked in a subprocess so that this process never initialises a jax backend of its own.
  probe = ("import json, jax; print(json.dumps({'jax': jax.__version__, 'backend': jax.default_backend(), "
           "'devices': [{'id': d.id, 'platform': d.platform, 'kind': d.device_kind} for d in jax.devices()]}))")
  try:
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                            cwd=ROOT)
    info.update(last_json_object(result.stdout) or {"jax_probe_error": result.stderr[-2000:]})
  except subprocess.SubprocessError as error:
    info["jax_probe_error"] = repr(error)
  return info


def run_one(script: pathlib.Path, extra_args: list[str], timeout: float, cwd: pathlib.Path = ROOT) -> dict:
  """Runs one benchmark script in a subprocess (from ``cwd``) and collects the JSON object it prints."""
  try:
    shown = str(script.resolve().relative_to(cwd.resolve()))
  except ValueError:
    shown = str(script)
  command = [sys.executable, shown, *extra_args]
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
  start = time.perf_counter()
  try:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    returncode, stdout, stderr = result.returncode, result.stdout, result.stderr
  except subprocess.TimeoutExpired as error:
    returncode = None
    stdout = error.stdout.decode() if isinstance(error.stdout, bytes) else (error.stdout or "")
    stderr = (error.stderr.decode() if isinstance(error.stderr, bytes) else (error.stderr or ""))
    stderr += f"\n[run_all] timed out after {timeout:g} s"
  wall_s = time.perf_counter() - start
  parsed = last_json_object(stdout)
  entry = {
      "command": " ".join(["python", *command[1:]]),
      "returncode": returncode,
      "wall_s": round(wall_s, 2),
      "ok": returncode == 0 and parsed is not None,
      "result": parsed,
  }
  if not entry["ok"]:
    why = ("timed out" if returncode is None else
           f"exit status {returncode}" if returncode != 0 else "printed no JSON object")
    entry["error"] = why
    entry["output_tail"] = (stdout[-2000:] + "\n--- stderr ---\n" + stderr[-4000:]).strip()
  return entry


def collect_targets(benchmarks: dict) -> list[dict]:
  """One row per target of every benchmark (see the module docstring), plus a row for each that listed none."""
  rows = []
  for name, entry in benchmarks.items():
    result = entry.get("result") or {}
    targets = result.get("targets") if isinstance(result, dict) else None
    if not entry.get("ok") or not isinstance(targets, list) or not targets:
      why = entry.get("error") if not entry.get("ok") else "listed no targets"
      rows.append({"benchmark": name, "name": None, "ratio": None, "ratio_ci95": None, "target": None,
                   "meets_target": None, "decided": None, "note": why})
      continue
    rows += [{"benchmark": name, **t} for t in targets if isinstance(t, dict)]
  return rows


def format_targets(rows: list[dict]) -> str:
  """The target rows as a fixed-width table, one line each."""
  def number(v):
    return "—" if v is None else f"{v:.3f}"

  lines = [f"{'benchmark':<20} {'target name':<46} {'ratio':>7} {'95% interval':>17} {'target':>9}  verdict"]
  for r in rows:
    if r.get("name") is None:
      lines.append(f"{r['benchmark']:<20} {'—':<46} {'—':>7} {'—':>17} {'—':>9}  {r.get('note')}")
      continue
    ci = r.get("ratio_ci95")
    interval = "exact" if ci is None else f"[{number(ci[0])}, {number(ci[1])}]"
    verdict = ("met" if r.get("meets_target") else "NOT MET") + ("" if r.get("decided") else " (undecided)")
    lines.append(f"{r['benchmark']:<20} {r['name']:<46} {number(r.get('ratio')):>7} {interval:>17} "
                 f"{r.get('target', '—'):>9}  {verdict}")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--full", action="store_true", help="pass --full to every benchmark (bigger settings)")
  parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these benchmarks (file stems)")
  parser.add_argument("--timeout", type=float, default=900.0, help="seconds per benchmark (default 900)")
  parser.add_argument("--out", default=str(DEFAULT_OUT), help="summary JSON (default benchmarks/results/latest.json)")
  args = parser.parse_args(argv)

  scripts, skipped = discover()
  if args.only:
    known = {s.stem for s in scripts}
    unknown = sorted(set(args.only) - known)
    if unknown:
      parser.error(f"--only: unknown benchmark(s) {unknown}; known: {sorted(known)}")
    scripts = [s for s in scripts if s.stem in args.only]

  summary = {"machine": machine_info(), "full": args.full, "timeout_s": args.timeout,
             "skipped": skipped, "benchmarks": {}}
  start = time.perf_counter()
  for script in scripts:
    print(f"[run_all] {script.name} ...", file=sys.stderr, flush=True)
    entry = run_one(script, ["--full"] if args.full else [], args.timeout)
    summary["benchmarks"][script.stem] = entry
    status = "ok" if entry["ok"] else f"FAILED ({entry['error']})"
    print(f"[run_all] {script.name}: {status} in {entry['wall_s']:.0f} s", file=sys.stderr, flush=True)
  summary["total_wall_s"] = round(time.perf_counter() - start, 2)
  summary["all_ok"] = all(e["ok"] for e in summary["benchmarks"].values())
  summary["targets"] = collect_targets(summary["benchmarks"])
  print(format_targets(summary["targets"]), flush=True)

  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(summary, indent=2) + "\n")
  print(json.dumps({"summary": str(out), "all_ok": summary["all_ok"],
                    "benchmarks": {k: v["ok"] for k, v in summary["benchmarks"].items()},
                    "targets_met": sum(bool(r["meets_target"]) for r in summary["targets"]),
                    "targets": len(summary["targets"])}))
  return 0 if summary["all_ok"] else 1


if __name__ == "__main__":
  sys.exit(main())
