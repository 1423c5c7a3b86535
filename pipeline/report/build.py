"""The report's parts, each from cached artifacts (what the `mtgan report-*` commands call).

Folder `artifacts/<dataset>/report/`:

- `pr_{all,small,medium,large}.png`, `metrics_bars.png`, `per_class_ap_change.{csv,png}`,
  `training_curves.png`, `accuracy.png`                      (`write_charts`)
- `errors/<method>_{all,small}.png`, `errors/errors.{csv,md}`  (`write_error_analysis`)
- `roi_grid.png`                                             (`roi_grid.plot_roi_grid`)
- `detections/better.png`, `detections/worse.png`, `detections/images.csv` (`write_detection_pictures`)
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.io import atomic
from pipeline.io.coco import read_json
from pipeline.report import coco_errors, detections, figures
from pipeline.report.style import label, ordered

log = logging.getLogger(__name__)

ERROR_AREAS = ("all", "small")


def write_charts(score_files: list[Path], eval_files: list[Path], accuracy_files: list[Path],
                 training_logs: dict[str, Path], out_dir: Path) -> None:
    """The charts of every method: PR by size, bars, per-class change, training curves, Table 9."""
    out_dir = Path(out_dir)
    scores = [json.loads(Path(p).read_text()) for p in score_files]
    evals = {}
    for score, path in zip(scores, eval_files):
        with np.load(path) as arrays:
            evals[score["method"]] = arrays["precision"] if "precision" in arrays else np.full((10, 101, 1, 4, 3), -1.0)
    figures.plot_pr_by_size(evals, out_dir)
    figures.plot_metric_bars(scores, out_dir / "metrics_bars.png")
    figures.per_class_change(scores, out_dir / "per_class_ap_change.csv", out_dir / "per_class_ap_change.png")
    figures.plot_training_curves({v: figures.read_metrics(p) for v, p in training_logs.items()}, out_dir / "training_curves.png")
    figures.plot_accuracy([json.loads(Path(p).read_text()) for p in accuracy_files], out_dir / "accuracy.png")


def write_error_analysis(gt_json: Path, results: dict[str, Path], out_dir: Path) -> str:
    """The COCO error analysis (C75 ... FN) of each method, for all and for small objects."""
    out_dir = Path(out_dir)
    gt = detections.load_gt(gt_json)
    analyses = {}
    for method in ordered(list(results)):
        analyses[method] = coco_errors.analyze_errors(gt, read_json(results[method]), area_ranges=ERROR_AREAS)
        for area in ERROR_AREAS:
            coco_errors.plot_error_analysis(analyses[method], area, out_dir / f"{method}_{area}.png",
                                            f"Error analysis of {label(method)}: {area} objects")
    rows = coco_errors.error_table(analyses, ERROR_AREAS)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["method", "area", *coco_errors.ERROR_TYPES], lineterminator="\n")
    writer.writeheader()
    writer.writerows([{k: f"{v:.4f}" if isinstance(v, float) else v for k, v in r.items()} for r in rows])
    atomic.write_text(out_dir / "errors.csv", buffer.getvalue())
    markdown = coco_errors.error_table_markdown(rows)
    atomic.write_text(out_dir / "errors.md", markdown)
    return markdown


def write_detection_pictures(gt_json: Path, image_root: Path, baseline_results: Path, method_results: Path, method: str,
                             out_dir: Path, n_better: int = 6, n_worse: int = 3) -> dict[str, int]:
    """Pictures of the test images where `method` changed the outcome against the baseline, and the CSV."""
    out_dir = Path(out_dir)
    baseline, other = read_json(baseline_results), read_json(method_results)
    gt = detections.load_gt(gt_json)
    rows, thresholds = detections.compare(gt, baseline, other)
    detections.write_csv(rows, out_dir / "images.csv")
    better = [r for r in rows if r["change"] not in ("worse", "same")]
    worse = [r for r in reversed(rows) if r["change"] == "worse"]
    name = label(method)
    detections.plot_examples(better, gt, image_root, baseline, other, method, thresholds, out_dir / "better.png",
                             f"Where {name} changed the outcome for the better", n=n_better)
    detections.plot_examples(worse, gt, image_root, baseline, other, method, thresholds, out_dir / "worse.png",
                             f"Where {name} made things worse", n=n_worse)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["change"]] = counts.get(r["change"], 0) + 1
    log.info("%s vs baseline, images by change: %s (thresholds %s)", method, counts, thresholds)
    return counts


def category_names(coco: dict[str, Any]) -> dict[int, str]:
    return {c["id"]: c["name"] for c in coco["categories"]}
