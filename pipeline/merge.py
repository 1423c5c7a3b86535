"""Stage 7, merge: per-ROI class probabilities and offsets -> detections, COCO results JSON.

Per ROI: the offsets are decoded onto the ROI box with the same `BoxCoder` the rois stage encoded
the targets with, and the box is clipped to its image. Each class c >= 1 gets the score p[c]
(MTGAN alone) or p[c] x p_base[c] (the ensemble: the element-wise product of MTGAN's and the
baseline's class distributions, paper Table 6). Scores at or below `score_floor` are dropped;
per-class NMS (torchvision.ops.batched_nms, IoU `nms_iou`) runs per image; the best
`max_per_image` detections of each image are kept. That cap is pycocotools' maxDets (100), so
nothing pycocotools would count is cut, and nothing beyond what it counts is kept.

The ROI and inference tables are read a row group at a time and merged image by image, so time
grows with the images and memory with one row group (one call of NMS over a whole split's images,
as before, takes torchvision's per-class loop, whose every group scans every candidate: quadratic
in images). Detections come in the ROI table's image order, each image's best first; equal
scores in the order of their (ROI, class), a stable order (torch's sort is not).
"""

from __future__ import annotations

from collections.abc import Iterator
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
from core.io.tables import INFERENCE_SCHEMA, ROIS_SCHEMA, ROW_GROUP_SIZE, checked_metadata, iter_table, table_metadata, vectors
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


TablePart = tuple[pa.Table, pa.Table | None]  # some rows of the ROI table and the same rows of the inference table


def merge_parts(parts: Iterator[TablePart], settings: MergeSettings, ensemble: bool, category_ids: list[int]) -> Iterator[list[dict[str, Any]]]:
    """COCO results records from the ROI table and a variant's per-ROI predictions (None: the
    baseline's own probabilities and boxes) in parts of aligned rows, a list per part: each
    image's detections once all its rows are in."""
    k1 = len(category_ids) + 1
    held: list[TablePart] = []
    for rois, predictions in parts:
        if predictions is not None:
            made_for = table_metadata(predictions).get("category_ids")
            if made_for != category_ids:
                raise InputError(
                    f"the inference table was made by a model of categories {made_for}, the ROI table's are {category_ids}: another dataset's model?"
                )
            if not np.array_equal(rois.column("roi_id").to_numpy(), predictions.column("roi_id").to_numpy()):
                raise InputError("the inference table does not hold exactly the ROI table's ROIs, in order")
        held.append((rois, predictions))
        image_ids = rois.column("image_id").to_numpy()
        if not len(image_ids):
            continue
        last = np.flatnonzero(image_ids != image_ids[-1])  # the last image may go on in the next part
        if len(last):
            done = _concat(held)
            cut = sum(len(r) for r, _ in held) - (len(image_ids) - int(last[-1]) - 1)
            yield merge_images(done[0].slice(0, cut), None if done[1] is None else done[1].slice(0, cut), settings, ensemble, category_ids, k1)
            held = [(done[0].slice(cut), None if done[1] is None else done[1].slice(cut))]
    if held and sum(len(r) for r, _ in held):
        done = _concat(held)
        yield merge_images(done[0], done[1], settings, ensemble, category_ids, k1)


def _concat(parts: list[TablePart]) -> TablePart:
    rois = pa.concat_tables([r for r, _ in parts])
    predictions = [p for _, p in parts]
    return rois, None if predictions[0] is None else pa.concat_tables(predictions)  # type: ignore[arg-type]


def merge_images(
    rois: pa.Table, predictions: pa.Table | None, settings: MergeSettings, ensemble: bool, category_ids: list[int], k1: int
) -> list[dict[str, Any]]:
    """The detections of whole images (`rois`: their rows, grouped by image; `predictions`: the same
    rows of the inference table, or None for the baseline)."""
    n = len(rois)
    boxes = torch.from_numpy(np.stack([rois.column(k).to_numpy() for k in ("x1", "y1", "x2", "y2")], axis=1).astype(np.float32)).reshape(n, 4)
    base = torch.from_numpy(vectors(rois.column("base_probs"), k1, "the ROI table"))
    if predictions is not None:
        probs = torch.from_numpy(vectors(predictions.column("probs"), k1, "the inference table"))
        offsets = torch.from_numpy(np.stack([predictions.column(k).to_numpy() for k in ("dx", "dy", "dw", "dh")], axis=1).astype(np.float32)).reshape(n, 4)
        boxes = BoxCoder().decode(offsets, boxes)
    else:
        probs = base
    scores = probs * base if ensemble else probs
    image_id = torch.from_numpy(rois.column("image_id").to_numpy().copy())  # a writable copy: Arrow buffers are read-only
    width = torch.from_numpy(rois.column("image_width").to_numpy().astype(np.float32))
    height = torch.from_numpy(rois.column("image_height").to_numpy().astype(np.float32))
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
    kept = []
    for start, stop in _runs(cand_images.numpy()):  # per image: per-class NMS, the best max_per_image
        keep = batched_nms(cand_boxes[start:stop], cand_scores[start:stop], cls[start:stop], settings.nms_iou).numpy()
        keep = np.sort(keep)[np.argsort(-cand_scores[start:stop].numpy()[np.sort(keep)], kind="stable")]  # best first; ties stable
        kept.append(start + keep[: settings.max_per_image])
    keep = torch.from_numpy(np.concatenate(kept)) if kept else torch.zeros(0, dtype=torch.long)
    xywh = xyxy_to_xywh(cand_boxes[keep])
    ids = torch.tensor(category_ids, dtype=torch.long)[cls[keep] - 1]
    return [
        {"image_id": int(i), "category_id": int(c), "bbox": [round(float(v), 3) for v in b], "score": round(float(s), 6)}
        for i, c, b, s in zip(cand_images[keep].tolist(), ids.tolist(), xywh.tolist(), cand_scores[keep].tolist())
    ]


def _runs(values: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of each run of equal consecutive values."""
    if not len(values):
        return []
    starts = np.flatnonzero(np.diff(values, prepend=values[:1] - 1))
    return list(zip(starts.tolist(), [*starts[1:].tolist(), len(values)]))


def table_parts(rois: pa.Table, predictions: pa.Table | None, rows: int = ROW_GROUP_SIZE) -> Iterator[TablePart]:
    """Two tables in memory as parts of aligned rows."""
    if predictions is not None and len(predictions) != len(rois):
        raise InputError("the inference table does not hold exactly the ROI table's ROIs, in order")
    for start in range(0, max(len(rois), 1), rows):
        yield rois.slice(start, rows), None if predictions is None else predictions.slice(start, rows)


def file_parts(rois_path: Path, inference: Path | None) -> Iterator[TablePart]:
    """The ROI table and an inference table read a row group at a time, as parts of aligned rows."""
    rois = iter_table(rois_path, ROIS_SCHEMA)
    predictions = iter_table(inference, INFERENCE_SCHEMA) if inference else None
    if predictions is None:
        yield from ((part, None) for part in rois)
        return
    left: pa.Table | None = None
    right: pa.Table | None = None
    while True:
        left = left if left is not None and len(left) else next(rois, None)
        right = right if right is not None and len(right) else next(predictions, None)
        if left is None or right is None:
            if left is not None or right is not None:
                raise InputError("the inference table does not hold exactly the ROI table's ROIs, in order")
            return
        rows = min(len(left), len(right))
        yield left.slice(0, rows), right.slice(0, rows)
        left, right = left.slice(rows), right.slice(rows)


def merge_detections(rois: pa.Table, inference: pa.Table | None, settings: MergeSettings, ensemble: bool, category_ids: list[int]) -> list[dict[str, Any]]:
    """COCO results records from the test split's ROI table and a variant's per-ROI predictions
    (None: the baseline's own probabilities and boxes), both in memory."""
    return [r for part in merge_parts(table_parts(rois, inference), settings, ensemble, category_ids) for r in part]


def merge_files(settings: MergeSettings, rois_path: Path, inference: Path | None, outputs: dict[bool, Path]) -> dict[Path, int]:
    """Stage 7 for one variant under one rule: a COCO results JSON alone (key False) and one in the
    ensemble with the baseline (key True), for the keys of `outputs`, read and written in parts;
    each file's number of detections."""
    category_ids = list(checked_metadata(rois_path, ROIS_SCHEMA)["category_ids"])
    return {
        path: atomic.write_json_list(path, merge_parts(file_parts(rois_path, inference), settings, ensemble, category_ids))
        for ensemble, path in outputs.items()
    }
