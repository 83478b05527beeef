"""Sphinx configuration for the trio-ysync documentation."""

from __future__ import annotations

project = "trio-ysync"
author = "trio-ysync developers"
copyright = "2026, trio-ysync developers"

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.intersphinx"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_google_docstring = True
nitpicky = False
intersphinx_mapping: dict[str, tuple[str, None]] = {}
exclude_patterns = ["_build"]
html_theme = "alabaster"
