"""One look for every figure of the report: a fixed colour per method (pipeline/methods.py), names
a reader knows, and an atomic PNG writer (a killed job never leaves a half-written picture)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from core.io import atomic
from core.plots import plt  # noqa: F401 (the report modules draw with this pyplot)
from pipeline.methods import display_name, method_color, method_key

__all__ = ["SIZE_TITLES", "label", "method_color", "ordered", "plt", "save"]

SIZE_TITLES = {"all": "all objects", "small": "small objects (area < 32²)", "medium": "medium objects (32² to 96²)", "large": "large objects (area > 96²)"}


def ordered(methods: list[str]) -> list[str]:
    """Methods in the table's order (pipeline/methods.py)."""
    return sorted(methods, key=method_key)


def label(method: str) -> str:
    return display_name(method)


def save(fig: Figure, path: Path, dpi: int = 110) -> None:
    """Write `fig` as a PNG at `path` (atomically) and close it."""
    atomic.write_figure(fig, path, dpi=dpi, tight=True)
