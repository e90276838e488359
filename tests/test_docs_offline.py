"""The documentation reads offline (math from a local MathJax), and every citation of the papers page names
the page that exists, ``docs/papers.md``."""

from __future__ import annotations

import ast
import importlib
import pathlib
import re
import subprocess
import sys
import types

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONF = ROOT / "docs" / "conf.py"
URL = re.compile(r"^([a-z][a-z0-9+.-]*:)?//", re.IGNORECASE)


def _conf_assignments() -> dict[str, ast.expr]:
  """Top-level ``name = value`` of docs/conf.py, without executing it (it imports jax and writes pages)."""
  out = {}
  for node in ast.parse(CONF.read_text()).body:
    targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) \
        else []
    for target in targets:
      if isinstance(target, ast.Name) and getattr(node, "value", None) is not None:
        out[target.id] = node.value
  return out


def test_docs_math_is_rendered_by_a_local_mathjax_not_a_cdn():
  conf = _conf_assignments()
  extensions = ast.literal_eval(conf["extensions"])
  assert "sphinx.ext.mathjax" in extensions and "sphinx-mathjax-offline" in extensions
  if "mathjax_path" in conf:  # conf.py may set it, but only to a local file
    assert not URL.match(ast.literal_eval(conf["mathjax_path"]))
  # What the extension does at setup: point mathjax_path at a file it ships and copy the files on build-finished.
  ext = importlib.import_module("sphinx-mathjax-offline")
  app = types.SimpleNamespace(config=types.SimpleNamespace(), events=[])
  app.connect = lambda event, fn: app.events.append(event)
  ext.setup(app)
  path = app.config.mathjax_path
  assert not URL.match(path) and path.startswith("mathjax/"), path
  assert (pathlib.Path(ext.__file__).parent / "static" / path).is_file()
  assert "build-finished" in app.events


@pytest.mark.slow  # a full HTML build (~10-60 s); the test above checks the configuration it relies on
def test_built_html_loads_mathjax_from_its_own_static_folder(tmp_path):
  out = tmp_path / "html"
  run = subprocess.run([sys.executable, "-m", "sphinx", "-q", "-W", "-b", "html", "-d", str(tmp_path / "doctrees"),
                        str(ROOT / "docs"), str(out)], capture_output=True, text=True, cwd=ROOT)
  assert run.returncode == 0, run.stderr[-3000:]
  page = (out / "mechanisms" / "where.html").read_text()
  scripts = re.findall(r'<script[^>]*src="([^"]*mathjax[^"]*)"', page)
  assert scripts == ["../_static/mathjax/tex-chtml.js"], scripts
  assert (out / "_static" / "mathjax" / "tex-chtml.js").is_file()
  assert "cdn.jsdelivr.net" not in page and r"\(" in page  # math is there, as MathJax input


# --- docs/papers.md ---------------------------------------------------------------------------------------------------

PAPERS_PAGE = "docs/papers.md"


def _tracked_files() -> list[pathlib.Path]:
  listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], capture_output=True, text=True,
                          cwd=ROOT, check=True).stdout.split("\n")
  return [ROOT / f for f in listed if f and not f.startswith("results/") and (ROOT / f).is_file()]


def test_every_mention_of_papers_md_is_the_docs_page_that_exists():
  assert (ROOT / PAPERS_PAGE).is_file()
  bad = []
  for path in _tracked_files():
    try:
      text = path.read_text()
    except (UnicodeDecodeError, OSError):
      continue
    for number, line in enumerate(text.splitlines(), 1):
      for match in re.finditer(r"[\w./-]*papers\.md", line):
        mention = match.group(0)
        rel = path.relative_to(ROOT).as_posix()
        # From a docs page, a relative link to the page (its bare file name in docs/, with ../ one level down).
        resolved = (path.parent / mention).resolve() if rel.startswith("docs/") else None
        if mention.lstrip("./") != PAPERS_PAGE and resolved != (ROOT / PAPERS_PAGE).resolve():
          bad.append(f"{rel}:{number}: {mention}")
  assert not bad, "mentions of a papers page other than docs/papers.md:\n" + "\n".join(bad)


def test_papers_page_is_in_the_toctree_and_defines_every_claim_the_studies_test():
  index = (ROOT / "docs" / "index.md").read_text()
  assert re.search(r"^papers$", index, re.MULTILINE)
  page = (ROOT / PAPERS_PAGE).read_text()
  for arxiv in ("1810.12281", "2012.13841", "2103.15345"):
    assert arxiv in page
  ids = set()
  for study in (ROOT / "experiments" / "studies").glob("*.py"):
    ids |= set(re.findall(r'"([ZBF]\d)(?=[a-z{"-])', study.read_text()))  # "Z1a", f"Z4{tag}", "B2"
  assert ids, "no claim ids found in experiments/studies"
  for claim in sorted(ids):
    assert re.search(rf"\*\*{claim}\*\*", page), f"{claim} is tested by a study but not stated in {PAPERS_PAGE}"
