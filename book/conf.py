"""Sphinx configuration of the book: the chapters' notebooks with their stored outputs, readable offline."""
from importlib.util import find_spec
from pathlib import Path

project = "gmlib: geometric-median filter pruning"
author = "gmlib"
copyright = "gmlib contributors"

extensions = ["myst_nb"]

# MathJax 3.2.2 as shipped by the sphinx-mathjax-offline wheel, copied into _static: no CDN at build or view time.
# (Its own extension does the same but is not declared parallel-safe, so it is only read from here.)
html_static_path = [str(Path(find_spec("sphinx-mathjax-offline").origin).parent / "static")]
mathjax_path = "mathjax/tex-chtml.js"

# notebooks/ is a link to the chapters; nothing else in the checkout is part of the book.
exclude_patterns = ["_build", "README.md"]
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3

# The book shows the outputs committed with each chapter; running them is `make reproduce`.
nb_execution_mode = "off"
nb_merge_streams = True

html_theme = "sphinx_book_theme"
html_title = "gmlib: geometric-median filter pruning"
html_theme_options = {
    "show_navbar_depth": 1,
    "show_toc_level": 2,
    "use_download_button": True,
    "home_page_in_toc": True,
}
html_show_sourcelink = False
# the header bar already has the search field: the sidebar keeps the title and the chapters
# search summaries are fetched from the pages, which a browser refuses for file:// pages: the site is read offline
html_show_search_summary = False
html_sidebars = {"**": ["navbar-logo.html", "sbt-sidebar-nav.html"]}
