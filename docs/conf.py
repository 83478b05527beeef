"""Sphinx configuration for the trio-ysync documentation."""

from __future__ import annotations

project = "trio-ysync"
author = "trio-ysync developers"
copyright = "2026, trio-ysync developers"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinxarg.ext",  # the CLI reference, generated from trio_ysync.cli.build_parser()
]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_google_docstring = True
nitpicky = False
intersphinx_mapping: dict[str, tuple[str, None]] = {}
exclude_patterns = ["_build"]
html_theme = "alabaster"
# Keep "--option" as written (no en dashes) in text generated from the argument parser.
smartquotes_action = "qe"
