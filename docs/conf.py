"""Sphinx configuration for the ppl documentation.

Build with warnings as errors (the tutorial notebook is executed at build time)::

    sphinx-build -W --keep-going -b html docs docs/_build/html
"""

from __future__ import annotations

# autodoc imports the installed package (``pip install -e ".[docs]"``): the
# ``ppl.transforms`` and ``ppl.models`` subpackages live in ``transforms/`` and
# ``models/`` through setuptools' package-dir mapping, so a bare checkout on
# ``sys.path`` is not enough.
import ppl

# -- Project information -----------------------------------------------------

project = "ppl"
author = "ppl contributors"
copyright = "ppl contributors"
release = ppl.__version__
version = release

# -- General configuration ---------------------------------------------------

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "myst_nb",
]

exclude_patterns = ["_build", "jupyter_execute", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]

# Unresolved Python cross-references (type hints such as ``jax.Array`` or
# ``nd.Distribution``) are not warnings.
nitpicky = False

# -- autodoc / napoleon ------------------------------------------------------

autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_member_order = "bysource"

napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_attr_annotations = False

# -- MyST / myst-nb ----------------------------------------------------------

myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

# The tutorial is executed on every build; an exception in a cell fails it.
nb_execution_mode = "force"
nb_execution_timeout = 300
nb_execution_raise_on_error = True
nb_execution_show_tb = True
# One output block per cell for consecutive prints.
nb_merge_streams = True

# -- HTML output -------------------------------------------------------------

html_theme = "furo"
html_title = f"ppl {release}"
