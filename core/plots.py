"""Pyplot for drawing into files: the Agg backend is chosen here, once, before pyplot loads, and
text is drawn as written: category and file names are user text, and `$...$` in them must not
reach matplotlib's mathtext parser (a name like `$\\x$` would stop the stage with a parse error).
Every module that draws imports `plt` from here (`from core.plots import plt`)."""

import matplotlib

matplotlib.use("Agg")
matplotlib.rcParams["text.parse_math"] = False

import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plt"]
