"""Merge on a hand-made case, and a perfect-scores case that must give AP 1.0 through merge + score."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from core.io.tables import INFERENCE_SCHEMA, ROIS_SCHEMA, make_table, read_table
from pipeline.detect import import_detections
from pipeline.merge import MergeSettings, merge_detections
from pipeline.rois import build_rois
from pipeline.score import coco_bbox_eval

CATEGORIES = [3, 7]  # labels 1, 2


def roi_table(boxes: list[list[float]], image_ids: list[int], sizes: list[tuple[int, int]], base: list[list[float]]) -> object:
    n = len(boxes)
    b = np.asarray(boxes, np.float32)
    columns = {
        "roi_id": np.arange(n),
        "image_id": np.asarray(image_ids),
        "image_width": np.asarray([s[0] for s in sizes], np.int32),
        "image_height": np.asarray([s[1] for s in sizes], np.int32),
        "x1": b[:, 0],
        "y1": b[:, 1],
        "x2": b[:, 2],
        "y2": b[:, 3],
        "iou": np.zeros(n, np.float32),
        "gt_ann_id": np.full(n, -1),
        "label": np.zeros(n, np.int32),
        "dx": np.zeros(n, np.float32),
        "dy": np.zeros(n, np.float32),
        "dw": np.zeros(n, np.float32),
        "dh": np.zeros(n, np.float32),
        "base_label": np.ones(n, np.int32),
        "base_score": np.full(n, 0.5, np.float32),
        "base_probs": np.asarray(base, np.float32),
        "size_class": ["small"] * n,
        "origin": ["detector"] * n,
    }
    return make_table(columns, ROIS_SCHEMA, {"category_ids": CATEGORIES})


def inference_table(probs: list[list[float]], offsets: list[list[float]]) -> object:
    o = np.asarray(offsets, np.float32)
    return make_table(
        {
            "roi_id": np.arange(len(probs)),
            "probs": np.asarray(probs, np.float32),
            "dx": o[:, 0],
            "dy": o[:, 1],
            "dw": o[:, 2],
            "dh": o[:, 3],
            "through_g": np.zeros(len(probs), np.int32),
        },
        INFERENCE_SCHEMA,
        {"category_ids": CATEGORIES},
    )


@pytest.fixture
def case() -> tuple[object, object]:
    rois = roi_table(
        boxes=[[10, 10, 30, 30], [12, 10, 32, 30], [50, 50, 70, 70], [30, 30, 40, 40]],
        image_ids=[1, 1, 1, 2],
        sizes=[(100, 100)] * 3 + [(40, 40)],
        base=[[0.5, 0.25, 0.25], [0.5, 0.4, 0.1], [0.2, 0.0, 0.8], [0.1, 0.9, 0.0]],
    )
    inference = inference_table(
        probs=[[0.1, 0.8, 0.1], [0.15, 0.7, 0.15], [0.5, 0.0, 0.5], [0.4, 0.6, 0.0]],
        # ROI C moves right by 0.1 of its width (dx = 10 * 0.1); ROI D doubles in size (dw = dh = 5 ln 2).
        offsets=[[0, 0, 0, 0], [0, 0, 0, 0], [1.0, 0, 0, 0], [0, 0, 5 * np.log(2), 5 * np.log(2)]],
    )
    return rois, inference


SETTINGS = MergeSettings(nms_iou=0.5, score_floor=0.05, max_per_image=2)


def _record(image_id: int, category_id: int, x: float, y: float, side: float, score: float) -> dict[str, object]:
    return {"image_id": image_id, "category_id": category_id, "bbox": [x, y, side, side], "score": score}


# Alone: image 1, class 1: A (0.8) suppresses B (0.7, IoU 0.82); class 2: B (0.15) suppresses A
# (0.1), C (0.5) is moved 2 px right; the cap of 2 per image leaves B's class-2 detection out.
# Image 2: D doubled around its centre, (25, 25, 45, 45), clipped to the 40x40 image.
# Ensemble: products A (0.2, 0.025), B (0.28, 0.015), C (0, 0.4), D (0.54, 0): below 0.05 is
# dropped; class 1 of image 1: B (0.28) now suppresses A (0.2).
@pytest.mark.parametrize(
    ("ensemble", "expected"),
    [
        (False, [_record(1, 3, 10.0, 10.0, 20.0, 0.8), _record(1, 7, 52.0, 50.0, 20.0, 0.5), _record(2, 3, 25.0, 25.0, 15.0, 0.6)]),
        (True, [_record(1, 7, 52.0, 50.0, 20.0, 0.4), _record(1, 3, 12.0, 10.0, 20.0, 0.28), _record(2, 3, 25.0, 25.0, 15.0, 0.54)]),
    ],
    ids=["mtgan scores: decode, NMS, top-k", "ensemble: the product of the two distributions"],
)
def test_merge_decodes_suppresses_and_caps(case: tuple[object, object], ensemble: bool, expected: list[dict[str, object]]) -> None:
    rois, inference = case
    assert merge_detections(rois, inference, SETTINGS, ensemble=ensemble, category_ids=CATEGORIES) == expected


def test_baseline_rows_use_its_own_scores_and_boxes(case: tuple[object, object]) -> None:
    rois, _ = case
    got = merge_detections(rois, None, MergeSettings(0.5, 0.05, 100), ensemble=False, category_ids=CATEGORIES)
    assert {"image_id": 2, "category_id": 3, "bbox": [30.0, 30.0, 10.0, 10.0], "score": 0.9} in got


def test_perfect_scores_give_ap_1(tiny_data: Path, tmp_path: Path) -> None:
    coco = json.loads((tiny_data / "val.json").read_text())
    records = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.5} for a in coco["annotations"]]
    (tmp_path / "gt.json").write_text(json.dumps(records))
    import_detections(tmp_path / "gt.json", coco, 100, tmp_path / "gt.parquet")
    build_rois(tmp_path / "gt.parquet", coco, False, 0.5, 0.35, tmp_path / "rois.parquet")
    rois = read_table(tmp_path / "rois.parquet", ROIS_SCHEMA)
    labels = np.asarray(rois.column("label").to_pylist())
    probs = np.eye(len(coco["categories"]) + 1, dtype=np.float32)[labels]
    inference = make_table(
        {
            "roi_id": np.arange(len(labels)),
            "probs": probs,
            **{k: np.zeros(len(labels), np.float32) for k in ("dx", "dy", "dw", "dh")},
            "through_g": np.zeros(len(labels), np.int32),
        },
        INFERENCE_SCHEMA,
        {"category_ids": sorted(c["id"] for c in coco["categories"])},
    )
    categories = sorted(c["id"] for c in coco["categories"])
    results = merge_detections(rois, inference, MergeSettings(0.5, 0.001, 100), ensemble=False, category_ids=categories)
    stats, _ = coco_bbox_eval(tiny_data / "val.json", results)
    assert len(results) == len(coco["annotations"])
    assert stats["AP"] == pytest.approx(1.0) and stats["AP50"] == pytest.approx(1.0) and stats["APS"] == pytest.approx(1.0)
