"""The report's parts, each from cached artifacts (what the `mtgan report-*` commands call).

Each writer takes its output files by name (`outputs`: name -> path); the Snakemake rules
(`pipeline/rules/report.smk`) name the files, under `artifacts/<dataset>/report/`:

- `write_charts`: CHART_OUTPUTS (PR curves per size range, AP bars, per-class change, training
  curves, Table 9 chart, accuracy by the crop's side);
- `write_error_analysis`: `<method>_<area>` pictures for every method and ERROR_AREAS, `table`
  (CSV), `markdown`;
- `roi_grid.plot_roi_grid`: the Fig 3 grid;
- `write_detection_pictures`: `better`, `worse` (PNG), `images` (CSV).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import PipelineError
from core.io import atomic
from core.io.coco import read_json
from core.sizes import ERROR_AREAS, SIZE_RANGES
from pipeline.report import coco_errors, detections, figures
from pipeline.report.style import label, ordered

log = logging.getLogger(__name__)

CHART_OUTPUTS = (*(f"pr_{area}" for area in SIZE_RANGES), "bars", "per_class", "per_class_csv", "training", "accuracy", "accuracy_by_side")
DETECTION_OUTPUTS = ("better", "worse", "images")


def error_outputs(methods: list[str]) -> tuple[str, ...]:
    """The output names of `write_error_analysis` for these methods."""
    return (*(f"{m}_{area}" for m in methods for area in ERROR_AREAS), "table", "markdown")


def require(outputs: dict[str, Path], names: tuple[str, ...] | list[str]) -> dict[str, Path]:
    """`outputs` when it names exactly `names`; a PipelineError saying what is missing or unknown."""
    missing, unknown = sorted(set(names) - set(outputs)), sorted(set(outputs) - set(names))
    if missing or unknown:
        raise PipelineError(f"outputs: missing {missing}, unknown {unknown}; expected {list(names)}")
    return {k: Path(v) for k, v in outputs.items()}


def write_charts(score_files: list[Path], eval_files: list[Path], accuracy_files: list[Path], training_logs: dict[str, Path], outputs: dict[str, Path]) -> None:
    """The charts of every method: PR by size, bars, per-class change, training curves, Table 9."""
    out = require(outputs, CHART_OUTPUTS)
    scores = [json.loads(Path(p).read_text()) for p in score_files]
    evals = {}
    for score, path in zip(scores, eval_files):
        with np.load(path) as arrays:
            evals[score["method"]] = arrays["precision"] if "precision" in arrays else np.full((10, 101, 1, 4, 3), -1.0)
    figures.plot_pr_by_size(evals, {area: out[f"pr_{area}"] for area in SIZE_RANGES})
    figures.plot_metric_bars(scores, out["bars"])
    figures.per_class_change(scores, out["per_class_csv"], out["per_class"])
    figures.plot_training_curves({v: figures.read_metrics(p) for v, p in training_logs.items()}, out["training"])
    accuracies = [json.loads(Path(p).read_text()) for p in accuracy_files]
    figures.plot_accuracy(accuracies, out["accuracy"])
    curves, counts = figures.accuracy_by_side(accuracies)
    figures.plot_accuracy_by_side(curves, counts, out["accuracy_by_side"], "D's accuracy on the positive test ROIs by size, each method on its path")


def write_error_analysis(gt_json: Path, results: dict[str, Path], outputs: dict[str, Path]) -> str:
    """The COCO error analysis (C75 ... FN) of each method, for all and for small objects."""
    out = require(outputs, error_outputs(list(results)))
    gt = detections.load_gt(gt_json)
    analyses = {}
    for method in ordered(list(results)):
        analyses[method] = coco_errors.analyze_errors(gt, read_json(results[method]), area_ranges=ERROR_AREAS)
        for area in ERROR_AREAS:
            coco_errors.plot_error_analysis(analyses[method], area, out[f"{method}_{area}"], f"Error analysis of {label(method)}: {area} objects")
    rows = coco_errors.error_table(analyses, ERROR_AREAS)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["method", "area", *coco_errors.ERROR_TYPES], lineterminator="\n")
    writer.writeheader()
    writer.writerows([{k: f"{v:.4f}" if isinstance(v, float) else v for k, v in r.items()} for r in rows])
    atomic.write_text(out["table"], buffer.getvalue())
    markdown = coco_errors.error_table_markdown(rows)
    atomic.write_text(out["markdown"], markdown)
    return markdown


def write_detection_pictures(
    gt_json: Path, image_root: Path, baseline_results: Path, method_results: Path, method: str, outputs: dict[str, Path], n_better: int = 6, n_worse: int = 3
) -> dict[str, int]:
    """Pictures of the test images where `method` changed the outcome against the baseline, and the CSV."""
    out = require(outputs, DETECTION_OUTPUTS)
    baseline, other = read_json(baseline_results), read_json(method_results)
    gt = detections.load_gt(gt_json)
    rows, thresholds = detections.compare(gt, baseline, other)
    detections.write_csv(rows, out["images"])
    better = [r for r in rows if r["change"] not in ("worse", "same")]
    worse = [r for r in reversed(rows) if r["change"] == "worse"]
    name = label(method)
    detections.plot_examples(
        better, gt, image_root, baseline, other, method, thresholds, out["better"], f"Where {name} changed the outcome for the better", n=n_better
    )
    detections.plot_examples(worse, gt, image_root, baseline, other, method, thresholds, out["worse"], f"Where {name} made things worse", n=n_worse)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["change"]] = counts.get(r["change"], 0) + 1
    log.info("%s vs baseline, images by change: %s (thresholds %s)", method, counts, thresholds)
    return counts


def category_names(coco: dict[str, Any]) -> dict[int, str]:
    return {c["id"]: c["name"] for c in coco["categories"]}
