"""The report's charts from cached score, inference and training files (no model is run here):

- precision-recall curves at IoU 0.5 and 0.75, one figure per size range, every method on it;
- the ablation table as a bar chart (AP, APS, APM, APL per method);
- per-class AP change from the baseline to MTGAN and to the ensemble (CSV and chart);
- training curves of every variant side by side (losses, D(real), D(SR), train-mode accuracy on the
  training batches, eval-mode accuracy on held-out ROIs as at test time);
- D's classification accuracy on positive / negative / all test ROIs, and on positives by size
  (paper Table 9), as a chart;
- D's accuracy on positive test ROIs against the crop's side in pixels (`core.sizes.SIDE_BINS`),
  one line per method and path: where G helps D and where it does not.

Curves come from the COCOeval arrays the score stage keeps (`score/<method>_eval.npz`: precision of
shape T x R x K x A x M, IoU thresholds .50:.05:.95, 101 recall points, categories, areas all /
small / medium / large, maxDets 1 / 10 / 100); -1 marks "no ground truth", excluded from means.
"""

from __future__ import annotations

import csv
import io
import json
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from core.io import atomic
from core.sizes import SIDE_BINS, SIZE_RANGES
from jobs.mtgan.engine import rule_key
from jobs.mtgan.settings import PAPER_RULE, RULES
from pipeline.methods import parse_method
from pipeline.report.style import SIZE_TITLES, label, method_color, ordered, plt, save
from pipeline.table import ACCURACY_COLUMNS

RECALL_POINTS = np.linspace(0.0, 1.0, 101)
IOU_INDEX = {0.5: 0, 0.75: 5}  # in pycocotools' iouThrs .50:.05:.95


def mean_precision(precision: np.ndarray, iou: float, area: str) -> np.ndarray:
    """The 101-point PR curve averaged over categories (maxDets 100), as COCOeval's AP averages it."""
    p = precision[IOU_INDEX[iou], :, :, SIZE_RANGES.index(area), -1]  # R x K
    valid = p[:, (p > -1).all(axis=0)]
    return valid.mean(axis=1) if valid.shape[1] else np.zeros(len(RECALL_POINTS))


def plot_pr_by_size(evals: dict[str, np.ndarray], out_pngs: dict[str, Path]) -> None:
    """One figure per size range (`out_pngs`: area -> PNG path): panels IoU 0.5 and 0.75, one line
    per method (AP in the legend)."""
    for area in SIZE_RANGES:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), sharey=True)
        for ax, iou in zip(axes, (0.5, 0.75)):
            for method in ordered(list(evals)):
                curve = mean_precision(evals[method], iou, area)
                style = "--" if method.endswith("_ensemble") else "-"
                ax.plot(RECALL_POINTS, curve, style, color=method_color(method), lw=1.8, label=f"{label(method)} [AP{int(iou * 100)} {100 * curve.mean():.1f}]")
            ax.set(title=f"IoU {iou}", xlabel="recall", xlim=(0, 1), ylim=(0, 1.01))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="upper right")
        axes[0].set_ylabel("precision")
        fig.suptitle(f"Precision-recall, {SIZE_TITLES[area]} (COCOeval, 101 recall points, maxDets 100)")
        save(fig, out_pngs[area])


def plot_metric_bars(scores: list[dict[str, Any]], out_png: Path) -> None:
    """AP, APS, APM, APL per method as grouped bars (x100), the value on each bar."""
    metrics = ("AP", "APS", "APM", "APL")
    by_method = {s["method"]: s["metrics"] for s in scores}
    methods = ordered(list(by_method))
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(max(7, 1.6 * len(metrics) * len(methods) / 3), 4.5))
    x = np.arange(len(metrics))
    for i, method in enumerate(methods):
        values = [100 * by_method[method][m] for m in metrics]
        bars = ax.bar(x + (i - (len(methods) - 1) / 2) * width, values, width, color=method_color(method), label=label(method))
        ax.bar_label(bars, fmt="%.1f", fontsize=6, padding=1)
    ax.set_xticks(x, ["AP", "AP small", "AP medium", "AP large"])
    ax.set_ylabel("COCO AP (IoU .50:.95) x 100")
    ax.set_title("Every method on the test split (the ablation table as a picture)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(axis="y", alpha=0.3)
    save(fig, out_png)


def per_class_change(scores: list[dict[str, Any]], out_csv: Path, out_png: Path) -> list[dict[str, Any]]:
    """AP per class of the baseline, MTGAN and its ensemble, and the changes, sorted by MTGAN's gain."""
    by_method = {s["method"]: s for s in scores}
    if "baseline" not in by_method:
        raise ValueError("per-class AP change needs the baseline's score file")
    others = [m for m in ("mtgan", "mtgan_ensemble") if m in by_method] or [m for m in ordered(list(by_method)) if m != "baseline"][:2]
    names = by_method["baseline"]["category_names"]
    rows = []
    for cat_id, name in names.items():
        row: dict[str, Any] = {"category_id": int(cat_id), "category": name, "AP_baseline": 100 * by_method["baseline"]["per_class_ap"][cat_id]}
        for m in others:
            row[f"AP_{m}"] = 100 * by_method[m]["per_class_ap"][cat_id]
            row[f"change_{m}"] = row[f"AP_{m}"] - row["AP_baseline"]
        rows.append(row)
    if others:
        rows.sort(key=lambda r: r[f"change_{others[0]}"], reverse=True)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["category_id"], lineterminator="\n")
    writer.writeheader()
    writer.writerows([{k: f"{v:.2f}" if isinstance(v, float) else v for k, v in r.items()} for r in rows])
    atomic.write_text(out_csv, buffer.getvalue())

    shown = rows[:20] + rows[-20:] if len(rows) > 40 else rows  # the largest gains and losses
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(shown) + 1.6))
    y = np.arange(len(shown))
    height = 0.8 / max(1, len(others))
    for i, m in enumerate(others):
        ax.barh(y + (i - (len(others) - 1) / 2) * height, [r[f"change_{m}"] for r in shown], height, color=method_color(m), label=f"{label(m)} - baseline")
    ax.set_yticks(y, [r["category"] for r in shown], fontsize=7)
    ax.invert_yaxis()
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("AP change (IoU .50:.95) x 100")
    title = "Per-class AP change from the baseline"
    ax.set_title(title + (" (20 largest gains and losses)" if len(shown) < len(rows) else ""))
    ax.legend(fontsize=7)
    ax.grid(axis="x", alpha=0.3)
    save(fig, out_png)
    return rows


TRAINING_PANELS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("G MSE loss: pre-training, then GAN training", (("g_loss_mse", "-"),)),
    ("D classification loss", (("d_loss_cls", "-"),)),
    ("D regression loss", (("d_loss_reg", "-"),)),
    ("G loss from D: adversarial dotted, cls dashed, reg dash-dot", (("g_loss_adv", ":"), ("g_loss_cls", "--"), ("g_loss_reg", "-."))),
    ("D(real HR) solid, D(SR) dashed", (("d_real", "-"), ("d_sr", "--"))),
    ("D train-mode accuracy on training batches: SR solid, HR dashed", (("acc_sr", "-"), ("acc_hr", "--"))),
    # one panel per test-time rule: the held-out accuracy as D sees the ROIs under it
    *(
        (
            f"D eval-mode accuracy on held-out ROIs, {rule.label}: positives solid, small positives dashed, negatives dotted",
            ((rule_key("eval_acc_pos", name), "-"), (rule_key("eval_acc_pos_small", name), "--"), (rule_key("eval_acc_neg", name), ":")),
        )
        for name, rule in RULES.items()
    ),
)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_training_curves(logs: dict[str, list[dict[str, Any]]], out_png: Path) -> None:
    """Every variant's training log side by side, one panel per quantity (absent ones are skipped)."""
    fig, axes = plt.subplots(3, 3, figsize=(15, 10.5))
    for ax in axes.flat[len(TRAINING_PANELS) :]:
        ax.axis("off")
    for ax, (title, series) in zip(axes.flat, TRAINING_PANELS):
        drawn = False
        for variant in ordered(list(logs)):
            first = next((key for key, _ in series if any(key in r for r in logs[variant])), None)  # the variant's legend entry
            for key, style in series:
                points = [(r["step"], r[key]) for r in logs[variant] if key in r]
                if points:
                    steps, values = zip(*points)
                    ax.plot(steps, values, style, color=method_color(variant), lw=1.4, label=label(variant) if key == first else None)
                    drawn = True
        ax.set_title(textwrap.fill(title, 48), fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if drawn and (title.endswith("loss") or title.startswith("G")):
            ax.set_yscale("log")
        if drawn:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "not logged by these variants", ha="center", va="center", transform=ax.transAxes, color="grey")
    fig.suptitle("Training of each variant (means over each logging interval)")
    fig.tight_layout()
    save(fig, out_png)


def plot_accuracy(accuracies: list[dict[str, Any]], out_png: Path) -> None:
    """D's classification accuracy on positive / negative / all test ROIs per variant and test-time
    rule (paper Table 9)."""
    kinds = ACCURACY_COLUMNS
    variants = ordered([a["method"] for a in accuracies])
    by_variant = {a["method"]: a["accuracy"] for a in accuracies}
    width = 0.8 / max(1, len(variants))
    fig, ax = plt.subplots(figsize=(10, 4))
    x = np.arange(len(kinds))
    for i, v in enumerate(variants):
        values = [100 * (by_variant[v].get(k) or 0.0) for k in kinds]
        bars = ax.bar(x + (i - (len(variants) - 1) / 2) * width, values, width, color=method_color(v), label=label(v))
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    counts = next(iter(by_variant.values()), {})
    ax.set_xticks(x, [f"{k.replace('_', ' ')}\n({counts.get(f'{k}_rois', 0)} ROIs)" for k in kinds], fontsize=8)
    ax.set(ylabel="accuracy (%)", ylim=(0, 105), title="D's classification accuracy on the test ROIs (paper Table 9)")
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    save(fig, out_png)


def accuracy_by_side(accuracies: list[dict[str, Any]]) -> tuple[dict[str, list[tuple[float | None, float]]], list[int]]:
    """The infer stage's accuracy files as `plot_accuracy_by_side` draws them: per method, each
    side bin's accuracy (x100; std 0: one run), and the positive ROIs per bin."""
    curves = {a["method"]: [(None if b["accuracy"] is None else 100 * b["accuracy"], 0.0) for b in a["accuracy"]["positive_by_side"]] for a in accuracies}
    counts = [b["rois"] for b in accuracies[0]["accuracy"]["positive_by_side"]] if accuracies else [0] * len(SIDE_BINS)
    return curves, counts


def plot_accuracy_by_side(curves: dict[str, list[tuple[float | None, float]]], counts: list[int], out_png: Path, title: str) -> None:
    """D's accuracy on positive ROIs against the crop's longer side in image pixels (the bins of
    `core.sizes.SIDE_BINS`), one line per method (`curves`: method -> per bin (accuracy x100 or None
    for an empty bin, its std over seeds: an error bar when above 0)); the paper's path solid, our
    rules dashed; `counts`: positive ROIs per bin, under the axis."""
    fig, ax = plt.subplots(figsize=(9, 4.6))
    x = np.arange(len(SIDE_BINS))
    for method in ordered(list(curves)):
        points = [(i, mean, std) for i, (mean, std) in enumerate(curves[method]) if mean is not None]
        if not points:
            continue
        xs, means, stds = (np.asarray(v, float) for v in zip(*points))
        style = "-" if parse_method(method).rule == PAPER_RULE else "--"
        ax.errorbar(xs, means, yerr=stds if stds.any() else None, fmt=style + "o", ms=4, capsize=3, color=method_color(method), lw=1.6, label=label(method))
    ax.set_xticks(x, [f"{name}\n{n} ROIs" for name, n in zip(SIDE_BINS, counts)], fontsize=8)
    ax.set(xlabel="the ROI crop's longer side (image pixels)", ylabel="accuracy on positive ROIs (%)", ylim=(0, 100), title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    save(fig, out_png)
