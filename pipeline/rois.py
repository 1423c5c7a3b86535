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

import dataclasses
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from tqdm import tqdm

from core.boxes import xywh_to_xyxy
from core.errors import InputError
from core.io import atomic
from core.io.shards import ORIGIN_CODES
from core.io.tables import DETECTIONS_SCHEMA, ROIS_SCHEMA, TableWriter, checked_metadata, iter_table, vectors
from core.roi_targets import BACKGROUND, IGNORE, BoxCoder, match_rois
from core.sections import section_fields
from core.sizes import SIZE_CLASSES, size_classes

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
        summary = build_rois(detections, coco, add_gt, settings.positive_iou, settings.negative_iou, out_table)
    except InputError as e:
        raise InputError(f"{detections}: {e}") from None
    markdown = counts_markdown(f"{split} ({role})", summary)
    atomic.write_text(out_counts, markdown)
    return markdown


ROI_PARTS = ("image_id", "image_width", "image_height", "box", "iou", "gt_ann_id", "label", "target", "base_label", "base_score", "base_probs", "origin")
DETECTION_COLUMNS = ["image_id", "x1", "y1", "x2", "y2", "label", "score", "probs"]
ROIS_PER_PART = 65536  # ROIs of whole images gathered before they are written: the stage's memory


@dataclass(frozen=True)
class DetectionArrays:
    """Some rows of the detections table as arrays."""

    image_ids: np.ndarray  # (N,) int64
    boxes: np.ndarray  # (N, 4) xyxy, float32
    probs: np.ndarray  # (N, K + 1)
    labels: np.ndarray  # (N,) int32
    scores: np.ndarray  # (N,) float32

    @classmethod
    def of(cls, part: pa.Table, k1: int) -> DetectionArrays:
        return cls(
            part.column("image_id").to_numpy(),
            np.stack([part.column(k).to_numpy() for k in ("x1", "y1", "x2", "y2")], axis=1).reshape(-1, 4).astype(np.float32),
            vectors(part.column("probs"), k1),
            part.column("label").to_numpy().astype(np.int32),
            part.column("score").to_numpy().astype(np.float32),
        )

    def take(self, rows: slice) -> DetectionArrays:
        return DetectionArrays(self.image_ids[rows], self.boxes[rows], self.probs[rows], self.labels[rows], self.scores[rows])


def check_detections(detections: Path, coco: dict[str, Any]) -> None:
    """Every detection is of an image of the split, has a positive width and height, and the
    detections of each image are together, in the split's image order (as the detect stage writes
    them); InputError names the count and the first offending row otherwise (nothing is dropped
    silently). Reads the image ids and boxes only, a row group at a time."""
    position = {im["id"]: k for k, im in enumerate(coco["images"])}
    outside: dict[int, list[int]] = {}  # unknown image id -> [rows, first row]
    empty, first_empty, last, row = 0, None, -1, 0
    for part in iter_table(detections, DETECTIONS_SCHEMA, ["image_id", "x1", "y1", "x2", "y2"]):
        ids = part.column("image_id").to_numpy()
        found = np.fromiter((position.get(int(i), -1) for i in ids), np.int64, len(ids))
        for k in np.flatnonzero(found < 0):
            outside.setdefault(int(ids[k]), [0, row + int(k)])[0] += 1
        x1, y1, x2, y2 = (part.column(k).to_numpy() for k in ("x1", "y1", "x2", "y2"))
        bad = np.flatnonzero(~((x2 > x1) & (y2 > y1)))
        if bad.size and first_empty is None:
            first_empty = (row + int(bad[0]), [float(v) for v in (x1[bad[0]], y1[bad[0]], x2[bad[0]], y2[bad[0]])])
        empty += bad.size
        known = found[found >= 0]
        steps = np.diff(np.concatenate([[last], known])) if known.size else np.zeros(0)
        if not outside and (steps < 0).any():
            k = int(np.flatnonzero(found >= 0)[int(np.flatnonzero(steps < 0)[0])])
            raise InputError(f"the detections are not in the split's image order (row {row + k}, image {ids[k]}): write them with the detect stage")
        last = int(known[-1]) if known.size else last
        row += len(ids)
    if outside:
        first = min(outside, key=lambda i: outside[i][1])
        rows = sum(n for n, _ in outside.values())
        raise InputError(f"{rows} detection(s) of {len(outside)} image id(s) not in the split (first: image {first}, row {outside[first][1]})")
    if empty:
        row, box = first_empty  # type: ignore[misc]
        raise InputError(f"{empty} detection(s) without area (first: row {row}, box x1 y1 x2 y2 {box}): x2 must exceed x1 and y2 y1")


def detections_by_image(detections: Path, k1: int) -> Iterator[DetectionArrays]:
    """The detections of each image in turn (the table's order: `check_detections`), read a row
    group at a time."""
    carry: DetectionArrays | None = None
    for part in iter_table(detections, DETECTIONS_SCHEMA, DETECTION_COLUMNS):
        arrays = DetectionArrays.of(part, k1)
        if carry is not None:
            arrays = DetectionArrays(*(np.concatenate([a, b]) for a, b in zip(dataclasses.astuple(carry), dataclasses.astuple(arrays))))
        starts = np.flatnonzero(np.diff(arrays.image_ids, prepend=arrays.image_ids[:1] - 1))
        for a, b in zip(starts[:-1], starts[1:]):
            yield arrays.take(slice(a, b))
        carry = arrays.take(slice(starts[-1], None)) if len(starts) else None
    if carry is not None and len(carry.image_ids):
        yield carry


def build_rois(detections: Path, coco: dict[str, Any], add_gt: bool, positive_iou: float, negative_iou: float, out: Path) -> dict[str, Any]:
    """Write the ROI table of a split (`out`) from its detections table, image by image, a part at
    a time; its label counts per size class. A split without annotations (an image list) gives
    ROIs labelled IGNORE (-1: unknown), with no IoU and no regression target."""
    labelled = "annotations" in coco
    category_ids = list(checked_metadata(detections, DETECTIONS_SCHEMA)["category_ids"])
    if category_ids != sorted(c["id"] for c in coco["categories"]):
        raise InputError("the detections were made for other categories than this split's ground truth")
    label_of = {cid: k + 1 for k, cid in enumerate(category_ids)}
    k1 = len(category_ids) + 1
    coder = BoxCoder()
    check_detections(detections, coco)
    gt_by_image: dict[int, list[dict[str, Any]]] = {}
    for a in coco.get("annotations", []):
        gt_by_image.setdefault(a["image_id"], []).append(a)
    names = {c["id"]: c["name"] for c in coco["categories"]}
    metadata = {
        "category_ids": category_ids,
        "category_names": [names[c] for c in category_ids],
        "labelled": labelled,
        "positive_iou": positive_iou,
        "negative_iou": negative_iou,
        "box_coder_weights": list(coder.weights),
        "add_gt": add_gt,
    }
    counts = RoiCounts()
    stream = detections_by_image(detections, k1)
    pending = next(stream, None)
    none = DetectionArrays(np.zeros(0, np.int64), np.zeros((0, 4), np.float32), np.zeros((0, k1), np.float32), np.zeros(0, np.int32), np.zeros(0, np.float32))
    with TableWriter(out, ROIS_SCHEMA, metadata) as table:
        parts: list[dict[str, np.ndarray]] = []
        for im in tqdm(coco["images"], desc="rois", unit="img", mininterval=10):
            det = none
            if pending is not None and pending.image_ids[0] == im["id"]:
                det, pending = pending, next(stream, None)
            image = image_rois(im, det, gt_by_image.get(im["id"], []), label_of, add_gt, positive_iou, negative_iou, coder)
            if not labelled:
                image["label"] = np.full(len(image["label"]), IGNORE)
            parts.append(image)
            if sum(len(p["label"]) for p in parts) >= ROIS_PER_PART or im is coco["images"][-1]:
                columns = roi_columns({k: np.concatenate([p[k] for p in parts]) for k in ROI_PARTS}, k1, first_id=table.rows)
                counts.add(columns["label"], columns["size_class"], columns["origin"])
                table.write(columns)
                parts = []
        table.metadata = {**metadata, "counts": counts.summary()}
    return counts.summary()


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
    """One image's ROIs (ROI_PARTS): its detections (`det`), with `add_gt` its non-crowd
    ground-truth boxes as extra ROIs (origin gt), each matched to the ground truth (label, IoU,
    box, target)."""
    k1 = det.probs.shape[1]
    gt = xywh_to_xyxy(torch.tensor([a["bbox"] for a in anns], dtype=torch.float64).reshape(-1, 4)).float()
    crowd = torch.tensor([bool(a.get("iscrowd", 0)) for a in anns], dtype=torch.bool)
    gt_labels = torch.tensor([label_of[a["category_id"]] for a in anns], dtype=torch.long)
    boxes, base_probs, base_label, base_score = det.boxes, det.probs, det.labels, det.scores
    origin = np.zeros(len(boxes), np.uint8)  # codes of ORIGIN_CODES: the detector
    if add_gt and len(anns):
        solid = ~crowd.numpy()
        n_gt = int(solid.sum())
        boxes = np.concatenate([boxes, gt.numpy()[solid]])
        base_label = np.concatenate([base_label, np.zeros(n_gt, np.int32)])
        base_score = np.concatenate([base_score, np.zeros(n_gt, np.float32)])
        base_probs = np.concatenate([base_probs, np.zeros((n_gt, k1), np.float32)])
        origin = np.concatenate([origin, np.ones(n_gt, np.uint8)])
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


def roi_columns(cat: dict[str, np.ndarray], k1: int, first_id: int = 0) -> dict[str, Any]:
    """The ROI table's columns (`schemas/rois.schema.yaml`) from the images' ROI_PARTS, concatenated:
    ROI ids in table order from `first_id`, boxes and targets split into named columns, each ROI's
    size class."""
    boxes = cat["box"].reshape(-1, 4).astype(np.float32)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    target = cat["target"].reshape(-1, 4)
    return {
        "roi_id": np.arange(first_id, first_id + len(boxes), dtype=np.int64),
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
        "size_class": pc.take(pa.array(SIZE_CLASSES), pa.array(size_classes(areas))),
        "origin": pc.take(pa.array(ORIGIN_CODES), pa.array(cat["origin"].astype(np.int64))),
    }


class RoiCounts:
    """ROIs per kind (positive / negative / ignored) and size class, and per origin (in the order
    the table first shows each), over the parts of a table."""

    KINDS = ("positive", "negative", "ignored")

    def __init__(self) -> None:
        self.total = 0
        self.by_kind = np.zeros((len(self.KINDS), len(SIZE_CLASSES)), np.int64)
        self.by_origin: dict[str, int] = {}

    def add(self, labels: np.ndarray, sizes: pa.Array, origins: pa.Array) -> None:
        kind = np.where(labels > 0, 0, np.where(labels == BACKGROUND, 1, 2))
        size = pc.index_in(sizes, value_set=pa.array(SIZE_CLASSES)).to_numpy(zero_copy_only=False)
        self.total += len(labels)
        np.add.at(self.by_kind, (kind, size), 1)
        codes = pc.index_in(origins, value_set=pa.array(ORIGIN_CODES)).to_numpy(zero_copy_only=False)
        found, first, count = np.unique(codes, return_index=True, return_counts=True)
        for k in np.argsort(first):
            name = ORIGIN_CODES[found[k]]
            self.by_origin[name] = self.by_origin.get(name, 0) + int(count[k])

    def summary(self) -> dict[str, Any]:
        table = {kind: {s: int(self.by_kind[k, j]) for j, s in enumerate(SIZE_CLASSES)} for k, kind in enumerate(self.KINDS)}
        return {"total": self.total, "by_kind_and_size": table, "by_origin": dict(self.by_origin)}


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
