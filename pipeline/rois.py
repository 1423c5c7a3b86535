"""Stage 3, rois: every baseline detection as a region of interest, labelled against the ground truth.

Per ROI (`schemas/rois.schema.yaml`): best IoU with a non-crowd ground-truth box
(torchvision.ops.box_iou), that box's annotation id, the label (positive: IoU >= positive_iou,
labelled with the box's class; negative: IoU < negative_iou; ignored in between, or when a crowd
region overlaps the ROI more than any object: see `core.roi_targets.match_rois`), the Fast R-CNN
regression target to the matched box (`core.roi_targets.BoxCoder`), the baseline's label, score and
class-probability vector, and the ROI's COCO size class.

On the training split (config `rois.add_gt_to_train`, default on) every non-crowd ground-truth box
is added as an extra positive ROI (`origin: gt`, IoU 1, zero baseline scores), so that small objects
the baseline misses still teach the second stage. Test-split ROIs are the detections alone.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from core.boxes import xywh_to_xyxy
from core.errors import InputError
from core.io import atomic
from core.io.tables import DETECTIONS_SCHEMA, ROIS_SCHEMA, make_table, read_table, table_metadata, write_table
from core.roi_targets import BACKGROUND, IGNORE, BoxCoder, match_rois
from core.sections import section_fields
from core.sizes import SIZE_CLASSES, size_class

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoiSettings:
    """How detections are labelled (config section `rois`)."""

    positive_iou: float
    negative_iou: float
    add_gt_to_train: bool

    @classmethod
    def from_config(cls, rois: dict[str, Any]) -> RoiSettings:
        return cls(**section_fields(cls, rois))


def write_rois(settings: RoiSettings, detections: Path, coco: dict[str, Any], split: str, role: str, out_table: Path, out_counts: Path) -> str:
    """Stage 3 for one split and role: the ROI table and its counts (Markdown, returned too).
    Ground truth is added to the training role only."""
    add_gt = settings.add_gt_to_train and role == "train"
    try:
        table, summary = build_rois(read_table(detections, DETECTIONS_SCHEMA), coco, add_gt, settings.positive_iou, settings.negative_iou)
    except InputError as e:
        raise InputError(f"{detections}: {e}") from None
    write_table(table, out_table)
    markdown = counts_markdown(f"{split} ({role})", summary)
    atomic.write_text(out_counts, markdown)
    return markdown


ROI_PARTS = ("image_id", "image_width", "image_height", "box", "iou", "gt_ann_id", "label", "target", "base_label", "base_score", "base_probs", "origin")


@dataclass(frozen=True)
class DetectionArrays:
    """The detections table as arrays, and its rows per image."""

    boxes: np.ndarray  # (N, 4) xyxy, float32
    probs: np.ndarray  # (N, K + 1)
    labels: np.ndarray  # (N,) int32
    scores: np.ndarray  # (N,) float32
    rows_of_image: dict[int, list[int]]

    @classmethod
    def of(cls, detections: pa.Table, k1: int) -> DetectionArrays:
        det = detections.to_pydict()
        rows_of_image: dict[int, list[int]] = {}
        for row, image_id in enumerate(det["image_id"]):
            rows_of_image.setdefault(image_id, []).append(row)
        return cls(
            np.stack([np.asarray(det[k], np.float32) for k in ("x1", "y1", "x2", "y2")], axis=1).reshape(-1, 4),
            np.asarray(det["probs"], np.float32).reshape(-1, k1),
            np.asarray(det["label"], np.int32),
            np.asarray(det["score"], np.float32),
            rows_of_image,
        )


def check_detections(det: DetectionArrays, coco: dict[str, Any]) -> None:
    """Every detection is of an image of the split and has a positive width and height; InputError
    names the count and the first offending row otherwise (nothing is dropped silently)."""
    outside = sorted(set(det.rows_of_image) - {im["id"] for im in coco["images"]})
    if outside:
        rows, first = sum(len(det.rows_of_image[i]) for i in outside), outside[0]
        raise InputError(f"{rows} detection(s) of {len(outside)} image id(s) not in the split (first: image {first}, row {det.rows_of_image[first][0]})")
    x1, y1, x2, y2 = det.boxes.T
    empty = np.flatnonzero(~((x2 > x1) & (y2 > y1)))
    if empty.size:
        row = int(empty[0])
        raise InputError(f"{empty.size} detection(s) without area (first: row {row}, box x1 y1 x2 y2 {det.boxes[row].tolist()}): x2 must exceed x1 and y2 y1")


def build_rois(detections: pa.Table, coco: dict[str, Any], add_gt: bool, positive_iou: float, negative_iou: float) -> tuple[pa.Table, dict[str, Any]]:
    """The ROI table of a split and its label counts per size class. A split without annotations
    (an image list) gives ROIs labelled IGNORE (-1: unknown), with no IoU and no regression target."""
    labelled = "annotations" in coco
    category_ids = list(table_metadata(detections)["category_ids"])
    if category_ids != sorted(c["id"] for c in coco["categories"]):
        raise InputError("the detections were made for other categories than this split's ground truth")
    label_of = {cid: k + 1 for k, cid in enumerate(category_ids)}
    k1 = len(category_ids) + 1
    coder = BoxCoder()
    det = DetectionArrays.of(detections, k1)
    check_detections(det, coco)
    gt_by_image: dict[int, list[dict[str, Any]]] = {}
    for a in coco.get("annotations", []):
        gt_by_image.setdefault(a["image_id"], []).append(a)

    parts: dict[str, list[np.ndarray]] = {k: [] for k in ROI_PARTS}
    for im in coco["images"]:
        image = image_rois(im, det, gt_by_image.get(im["id"], []), label_of, add_gt, positive_iou, negative_iou, coder)
        if not labelled:
            image["label"] = np.full(len(image["label"]), IGNORE)
        for key in ROI_PARTS:
            parts[key].append(image[key])
    columns = roi_columns({k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}, k1)
    summary = label_counts(columns["label"], columns["size_class"], columns["origin"])
    names = {c["id"]: c["name"] for c in coco["categories"]}
    metadata = {
        "category_ids": category_ids,
        "category_names": [names[c] for c in category_ids],
        "labelled": labelled,
        "positive_iou": positive_iou,
        "negative_iou": negative_iou,
        "box_coder_weights": list(coder.weights),
        "add_gt": add_gt,
        "counts": summary,
    }
    return make_table(columns, ROIS_SCHEMA, metadata), summary


def image_rois(
    im: dict[str, Any],
    det: DetectionArrays,
    anns: list[dict[str, Any]],
    label_of: dict[int, int],
    add_gt: bool,
    positive_iou: float,
    negative_iou: float,
    coder: BoxCoder,
) -> dict[str, np.ndarray]:
    """One image's ROIs (ROI_PARTS): its detections, with `add_gt` its non-crowd ground-truth boxes
    as extra ROIs (origin gt), each matched to the ground truth (label, IoU, box, target)."""
    rows = det.rows_of_image.get(im["id"], [])
    k1 = det.probs.shape[1]
    gt = xywh_to_xyxy(torch.tensor([a["bbox"] for a in anns], dtype=torch.float64).reshape(-1, 4)).float()
    crowd = torch.tensor([bool(a.get("iscrowd", 0)) for a in anns], dtype=torch.bool)
    gt_labels = torch.tensor([label_of[a["category_id"]] for a in anns], dtype=torch.long)
    boxes, base_probs = det.boxes[rows], det.probs[rows]
    base_label = det.labels[rows] if rows else np.zeros(0, np.int32)
    base_score = det.scores[rows] if rows else np.zeros(0, np.float32)
    origin = np.array(["detector"] * len(rows), dtype=object)
    if add_gt and len(anns):
        solid = ~crowd.numpy()
        n_gt = int(solid.sum())
        boxes = np.concatenate([boxes, gt.numpy()[solid]])
        base_label = np.concatenate([base_label, np.zeros(n_gt, np.int32)])
        base_score = np.concatenate([base_score, np.zeros(n_gt, np.float32)])
        base_probs = np.concatenate([base_probs, np.zeros((n_gt, k1), np.float32)])
        origin = np.concatenate([origin, np.array(["gt"] * n_gt, dtype=object)])
    rois = torch.from_numpy(boxes)
    match = match_rois(rois, gt, gt_labels, crowd, positive_iou, negative_iou)
    matched = match.gt_index >= 0
    target = torch.zeros((len(rois), 4))
    n = len(rois)
    gt_ann = np.full(n, -1, np.int64)
    if matched.any():
        target[matched] = coder.encode(gt[match.gt_index[matched]], rois[matched])
        gt_ann[matched.numpy()] = np.asarray([a["id"] for a in anns], np.int64)[match.gt_index[matched].numpy()]
    return {
        "image_id": np.full(n, im["id"], np.int64),
        "image_width": np.full(n, im["width"], np.int32),
        "image_height": np.full(n, im["height"], np.int32),
        "box": boxes,
        "iou": match.iou.numpy(),
        "gt_ann_id": gt_ann,
        "label": match.labels.numpy(),
        "target": target.numpy(),
        "base_label": base_label,
        "base_score": base_score,
        "base_probs": base_probs,
        "origin": origin,
    }


def roi_columns(cat: dict[str, np.ndarray], k1: int) -> dict[str, Any]:
    """The ROI table's columns (`schemas/rois.schema.yaml`) from the images' ROI_PARTS, concatenated:
    ROI ids in table order, boxes and targets split into named columns, each ROI's size class."""
    boxes = cat["box"].reshape(-1, 4).astype(np.float32)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    target = cat["target"].reshape(-1, 4)
    return {
        "roi_id": np.arange(len(boxes), dtype=np.int64),
        "image_id": cat["image_id"].astype(np.int64),
        "image_width": cat["image_width"].astype(np.int32),
        "image_height": cat["image_height"].astype(np.int32),
        "x1": boxes[:, 0],
        "y1": boxes[:, 1],
        "x2": boxes[:, 2],
        "y2": boxes[:, 3],
        "iou": cat["iou"].astype(np.float32),
        "gt_ann_id": cat["gt_ann_id"].astype(np.int64),
        "label": cat["label"].astype(np.int32),
        "dx": target[:, 0].astype(np.float32),
        "dy": target[:, 1].astype(np.float32),
        "dw": target[:, 2].astype(np.float32),
        "dh": target[:, 3].astype(np.float32),
        "base_label": cat["base_label"].astype(np.int32),
        "base_score": cat["base_score"].astype(np.float32),
        "base_probs": cat["base_probs"].reshape(-1, k1).astype(np.float32),
        "size_class": [size_class(float(a)) for a in areas],
        "origin": [str(o) for o in cat["origin"]],
    }


def label_counts(labels: np.ndarray, sizes: list[str], origins: list[str]) -> dict[str, Any]:
    """ROIs per kind (positive / negative / ignored) and size class, and per origin."""
    kind = np.where(labels > 0, "positive", np.where(labels == BACKGROUND, "negative", "ignored"))
    counts = Counter(zip(kind.tolist(), sizes))
    table = {k: {s: counts.get((k, s), 0) for s in SIZE_CLASSES} for k in ("positive", "negative", "ignored")}
    return {"total": int(len(labels)), "by_kind_and_size": table, "by_origin": dict(Counter(origins))}


def counts_markdown(split: str, summary: dict[str, Any]) -> str:
    lines = [
        f"### ROIs of split `{split}` ({summary['total']} in all; by origin: {summary['by_origin']})",
        "",
        "| | " + " | ".join(SIZE_CLASSES) + " | all |",
        "|---|" + "---:|" * (len(SIZE_CLASSES) + 1),
    ]
    for kind, row in summary["by_kind_and_size"].items():
        lines.append(f"| {kind} | " + " | ".join(str(row[s]) for s in SIZE_CLASSES) + f" | {sum(row.values())} |")
    return "\n".join(lines) + "\n"
