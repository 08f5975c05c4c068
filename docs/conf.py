"""Sphinx configuration: ``nox -s docs`` (or ``sphinx-build -W -b html docs docs/_build/html``)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio_pool

project = "trio_pool"
author = "trio_pool contributors"
copyright = "trio_pool contributors"
release = trio_pool.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "myst_parser",  # for benchmarks.md
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3

# Google-style docstrings. ``Attributes:`` become fields of the class (not separate
# attribute entries, which would clash with dataclass fields documented by autodoc).
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True
napoleon_use_rtype = False

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_typehints_description_target = "documented"
autodoc_default_options = {"members": True}
autodoc_preserve_defaults = True

# docs/benchmarks.md is written from the benchmarks' results; until it exists, its toctree
# entry must not fail a -W build (only then is the warning silenced).
if not (Path(__file__).resolve().parent / "benchmarks.md").exists():
    suppress_warnings = ["toc.not_readable"]

html_theme = "alabaster"
html_title = f"trio_pool {release}"
html_theme_options = {
    "description": "A cancellation-safe connection pool for trio",
    "fixed_sidebar": True,
}
pygments_style = "sphinx"
