"""Stage 8 for WIDER FACE: the official Easy / Medium / Hard evaluation of each method's detections
(`pipeline.widerface.protocol`), and the `eval_widerface` table in the layout of the paper's
Table 8 with its PR-curve figure.

The test split's images are found in the official ground truth by their path (`<event>/<name>.jpg`
-> `<event>/<name>`); every image of the split must be there (the test split is WIDER val, or part
of it). On part of val, only those images (and their faces) count: the numbers are then not the
official protocol, and every output says so (`official: false`, "24 of 3226" images).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import InputError, PipelineError, first_few
from core.io import atomic
from core.io.coco import load_json, read_json
from pipeline.data.widerface.convert import image_keys
from pipeline.data.widerface.ground_truth import SETTINGS, load_ground_truth
from pipeline.data.widerface.predictions import Predictions, predictions_from_coco_results, read_prediction_dir, write_prediction_dir
from pipeline.methods import display_name
from pipeline.report.style import method_color, ordered
from pipeline.widerface.protocol import SettingResult, WiderResult, evaluate
from pipeline.widerface.report import plot_pr_curves, result_to_json, results_markdown


def score_widerface(coco: dict[str, Any], results: list[dict[str, Any]], gt_dir: Path, split: str) -> tuple[WiderResult, Predictions]:
    """The official evaluation of COCO results records on the split's images, and the predictions."""
    gt = load_ground_truth(gt_dir)
    keys = image_keys(coco)
    unknown = [k for k in keys.values() if k not in gt]
    if unknown:
        raise InputError(
            f"split {split!r}: {len(unknown)} of {len(keys)} image(s) are not in the official ground truth of {gt_dir} "
            f"({first_few(unknown)}); the WIDER FACE evaluation needs the test split to be WIDER val or part of it"
        )
    predictions = predictions_from_coco_results(results, keys)
    return evaluate(gt, predictions, image_keys=list(keys.values())), predictions


def evaluate_any(gt_dir: Path, predictions: Path, coco_json: Path | None = None, out_json: Path | None = None, out_png: Path | None = None) -> str:
    """The official evaluation of any detector's predictions on val: a folder in the official layout
    (`<event>/<image>.txt`), or a COCO results JSON (with `coco_json`, the COCO JSON its image ids
    refer to). Optionally the APs as JSON and the PR curves; returns the Markdown table."""
    gt = load_ground_truth(gt_dir)
    if predictions.is_dir():
        found, keys = read_prediction_dir(predictions, gt.images), None
    else:
        if coco_json is None:
            raise PipelineError(f"{predictions}: a COCO results JSON needs the COCO JSON its image ids refer to (--coco)")
        key_by_id = image_keys(load_json(coco_json))
        found, keys = predictions_from_coco_results(read_json(predictions), key_by_id), list(key_by_id.values())
    result = evaluate(gt, found, image_keys=keys)
    if out_json:
        atomic.write_json(out_json, {"predictions": str(predictions), **result_to_json(result)}, indent=2)
    if out_png:
        plot_pr_curves({predictions.name: result}, out_png, f"WIDER FACE val: {predictions.name}")
    return results_markdown({predictions.name: result})


def write_score(
    method: str, split: str, results_path: Path, result: WiderResult, predictions: Predictions, out_json: Path, out_curves: Path, out_predictions: Path
) -> None:
    """The method's score JSON, its PR curves (.npz), and its detections in the official txt layout."""
    atomic.write_json(out_json, {"method": method, "split": split, "results": str(results_path), **result_to_json(result)}, indent=2)
    arrays = {f"{s}_{k}": getattr(result.settings[s], k) for s in SETTINGS for k in ("precision", "recall")}
    with atomic.atomic_path(out_curves) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    with atomic.atomic_dir(out_predictions) as tmp:
        write_prediction_dir(predictions, tmp, sorted(predictions))


def read_score(json_path: Path, curves_path: Path) -> tuple[str, WiderResult]:
    """A method's name and result back from `write_score`'s JSON and curves."""
    doc = json.loads(Path(json_path).read_text())
    with np.load(curves_path) as arrays:
        settings = {
            s: SettingResult(
                ap=float("nan") if doc["ap"][s] is None else doc["ap"][s],
                precision=arrays[f"{s}_precision"],
                recall=arrays[f"{s}_recall"],
                faces=doc["faces"][s],
            )
            for s in SETTINGS
        }
    result = WiderResult(
        settings,
        doc["images_evaluated"],
        doc["images_total"],
        doc["images_without_predictions"],
        doc["overlap_arithmetic"] == "int32",
        doc["thresh_num"],
        doc["iou_thresh"],
    )
    return doc["method"], result


WIDERFACE_TABLE_OUTPUTS = ("markdown", "csv", "figure")


def write_widerface_table(scores: list[tuple[Path, Path]], outputs: dict[str, Path]) -> str:
    """The paper's Table 8 (Easy / Medium / Hard AP per method) as Markdown and CSV, and the PR
    curves (`outputs`: markdown, csv, figure)."""
    missing = sorted(set(WIDERFACE_TABLE_OUTPUTS) - set(outputs))
    if missing:
        raise PipelineError(f"the WIDER FACE table needs outputs {missing}")
    results = dict(read_score(j, c) for j, c in scores)
    methods = ordered(list(results))
    named = {display_name(m): results[m] for m in methods}
    official = all(r.official for r in results.values())
    note = (
        ""
        if official
        else ("\nNot the official protocol: evaluated on part of WIDER val (or with non-default settings); compare these numbers only with each other.\n")
    )
    markdown = results_markdown(named) + note
    atomic.write_text(outputs["markdown"], markdown)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method", "name", "easy", "medium", "hard", "images_evaluated", "images_total", "official"])
    for m in methods:
        r = results[m]
        writer.writerow([m, display_name(m), *(f"{r.settings[s].ap:.4f}" for s in SETTINGS), r.images_evaluated, r.images_total, r.official])
    atomic.write_text(outputs["csv"], buffer.getvalue())
    title = "WIDER FACE val, official evaluation" + ("" if official else " (part of val: not the official protocol)")
    plot_pr_curves(named, outputs["figure"], title, colors={display_name(m): method_color(m) for m in methods})
    return markdown
