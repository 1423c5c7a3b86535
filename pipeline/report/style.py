"""One look for every figure of the report: a fixed colour per method, names a reader knows, and
an atomic PNG writer (a killed job never leaves a half-written picture)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: F401 (the report modules draw with this pyplot, set to Agg here)
from matplotlib.figure import Figure

from pipeline.io import atomic
from pipeline.table import display_name, method_key

# A colour per method, the same in every figure; an ensemble is a darker shade of its variant.
METHOD_COLORS: dict[str, str] = {
    "baseline": "#4d4d4d",
    "mtgan": "#d62728",
    "mtgan_ensemble": "#8c1515",
    "sbu": "#1f77b4",
    "sbu_ensemble": "#0b3c66",
    "d_no_adv": "#2ca02c",
    "d_no_adv_ensemble": "#16501a",
    "no_reg_branch": "#9467bd",
    "no_reg_branch_ensemble": "#4b2f6b",
    "no_adv_loss": "#ff7f0e",
    "no_adv_loss_ensemble": "#9a4a05",
    "no_cls_loss": "#e377c2",
    "no_cls_loss_ensemble": "#8a3574",
    "no_reg_loss": "#17becf",
    "no_reg_loss_ensemble": "#0b6670",
}
GROUND_TRUTH_COLOR = "#2ca02c"
SIZE_TITLES = {"all": "all objects", "small": "small objects (area < 32²)", "medium": "medium objects (32² to 96²)",
               "large": "large objects (area > 96²)"}


def method_color(method: str) -> str:
    return METHOD_COLORS.get(method, "#7f7f7f")


def ordered(methods: list[str]) -> list[str]:
    """Methods in the paper's order (baseline, ablations, MTGAN, ensembles)."""
    return sorted(methods, key=method_key)


def label(method: str) -> str:
    return display_name(method)


def save(fig: Figure, path: Path, dpi: int = 110) -> None:
    """Write `fig` as a PNG at `path` (atomically) and close it."""
    atomic.write_figure(fig, path, dpi=dpi, tight=True)
