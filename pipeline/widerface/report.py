"""Reporting of WIDER FACE results: JSON summary, markdown table (the paper's Table 8), PR curves.

Kept apart from `pipeline.widerface.protocol` because the figures need matplotlib.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.data.widerface.ground_truth import SETTINGS
from pipeline.report.style import save
from pipeline.widerface.protocol import WiderResult


def result_to_json(result: WiderResult) -> dict[str, Any]:
    """AP per setting, face and image counts (no curves); NaN becomes null."""

    def nan_to_none(v: float) -> float | None:
        return None if math.isnan(v) else v

    return {
        "ap": {s: nan_to_none(r.ap) for s, r in result.settings.items()},
        "faces": {s: r.faces for s, r in result.settings.items()},
        "images_evaluated": result.images_evaluated,
        "images_total": result.images_total,
        "images_without_predictions": result.images_without_predictions,
        "official": result.official,
        "overlap_arithmetic": "int32" if result.int32_boxes else "float64",
        "thresh_num": result.thresh_num,
        "iou_thresh": result.iou_thresh,
    }


def results_markdown(results: Mapping[str, WiderResult]) -> str:
    """The paper's Table 8 layout: AP per setting (3 decimals) and the number of evaluated images."""
    lines = ["| method | Easy | Medium | Hard | images |", "|---|---:|---:|---:|---:|"]
    for method, result in results.items():
        aps = " | ".join(f"{result.settings[s].ap:.3f}" for s in SETTINGS)
        images = str(result.images_evaluated)
        if result.images_evaluated != result.images_total:
            images += f" of {result.images_total}"
        lines.append(f"| {method} | {aps} | {images} |")
    return "\n".join(lines) + "\n"


def plot_pr_curves(results: Mapping[str, WiderResult], out_png: Path, title: str, colors: Mapping[str, str] | None = None) -> None:
    """One figure, panels Easy / Medium / Hard, one precision-recall line per method."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(SETTINGS))
    for ax, setting in zip(axes, SETTINGS):
        for method, result in results.items():
            r = result.settings[setting]
            color = colors.get(method) if colors else None
            ax.plot(r.recall, r.precision, label=f"{method} (AP {r.ap:.3f})", color=color, linewidth=1.5)
        ax.set_title(setting.capitalize())
        ax.set_xlabel("Recall")
        ax.set_ylabel("Precision")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.grid(True, alpha=0.4)
        if results:
            ax.legend(loc="lower left", fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    save(fig, out_png, dpi=120)
