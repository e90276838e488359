"""Every docstring example in wd_optax, and every python block of the documentation pages, runs as written.

* One case per module of ``wd_optax`` (found with ``pkgutil.walk_packages``, the package itself
  included): its docstring examples run under :mod:`doctest` and the case fails with doctest's report.
  A module that has no examples passes trivially; the last case checks that the examples were found at
  all, so a broken discovery cannot pass silently.
* One case per page under ``docs/`` with ```` ```python ```` blocks (the tutorial, the quick start, the
  mechanism pages, the pages for Equinox, Linen and Haiku): its blocks run in order in one namespace,
  as a reader would paste them. The pages assert what they claim (``assert`` lines), so a wrong
  statement fails here. A page about a library that is only a test dependency (Equinox) is skipped
  where that library is not installed.
"""

from __future__ import annotations

import doctest
import importlib
import pathlib
import pkgutil
import re

import pytest

import wd_optax

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
OPTIONFLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _module_names() -> list[str]:
  names = [wd_optax.__name__]
  names += [info.name for info in pkgutil.walk_packages(wd_optax.__path__, prefix=wd_optax.__name__ + ".")]
  return sorted(names)


def _doctests(module_name: str) -> list[doctest.DocTest]:
  module = importlib.import_module(module_name)
  # DocTestFinder keeps only objects defined in the module itself, so re-exports are run once, where
  # they are defined.
  tests = doctest.DocTestFinder(exclude_empty=True).find(module, module_name)
  return sorted((t for t in tests if t.examples), key=lambda t: t.name)


MODULES = _module_names()


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples(module_name):
  runner = doctest.DocTestRunner(optionflags=OPTIONFLAGS)
  report = []
  for test in _doctests(module_name):
    runner.run(test, out=report.append, clear_globs=True)
  summary = runner.summarize(verbose=False)
  assert summary.failed == 0, (
      f"{summary.failed} of {summary.attempted} docstring examples in {module_name} failed:\n" + "".join(report))


def test_docstring_examples_were_found():
  per_module = {name: sum(len(t.examples) for t in _doctests(name)) for name in MODULES}
  # Every public module documents its functions with examples (project standard); the private helpers
  # (_checks, _tree) and the package inits that only re-export may have none.
  public = [name for name in MODULES if not any(part.startswith("_") for part in name.split("."))
            and not importlib.import_module(name).__file__.endswith("__init__.py")]
  missing = [name for name in public if per_module[name] == 0]
  assert not missing, f"public modules without any docstring example: {missing}"
  assert sum(per_module.values()) >= 50, per_module


def _doc_pages() -> list[pathlib.Path]:
  pages = []
  for path in sorted(DOCS.rglob("*.md")):
    relative = path.relative_to(DOCS)
    if relative.parts[0] in ("_build", "_generated"):
      continue
    if "```python" in path.read_text():
      pages.append(path)
  return pages


# Pages whose blocks import a library that wd_optax does not depend on: skipped without it.
PAGE_REQUIRES = {"with_equinox.md": "equinox"}
PYTHON_BLOCK = re.compile(r"^```python[^\n]*\n(.*?)^```", re.S | re.M)
PAGES = _doc_pages()


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(DOCS)) for p in PAGES])
def test_documentation_page_runs(page):
  relative = str(page.relative_to(DOCS))
  if relative in PAGE_REQUIRES:
    pytest.importorskip(PAGE_REQUIRES[relative])
  text = page.read_text()
  namespace = {"__name__": f"docs.{page.stem}"}
  for match in PYTHON_BLOCK.finditer(text):
    line = text[:match.start()].count("\n") + 2
    # Blank lines keep the traceback's line numbers equal to the page's.
    source = "\n" * (line - 1) + match.group(1)
    exec(compile(source, str(page), "exec"), namespace)  # noqa: S102 - our own documentation


def test_tutorial_is_executed():
  assert DOCS / "tutorial.md" in PAGES, "docs/tutorial.md must have python blocks, and they must run"


@pytest.mark.parametrize("name", ["with_equinox", "with_linen_haiku"])
def test_library_pages_are_executed_and_in_the_toctree(name):
  page = DOCS / f"{name}.md"
  assert page in PAGES, f"docs/{name}.md must have python blocks, and they must run"
  assert "import " in PYTHON_BLOCK.search(page.read_text()).group(1)
  toctrees = re.findall(r"^```\{toctree\}\n(.*?)^```", (DOCS / "index.md").read_text(), re.S | re.M)
  assert any(name in tree.split() for tree in toctrees), f"{name} is not in a toctree of docs/index.md"
  assert set(PAGE_REQUIRES) <= {str(p.relative_to(DOCS)) for p in PAGES}
