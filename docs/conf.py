"""Sphinx configuration for the wd_optax documentation.

The build is fully offline: no intersphinx inventories, no remote themes or fonts are fetched. The
results and benchmarks pages are generated here, at build time, from the latest
``python -m experiments reproduce --quick`` work directory and ``benchmarks/results/latest.json``
(see ``_generate_results.py`` and ``_generate_benchmarks.py``), so every ``sphinx-build`` shows the
current numbers, or says that none have been produced yet.
"""

from __future__ import annotations

import os
import pathlib
import sys

DOCS = pathlib.Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(DOCS))

# The API pages import wd_optax (and with it jax); keep that on the CPU and quiet.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import wd_optax  # noqa: E402

import _generate_benchmarks  # noqa: E402
import _generate_results  # noqa: E402

project = "wd_optax"
author = "The wd_optax authors"
copyright = "2026, The wd_optax authors"  # noqa: A001 (Sphinx's name)
release = wd_optax.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    # MathJax 3 shipped inside the package and copied to _static/mathjax/ at the end of the build; it sets
    # mathjax_path to that local copy, so the math renders without the CDN (no network at build or read time).
    "sphinx-mathjax-offline",
    "sphinx.ext.viewcode",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
templates_path: list[str] = []

# MyST: $...$ / $$...$$ math, ::: fences, and {eval-rst} for autodoc inside markdown pages.
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# autodoc + napoleon for the Google-style docstrings of the library (optax's conventions).
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
# Keep optax's aliases by name: expanded, ScalarOrSchedule is a union of a dozen array types.
autodoc_type_aliases = {
    name: name for name in (
        "optax.ScalarOrSchedule", "optax.Schedule", "optax.GradientTransformation",
        "optax.GradientTransformationExtraArgs", "optax.Params", "optax.Updates", "PyTree", "Mask",
        "Target", "_tree.MaskOrFn", "Config", "Evaluate")
}
autodoc_default_options = {"members": True, "show-inheritance": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# ":ivar:" fields instead of ".. attribute::" directives: NamedTuple/dataclass fields are also
# documented by autodoc itself, and two descriptions of one attribute are a (fatal, under -W) warning.
napoleon_use_ivar = True
napoleon_use_rtype = False

html_theme = "furo"
html_title = f"wd_optax {release}"
html_static_path: list[str] = []
html_show_sourcelink = True

# Generated pages (results, benchmarks) live in docs/_generated/ and are rewritten on every build.
_generate_results.main(["--out", str(DOCS / "_generated")])
_generate_benchmarks.main(["--out", str(DOCS / "_generated")])
