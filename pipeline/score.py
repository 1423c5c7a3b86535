"""Stage 8, score: pycocotools' COCOeval (bbox) of a COCO results file against the ground truth.

The twelve numbers of `COCOeval.stats` get their names once, here (detectron2 style). Values are
fractions in [0, 1]; tables show them x100. The per-image detection cap is pycocotools' default
maxDets 100 (AP and the size-range APs use it), applied per image and category by pycocotools.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from core.errors import InputError
from core.io import atomic
from core.io.coco import read_json

log = logging.getLogger(__name__)

STAT_NAMES: tuple[str, ...] = ("AP", "AP50", "AP75", "APS", "APM", "APL", "AR1", "AR10", "AR100", "ARS", "ARM", "ARL")
TABLE_COLUMNS: tuple[str, ...] = ("AP", "AP50", "AP75", "APS", "APM", "APL", "AR100")


def coco_bbox_eval(gt_json: Path, results: list[dict[str, Any]]) -> tuple[dict[str, float], COCOeval | None]:
    """COCOeval bbox metrics of `results` (COCO results records) on the images of `gt_json`.

    No detections at all scores 0 everywhere (pycocotools cannot load an empty result list); a
    split without ground-truth objects is an InputError (COCOeval's -1 is no score). A size range
    without objects (no small object, say) scores 0, pycocotools' -1 clipped.
    """
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        gt = COCO(str(gt_json))
        if not gt.getAnnIds():
            raise InputError(f"{gt_json}: the split has no ground-truth objects: nothing to score (COCOeval would report -1 everywhere)")
        if not results:
            return {name: 0.0 for name in STAT_NAMES} | {"images": len(gt.getImgIds())}, None
        dt = gt.loadRes(results)
        evaluator = COCOeval(gt, dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    log.info("pycocotools:\n%s", printed.getvalue())
    stats = {name: float(max(v, 0.0)) for name, v in zip(STAT_NAMES, evaluator.stats)}  # -1 (no objects) -> 0
    stats["images"] = len(gt.getImgIds())
    return stats, evaluator


def write_score(
    coco_json: Path, coco: dict[str, Any], results: Path, method: str, split: str, out_json: Path, out_md: Path, out_eval: Path | None = None
) -> str:
    """Stage 8 for one method: its metrics and per-class AP (JSON), its table row (Markdown,
    returned too) and, optionally, COCOeval's accumulated precision / recall / scores (.npz)."""
    stats, evaluator = coco_bbox_eval(coco_json, read_json(results))
    category_ids = sorted(c["id"] for c in coco["categories"])
    atomic.write_json(
        out_json,
        {
            "method": method,
            "split": split,
            "results": str(results),
            "metrics": stats,
            "per_class_ap": per_class_ap(evaluator, category_ids),
            "category_names": {str(c["id"]): c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])},
        },
        indent=2,
    )
    if out_eval is not None:
        arrays = {k: evaluator.eval[k] for k in ("precision", "recall", "scores")} if evaluator else {}
        with atomic.atomic_path(out_eval) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
    table = metrics_markdown({method: stats})
    atomic.write_text(out_md, table)
    return table


def metrics_markdown(rows: dict[str, dict[str, float]]) -> str:
    """A table in the layout of the paper's Tables 2-6: one row per method, values x100."""
    header = "| method | " + " | ".join(TABLE_COLUMNS) + " | images |"
    lines = [header, "|---|" + "---:|" * (len(TABLE_COLUMNS) + 1)]
    for method, stats in rows.items():
        values = " | ".join(f"{100 * stats[c]:.1f}" for c in TABLE_COLUMNS)
        lines.append(f"| {method} | {values} | {int(stats['images'])} |")
    return "\n".join(lines) + "\n"


def per_class_ap(evaluator: COCOeval | None, category_ids: list[int]) -> dict[str, float]:
    """AP (IoU .50:.95, all areas, maxDets 100) per category id, from the accumulated precision;
    0 for a category without ground truth or detections (pycocotools' -1)."""
    if evaluator is None:
        return {str(c): 0.0 for c in category_ids}
    precision = evaluator.eval["precision"][:, :, :, 0, -1]  # IoU thresholds x recall x category
    out = {}
    for k, cat_id in enumerate(evaluator.params.catIds):
        p = precision[:, :, k]
        p = p[p > -1]
        out[str(cat_id)] = float(p.mean()) if p.size else 0.0
    return out
