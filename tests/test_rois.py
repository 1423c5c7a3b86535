"""The rois stage on a hand-made case: labels, matches, targets, crowd, added ground truth, sizes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from core.io.tables import ROIS_SCHEMA, read_table, table_metadata
from core.roi_targets import BoxCoder
from pipeline.detect import import_detections
from pipeline.rois import build_rois


def _coco() -> dict[str, Any]:
    return {
        "images": [{"id": 1, "file_name": "1.jpg", "width": 200, "height": 100}, {"id": 2, "file_name": "2.jpg", "width": 50, "height": 50}],
        "annotations": [
            {"id": 11, "image_id": 1, "category_id": 7, "bbox": [0, 0, 10, 10], "iscrowd": 0, "area": 100},
            {"id": 12, "image_id": 1, "category_id": 4, "bbox": [100, 0, 100, 100], "iscrowd": 0, "area": 10000},
            {"id": 13, "image_id": 1, "category_id": 4, "bbox": [20, 20, 60, 60], "iscrowd": 1, "area": 3600},
        ],
        "categories": [{"id": 4, "name": "big"}, {"id": 7, "name": "small"}],
    }


def _detections(tmp_path: Path) -> Any:
    records = [
        {"image_id": 1, "category_id": 7, "bbox": [0, 0, 10, 5], "score": 0.9},  # IoU 0.5 with ann 11: positive
        {"image_id": 1, "category_id": 4, "bbox": [110, 10, 80, 80], "score": 0.8},  # IoU 0.64 with ann 12
        {"image_id": 1, "category_id": 4, "bbox": [30, 30, 10, 10], "score": 0.7},  # inside the crowd: ignored
        {"image_id": 1, "category_id": 7, "bbox": [0, 0, 10, 4], "score": 0.6},  # IoU 0.4: ignored
        {"image_id": 2, "category_id": 7, "bbox": [5, 5, 10, 10], "score": 0.5},  # no ground truth: negative
    ]
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(records))
    import_detections(path, _coco(), 100, tmp_path / "dets.parquet")
    return tmp_path / "dets.parquet"


def _rois(tmp_path: Path, coco: dict[str, Any], add_gt: bool) -> tuple[Any, dict[str, Any]]:
    """The ROI table (read back) and the counts of `_detections` on `coco`."""
    summary = build_rois(_detections(tmp_path), coco, add_gt, 0.5, 0.35, tmp_path / "rois.parquet")
    table = read_table(tmp_path / "rois.parquet", ROIS_SCHEMA)
    assert table_metadata(table)["counts"] == summary  # the counts travel with the table
    return table, summary


def test_labels_matches_and_targets(tmp_path: Path) -> None:
    table, summary = _rois(tmp_path, _coco(), add_gt=False)
    t = table.to_pydict()
    assert t["roi_id"] == [0, 1, 2, 3, 4]
    assert t["label"] == [2, 1, -1, -1, 0]  # contiguous labels: category 4 -> 1, category 7 -> 2
    assert t["gt_ann_id"] == [11, 12, 11, 11, -1]
    np.testing.assert_allclose(t["iou"], [0.5, 0.64, 0.0, 0.4, 0.0], atol=1e-6)
    assert t["origin"] == ["detector"] * 5
    assert t["size_class"] == ["small", "medium", "small", "small", "small"]
    assert t["base_label"] == [2, 1, 1, 2, 2] and t["base_score"] == pytest.approx([0.9, 0.8, 0.7, 0.6, 0.5])
    expected = BoxCoder().encode(torch.tensor([[100.0, 0, 200, 100]]), torch.tensor([[110.0, 10, 190, 90]]))[0]
    np.testing.assert_allclose([t[k][1] for k in ("dx", "dy", "dw", "dh")], expected.numpy(), rtol=1e-5)
    assert [t[k][4] for k in ("dx", "dy", "dw", "dh")] == [0, 0, 0, 0]  # no match: zero target
    assert (t["image_width"][0], t["image_height"][0]) == (200, 100)
    assert summary["by_kind_and_size"]["ignored"] == {"small": 2, "medium": 0, "large": 0}


def test_training_split_adds_ground_truth_boxes_as_positives(tmp_path: Path) -> None:
    table, summary = _rois(tmp_path, _coco(), add_gt=True)
    t = table.to_pydict()
    gt_rows = [i for i, o in enumerate(t["origin"]) if o == "gt"]
    assert len(gt_rows) == 2  # the two non-crowd boxes of image 1, never the crowd region
    assert [t["gt_ann_id"][i] for i in gt_rows] == [11, 12] and [t["label"][i] for i in gt_rows] == [2, 1]
    assert all(t["iou"][i] == pytest.approx(1.0) for i in gt_rows)
    assert all(t["base_score"][i] == 0 and not any(t["base_probs"][i]) for i in gt_rows)
    assert [t["dx"][i] for i in gt_rows] == pytest.approx([0, 0], abs=1e-6)
    assert summary["by_origin"] == {"detector": 5, "gt": 2}
    assert t["size_class"][gt_rows[1]] == "large"


def test_categories_must_agree(tmp_path: Path) -> None:
    other = _coco()
    other["categories"] = [{"id": 4, "name": "big"}, {"id": 9, "name": "other"}]
    with pytest.raises(ValueError, match="other categories"):
        _rois(tmp_path, other, add_gt=False)
