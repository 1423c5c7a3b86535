"""Stage 7, merge: per-ROI class probabilities and offsets -> detections, COCO results JSON.

Per ROI: the offsets are decoded onto the ROI box with the same `BoxCoder` the rois stage encoded
the targets with, and the box is clipped to its image. Each class c >= 1 gets the score p[c]
(MTGAN alone) or p[c] x p_base[c] (the ensemble: the element-wise product of MTGAN's and the
baseline's class distributions, paper Table 6). Scores at or below `score_floor` are dropped;
per-class NMS (torchvision.ops.batched_nms, IoU `nms_iou`) runs per image; the best
`max_per_image` detections of each image are kept. That cap is pycocotools' maxDets (100), so
nothing pycocotools would count is cut, and nothing beyond what it counts is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torchvision.ops import batched_nms

from core.boxes import xyxy_to_xywh
from core.errors import InputError
from core.io import atomic
from core.io.tables import INFERENCE_SCHEMA, ROIS_SCHEMA, file_metadata, read_table, table_metadata
from core.roi_targets import BoxCoder
from core.sections import section_fields


@dataclass(frozen=True)
class MergeSettings:
    nms_iou: float
    score_floor: float
    max_per_image: int

    @classmethod
    def from_config(cls, merge: dict[str, Any]) -> MergeSettings:
        """From the config's `merge` section."""
        return cls(**section_fields(cls, merge))


def merged_records(settings: MergeSettings, rois_path: Path, inference: Path | None, ensembles: tuple[bool, ...]) -> dict[bool, list[dict[str, Any]]]:
    """The detections of one variant under one rule (`inference` None: the baseline's own scores),
    alone (False) and in the ensemble with the baseline (True), for each of `ensembles`: the ROI
    and inference tables are read once."""
    rois = read_table(rois_path, ROIS_SCHEMA)
    predictions = read_table(inference, INFERENCE_SCHEMA) if inference else None
    category_ids = list(file_metadata(rois_path)["category_ids"])
    return {ensemble: merge_detections(rois, predictions, settings, ensemble, category_ids) for ensemble in ensembles}


def merge_files(settings: MergeSettings, rois_path: Path, inference: Path | None, outputs: dict[bool, Path]) -> dict[Path, int]:
    """Stage 7 for one variant under one rule: a COCO results JSON alone (key False) and one in the
    ensemble with the baseline (key True), for the keys of `outputs`; each file's number of detections."""
    counts = {}
    for ensemble, records in merged_records(settings, rois_path, inference, tuple(outputs)).items():
        atomic.write_json(outputs[ensemble], records)
        counts[outputs[ensemble]] = len(records)
    return counts


def merge_detections(rois: pa.Table, inference: pa.Table | None, settings: MergeSettings, ensemble: bool, category_ids: list[int]) -> list[dict[str, Any]]:
    """COCO results records from the test split's ROI table and a variant's per-ROI predictions
    (None: the baseline's own probabilities and boxes)."""
    r = rois.to_pydict()
    n, k1 = len(r["roi_id"]), len(category_ids) + 1
    boxes = torch.tensor(np.stack([r[k] for k in ("x1", "y1", "x2", "y2")], axis=1), dtype=torch.float32).reshape(n, 4)
    base = torch.tensor(np.asarray(r["base_probs"], np.float32)).reshape(n, k1)
    if inference is not None:
        made_for = table_metadata(inference).get("category_ids")
        if made_for != category_ids:
            raise InputError(f"the inference table was made by a model of categories {made_for}, the ROI table's are {category_ids}: another dataset's model?")
        p = inference.to_pydict()
        if p["roi_id"] != r["roi_id"]:
            raise InputError("the inference table does not hold exactly the ROI table's ROIs, in order")
        probs = torch.tensor(np.asarray(p["probs"], np.float32)).reshape(n, k1)
        offsets = torch.tensor(np.stack([p[k] for k in ("dx", "dy", "dw", "dh")], axis=1), dtype=torch.float32).reshape(n, 4)
        boxes = BoxCoder().decode(offsets, boxes)
    else:
        probs = base
    scores = probs * base if ensemble else probs
    image_id = torch.tensor(r["image_id"], dtype=torch.long)
    width = torch.tensor(r["image_width"], dtype=torch.float32)
    height = torch.tensor(r["image_height"], dtype=torch.float32)
    boxes = torch.stack(
        [
            boxes[:, 0].clamp(min=0),
            boxes[:, 1].clamp(min=0),  # clipped to each ROI's own image
            torch.minimum(boxes[:, 2], width),
            torch.minimum(boxes[:, 3], height),
        ],
        dim=1,
    )

    # Every (ROI, class >= 1) pair with a score above the floor is a candidate detection.
    roi_idx, cls = torch.nonzero(scores[:, 1:] > settings.score_floor, as_tuple=True)
    cls = cls + 1
    cand_boxes, cand_scores, cand_images = boxes[roi_idx], scores[roi_idx, cls], image_id[roi_idx]
    valid = (cand_boxes[:, 2] > cand_boxes[:, 0]) & (cand_boxes[:, 3] > cand_boxes[:, 1])
    cand_boxes, cand_scores, cand_images, cls = cand_boxes[valid], cand_scores[valid], cand_images[valid], cls[valid]
    # Per-image, per-class NMS in one call: the group id combines image and class.
    keep = batched_nms(cand_boxes, cand_scores, cand_images * k1 + cls, settings.nms_iou)  # best first
    keep = keep[torch.argsort(cand_images[keep], stable=True)]  # grouped by image, still best first
    kept_images = cand_images[keep]
    rank = torch.arange(len(keep)) - torch.searchsorted(kept_images, kept_images)  # rank within its image
    keep = keep[rank < settings.max_per_image]
    xywh = xyxy_to_xywh(cand_boxes[keep])
    ids = torch.tensor(category_ids, dtype=torch.long)[cls[keep] - 1]
    return [
        {"image_id": int(i), "category_id": int(c), "bbox": [round(float(v), 3) for v in b], "score": round(float(s), 6)}
        for i, c, b, s in zip(cand_images[keep], ids, xywh, cand_scores[keep])
    ]
