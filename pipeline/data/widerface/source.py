"""WIDER FACE as a data source (registered in `pipeline.data.sources`): its official annotation
files converted to COCO JSON per split, and its official prediction layout read as COCO results."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from core.errors import InputError
from core.io.coco import CocoCheckPolicy, CocoFormatError, validate_coco
from pipeline.data.widerface import convert
from pipeline.data.widerface.predictions import read_prediction_dir

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
    keys = convert.image_keys(coco)
    predictions = read_prediction_dir(folder, keys.values())
    return [
        {"image_id": image_id, "category_id": category_id, "bbox": [float(v) for v in row[:4]], "score": float(row[4])}
        for image_id, key in keys.items()
        for row in predictions.get(key, [])
    ]
