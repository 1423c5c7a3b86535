"""Pyplot for drawing into files: the Agg backend is chosen here, once, before pyplot loads.
Every module that draws imports `plt` from here (`from core.plots import plt`). User text (a
category or file name) is drawn with `parse_math=False`: `$...$` in it must not reach mathtext."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plt"]
