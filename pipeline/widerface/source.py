"""WIDER FACE as a data source (registered in `pipeline.data.sources`): its official annotation
files converted to COCO JSON per split, its official prediction layout read as COCO results, and
the official evaluation files the `eval_widerface` target needs."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from core.errors import InputError
from core.io.coco import CocoCheckPolicy, CocoFormatError, validate_coco
from pipeline.widerface import convert
from pipeline.widerface.ground_truth import WIDERFACE_GROUND_TRUTH
from pipeline.widerface.predictions import read_prediction_dir
from pipeline.widerface.score import image_keys

log = logging.getLogger(__name__)


def build_splits(section: dict[str, Any], tmp: Path, n_jobs: int) -> list[tuple[str, dict[str, Any], Path, dict[str, Any]]]:
    """(split, COCO dict, image root, counts) per configured split of `data.widerface`."""
    cfg = section["widerface"]
    if not cfg["splits"]:
        raise InputError("config data.widerface.splits is empty: name each split's bbx_gt.txt and image folder")
    # Sizes are read from the JPEG headers by the conversion, which also reports missing files.
    policy = CocoCheckPolicy(box_tolerance=cfg["box_tolerance"], invalid_boxes=cfg["invalid_boxes"], check_image_files=False, check_image_sizes=False)
    out = []
    for split, files in cfg["splits"].items():
        path, image_root = Path(files["annotations"]), Path(files["images"]).resolve()
        log.info("converting split %s: %s (images under %s)", split, path, image_root)
        coco, counts = convert.to_coco(convert.read_bbx_gt(path), image_root, path)
        clean, report = validate_coco(coco, path, image_root, policy)
        log.info("split %s: %d faces clipped to their image, %d outside it dropped", split, report.clipped_boxes, report.dropped_boxes)
        for example in report.dropped_examples:
            log.info("  dropped: %s", example)
        extra = {k: counts[k] for k in ("zero_size_faces", "invalid_faces", "images_without_faces")}
        out.append((split, clean, image_root, extra | {"clipped_boxes": report.clipped_boxes, "dropped_boxes": report.dropped_boxes}))
    return out


def prediction_folder_records(folder: Path, coco: dict[str, Any]) -> list[dict[str, Any]]:
    """COCO results records from the official WIDER FACE prediction layout (`<event>/<image>.txt`)."""
    if len(coco["categories"]) != 1:
        raise CocoFormatError(f"{folder}: the WIDER FACE prediction layout has no classes; the dataset has {len(coco['categories'])} categories")
    category_id = coco["categories"][0]["id"]
    keys = image_keys(coco)
    predictions = read_prediction_dir(folder, keys.values())
    return [
        {"image_id": image_id, "category_id": category_id, "bbox": [float(v) for v in row[:4]], "score": float(row[4])}
        for image_id, key in keys.items()
        for row in predictions.get(key, [])
    ]


def ground_truth_files(config: dict[str, Any]) -> list[str]:
    """The official evaluation files eval_widerface needs; a clear error where they cannot be."""
    data = config["data"]
    if data["source"] != "widerface":
        raise InputError(
            f"eval_widerface needs data.source: widerface (this config has {data['source']!r}); "
            "run: snakemake --cores 8 --configfile config/widerface.yaml eval_widerface"
        )
    folder = data["widerface"]["ground_truth"]
    if not folder:
        raise InputError(
            "eval_widerface needs data.widerface.ground_truth: the folder of wider_face_val.mat and "
            "wider_{easy,medium,hard}_val.mat (eval_tools/ground_truth of the official toolkit)"
        )
    return [os.path.join(folder, name) for name in WIDERFACE_GROUND_TRUTH]
